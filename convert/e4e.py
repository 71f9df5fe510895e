"""e4e encoder: e4e_ffhq_encode.pt (encoder.* + latent_avg) -> stylejax checkpoint.

The same file's decoder.* is a rosinality StyleGAN2 generator; convert it separately with
`python -m convert stylegan2 --src e4e_ffhq_encode.pt --out DIR`.
"""
from absl import flags
import math

import numpy as np

from convert import ConversionError
from convert._params_check import as_f32, check_network
from convert.irse import body_params_from_state_dict, conv_kernel, infer_body_config
from convert.safe_pickle import check_tensor_sizes, flatten_state_dict, load_torch_file
from stylejax.nets import e4e


def define_flags(fv):
    """Only the encoder is converted. The decoder in the same file converts with
    `python -m convert stylegan2 --src e4e_ffhq_encode.pt --out DIR`."""
    flags.DEFINE_string("src", None, "e4e checkpoint, e.g. e4e_ffhq_encode.pt", flag_values=fv)
    flags.DEFINE_string("out", None, "output directory (stylejax checkpoint, kind 'e4e')", flag_values=fv)


def _opts_dict(opts):
    if opts is None:
        return {}
    if isinstance(opts, dict):
        return opts
    return dict(getattr(opts, "__dict__", {}))  # argparse.Namespace stand-in


# ----------------------------------------------------------------------------------------------
# Encoder4Editing state dict -> E4EConfig / params (pure numpy; missing keys raise KeyError)

def infer_config(sd, prefix="encoder."):
    """E4EConfig from an Encoder4Editing state dict (raises KeyError when keys are missing)."""
    body = infer_body_config(sd, prefix)
    n_styles = 0
    convs = []
    while f"{prefix}styles.{n_styles}.linear.weight" in sd:
        k = 0
        while f"{prefix}styles.{n_styles}.convs.{2 * k}.weight" in sd:
            k += 1
        convs.append(k)
        n_styles += 1
    if n_styles == 0:
        raise KeyError(prefix + "styles.0.linear.weight")
    # the reference fixes the row groups at 3 and 7; only the conv counts per group are read here
    cfg0 = e4e.E4EConfig()
    style_convs = tuple(convs[min(i, n_styles - 1)] for i in (0, cfg0.coarse_ind, cfg0.middle_ind))
    cfg = e4e.E4EConfig(body=body, n_styles=n_styles, style_convs=style_convs)
    if [cfg.convs_for_row(i) for i in range(n_styles)] != convs:
        raise ValueError(f"map2style conv counts {convs} do not follow e4e's coarse/middle/fine pattern")
    return cfg


def params_from_state_dict(sd, config, latent_avg=None, prefix="encoder."):
    """`{torch key: np.ndarray}` -> E4E params. `latent_avg` [n_styles, width] or [width] (broadcast)."""
    params = {"body": body_params_from_state_dict(sd, prefix, config.body)}
    width = config.style_width
    for i in range(config.n_styles):
        s = f"{prefix}styles.{i}."
        block = {f"conv_{k}": {"kernel": conv_kernel(sd[f"{s}convs.{2 * k}.weight"]),
                               "bias": sd[f"{s}convs.{2 * k}.bias"]}
                 for k in range(config.convs_for_row(i))}
        lin_w = sd[s + "linear.weight"]
        scale = np.float32(1 / np.sqrt(lin_w.shape[1]))  # EqualLinear: torch multiplies weight * scale in fp32
        block["linear"] = {"kernel": (lin_w * scale).T, "bias": sd[s + "linear.bias"]}
        params[f"style_{i}"] = block
    for name in ("latlayer1", "latlayer2"):
        params[name] = {"kernel": conv_kernel(sd[f"{prefix}{name}.weight"]), "bias": sd[f"{prefix}{name}.bias"]}
    if config.start_from_latent_avg:
        if latent_avg is None:
            raise ValueError("start_from_latent_avg needs latent_avg")
        la = np.asarray(latent_avg, np.float32).reshape(-1, width)
        params["latent_avg"] = np.broadcast_to(la, (config.n_styles, width)).copy()
    return as_f32(params)


