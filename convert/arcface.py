"""ArcFace IR-SE50 for the ID loss: model_ir_se50.pth (TreB1eN/InsightFace_Pytorch) -> stylejax checkpoint."""
import numpy as np

from convert import ConversionError
from convert._params_check import check_against_init
from convert.safe_pickle import flatten_state_dict, load_torch_file


def add_arguments(parser):
    parser.add_argument("--src", required=True, help="ArcFace state dict, e.g. model_ir_se50.pth")
    parser.add_argument("--out", required=True, help="output directory (stylejax checkpoint, kind 'arcface')")


def convert_checkpoint(ckpt, src="checkpoint"):
    """The loaded state dict (numpy arrays) -> (ArcFaceConfig, params). Pure, no I/O."""
    from stylejax import arcface

    if not isinstance(ckpt, dict):
        raise ConversionError(f"{src}: expected a state dict, got {type(ckpt).__name__}")
    sd = flatten_state_dict(ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), dict) else ckpt)
    if sd and all(k.startswith("module.") for k in sd):  # saved from nn.DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if "output_layer.3.weight" not in sd:
        if any(k.startswith("encoder.") for k in sd):
            raise ConversionError(f"{src}: this is an e4e/pSp checkpoint, not ArcFace; use `python -m convert e4e`")
        raise ConversionError(f"{src}: no output_layer.3.weight; is this the ArcFace IR-SE50 file (model_ir_se50.pth)?")
    for bn in ("output_layer.4",):  # BatchNorm1d(affine=False) variants store no weight/bias
        n = sd.get(bn + ".running_mean")
        if n is not None and bn + ".weight" not in sd:
            sd[bn + ".weight"] = np.ones_like(n)
            sd[bn + ".bias"] = np.zeros_like(n)
    try:
        config = arcface.infer_config(sd)
        params = arcface.params_from_state_dict(sd, config)
    except KeyError as e:
        raise ConversionError(f"{src}: missing weight {e.args[0]}; the ArcFace checkpoint is incomplete") from None
    except ValueError as e:
        raise ConversionError(f"{src}: {e}") from None
    if config.input_size != 112:
        raise ConversionError(f"{src}: the output layer expects a {config.input_size // 16}² map (input "
                              f"{config.input_size}); only the 112² ArcFace used by e4e/pSp is supported")
    size = config.input_size
    check_against_init(src, params, arcface.ArcFace(config), np.zeros((1, size, size, 3), np.float32), True)
    return config, params


def run(args):
    from stylejax import checkpoint

    config, params = convert_checkpoint(load_torch_file(args.src), args.src)
    checkpoint.save(args.out, "arcface", config.to_dict(), params)
    print(f"ArcFace IR-SE (widths {list(config.body.widths)}, {config.embed_dim}-d embedding) -> {args.out}")
