"""ArcFace IR-SE50 for the ID loss: model_ir_se50.pth (TreB1eN/InsightFace_Pytorch) -> stylejax checkpoint."""
from absl import flags
import numpy as np

from convert import ConversionError
from convert._params_check import as_f32, check_network
from convert.irse import bn_params, body_params_from_state_dict, infer_body_config
from convert.safe_pickle import check_tensor_sizes, flatten_state_dict, load_torch_file
from stylejax.nets import arcface


def define_flags(fv):
    flags.DEFINE_string("src", None, "ArcFace state dict, e.g. model_ir_se50.pth", flag_values=fv)
    flags.DEFINE_string("out", None, "output directory (stylejax checkpoint, kind 'arcface')", flag_values=fv)


# ----------------------------------------------------------------------------------------------
# model_ir_se50.pth state dict -> ArcFaceConfig / params (pure numpy; missing keys raise KeyError)

def infer_config(sd, prefix=""):
    body = infer_body_config(sd, prefix)
    lin = sd[prefix + "output_layer.3.weight"]
    c = body.widths[-1]
    spatial = int(round((lin.shape[1] / c) ** 0.5))
    if spatial * spatial * c != lin.shape[1]:
        raise ValueError(f"output_layer.3.weight has {lin.shape[1]} inputs, not {c}·k² for the {c}-channel body")
    return arcface.ArcFaceConfig(body=body, embed_dim=int(lin.shape[0]), input_size=spatial * 16)


def params_from_state_dict(sd, config, prefix=""):
    """`{torch key: np.ndarray}` (model_ir_se50.pth) -> ArcFace params."""
    params = {
        "body": body_params_from_state_dict(sd, prefix, config.body),
        "out_bn2d": bn_params(sd, prefix + "output_layer.0"),
        "out_linear": {"kernel": sd[prefix + "output_layer.3.weight"].T, "bias": sd[prefix + "output_layer.3.bias"]},
        "out_bn1d": bn_params(sd, prefix + "output_layer.4"),
    }
    return as_f32(params)


def convert_checkpoint(ckpt, src="checkpoint"):
    """The loaded state dict (numpy arrays) -> (ArcFaceConfig, params). Pure, no I/O."""
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
        config = infer_config(sd)
        params = params_from_state_dict(sd, config)
    except KeyError as e:
        raise ConversionError(f"{src}: missing weight {e.args[0]}; the ArcFace checkpoint is incomplete") from None
    except ValueError as e:
        raise ConversionError(f"{src}: {e}") from None
    if config.input_size != 112:
        raise ConversionError(f"{src}: the output layer expects a {config.input_size // 16}² map (input "
                              f"{config.input_size}); only the 112² ArcFace used by e4e/pSp is supported")
    check_network(src, arcface.ArcFace(config, params))
    return config, params


def select(ckpt):
    """On the tensor views, before anything is copied (see `safe_pickle.load_torch_file`): no tensor larger
    than the network its shapes describe needs, nor than the reference IR-SE50's."""
    if not isinstance(ckpt, dict):
        return ckpt
    sd = flatten_state_dict(ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), dict) else ckpt)
    try:
        config = infer_config({k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()})
        check_tensor_sizes(sd, arcface.ArcFace.expected_shapes(config), "ArcFace network its shapes describe")
    except (KeyError, ValueError, TypeError, IndexError):
        pass  # not a complete ArcFace state dict: convert_checkpoint names the problem
    check_tensor_sizes(sd, arcface.ArcFace.expected_shapes(arcface.ArcFaceConfig()), "reference ArcFace IR-SE50")
    return ckpt


def run(args):
    from stylejax.io import checkpoint

    config, params = convert_checkpoint(load_torch_file(args.src, max_bytes=1 << 30, select=select),  # file ~175 MB
                                        args.src)
    checkpoint.save_network(arcface.ArcFace(config, params), args.out, overwrite=args.overwrite,
                            inputs=[args.src], source=args.src)
    return {"message": f"ArcFace IR-SE (widths {list(config.body.widths)}, {config.embed_dim}-d embedding) -> {args.out}",
            "out": args.out}