def convert_checkpoint(ckpt, src="checkpoint"):
    """The loaded checkpoint (dict of numpy arrays etc.) -> (E4EConfig, params). Pure, no I/O."""
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{src}: expected a dict with 'state_dict', 'latent_avg', 'opts'; got {type(ckpt).__name__}")
    sd = flatten_state_dict(ckpt["state_dict"]) if isinstance(ckpt.get("state_dict"), dict) else flatten_state_dict(ckpt)
    opts = _opts_dict(ckpt.get("opts"))
    encoder_type = opts.get("encoder_type")
    if encoder_type is not None and encoder_type != "Encoder4Editing":
        raise ConversionError(f"{src}: opts.encoder_type is {encoder_type!r}, not 'Encoder4Editing'; "
                              "only e4e encoders are supported (pSp's GradualStyleEncoder has no progressive deltas)")
    if not any(k.startswith("encoder.") for k in sd):
        if "input_layer.0.weight" in sd and "output_layer.3.weight" in sd:
            raise ConversionError(f"{src}: this is an ArcFace IR-SE50 file; use `python -m convert arcface`")
        if any(k.startswith(("style.", "g_ema.", "decoder.")) for k in sd) or "g_ema" in ckpt:
            raise ConversionError(f"{src}: this holds a StyleGAN2 generator but no e4e encoder; use `python -m convert stylegan2`")
        raise ConversionError(f"{src}: no encoder.* weights found; is this an e4e checkpoint (e4e_ffhq_encode.pt)?")
    try:
        config = infer_config(sd)
    except KeyError as e:
        raise ConversionError(f"{src}: missing weight {e.args[0]}; the e4e checkpoint is incomplete") from None
    except ValueError as e:
        raise ConversionError(f"{src}: {e}") from None
    if "stylegan_size" in opts:
        want = 2 * int(math.log2(int(opts["stylegan_size"]))) - 2
        if want != config.n_styles:
            raise ConversionError(f"{src}: opts.stylegan_size={opts['stylegan_size']} implies {want} styles but the "
                                  f"encoder has {config.n_styles}; the checkpoint is inconsistent")
    start_from_avg = bool(opts.get("start_from_latent_avg", True))
    latent_avg = ckpt.get("latent_avg")
    if start_from_avg:
        if not isinstance(latent_avg, np.ndarray):
            raise ConversionError(f"{src}: no 'latent_avg' tensor (e4e adds it to the encoder output); "
                                  "the reference would recompute it from the decoder, which is not supported here")
        if latent_avg.shape not in ((config.style_width,), (1, config.style_width),
                                    (config.n_styles, config.style_width)):
            raise ConversionError(f"{src}: latent_avg has shape {latent_avg.shape}, expected "
                                  f"[{config.n_styles}, {config.style_width}] or [{config.style_width}]")
    config = e4e.E4EConfig(**{**config.__dict__, "start_from_latent_avg": start_from_avg})
    try:
        params = params_from_state_dict(sd, config, latent_avg if start_from_avg else None)
    except KeyError as e:
        raise ConversionError(f"{src}: missing weight {e.args[0]}; the e4e checkpoint is incomplete") from None
    except ValueError as e:
        raise ConversionError(f"{src}: {e}") from None
    check_network(src, e4e.E4E(config, params))
    return config, params


def select(ckpt):
    """On the tensor views, before anything is copied (see `safe_pickle.load_torch_file`): the encoder
    weights, latent_avg and opts, each tensor no larger than the encoder its shapes describe needs, and none
    larger than the reference FFHQ e4e's (so widened anchor shapes cannot describe a bigger network). The
    decoder in the same file is not copied."""
    if not isinstance(ckpt, dict):
        return ckpt  # convert_checkpoint says what it is
    sd = flatten_state_dict(ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), dict) else ckpt)
    encoder = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    tensors = {**(encoder or sd), "latent_avg": ckpt.get("latent_avg")}
    try:
        check_tensor_sizes(tensors, e4e.E4E.expected_shapes(infer_config(encoder)), "e4e encoder its shapes describe")
    except (KeyError, ValueError, TypeError, IndexError):
        pass  # not a complete e4e encoder: convert_checkpoint names the problem
    check_tensor_sizes(tensors, e4e.E4E.expected_shapes(e4e.E4EConfig()), "reference FFHQ e4e encoder")
    if not encoder:
        return ckpt
    return {"state_dict": encoder, "latent_avg": ckpt.get("latent_avg"), "opts": ckpt.get("opts")}


def run(args):
    from stylejax.io import checkpoint

    # e4e_ffhq_encode.pt (encoder + decoder + latent_avg) is ~1.2 GB; only the encoder part is copied
    config, params = convert_checkpoint(load_torch_file(args.src, max_bytes=2 << 30, select=select), args.src)
    checkpoint.save_network(e4e.E4E(config, params), args.out, overwrite=args.overwrite, inputs=[args.src],
                            source=args.src)
    return {"message": f"e4e encoder ({config.n_styles} styles, widths {list(config.body.widths)}) -> {args.out}; "
                       f"its decoder converts with `python -m convert stylegan2 --src {args.src} --out DIR`",
            "out": args.out}
