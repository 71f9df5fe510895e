"""StyleGAN2 generator: rosinality .pt, e4e .pt (decoder), NVlabs .pkl or official TF .pkl -> stylejax.

All formats are first read into one canonical dict with rosinality's `g_ema` names and layouts
(`convert.stylegan2_formats`); this module maps that dict to the Flax generator's parameters.
"""
from absl import flags
import numpy as np

from convert import ConversionError
from stylejax.errors import UserError


def define_flags(fv):
    flags.DEFINE_string("src", None, "rosinality/e4e .pt, NVlabs .pkl or TF StyleGAN2 .pkl", flag_values=fv)
    flags.DEFINE_string("out", None, "output directory (stylejax checkpoint)", flag_values=fv)
    flags.DEFINE_float("mapping-lr-mul", None,
                       "override the mapping-network learning-rate multiplier (default: from the file, else 0.01)",
                       flag_values=fv)


def run(args):
    from convert._params_check import check_finite
    from convert.stylegan2_formats import read_stylegan2
    from stylejax.io import checkpoint

    if args.mapping_lr_mul is not None and not (np.isfinite(args.mapping_lr_mul) and args.mapping_lr_mul > 0):
        raise UserError(f"--mapping-lr-mul must be a finite number > 0 (StyleGAN2 uses 0.01), "
                        f"got {args.mapping_lr_mul}")
    state_dict, w_avg, info = read_stylegan2(args.src)
    w_avg_name = {"nvlabs": "mapping.w_avg", "tf": "dlatent_avg"}.get(info.get("format"), "latent_avg")
    check_finite(args.src, {**state_dict, w_avg_name: w_avg})
    lr_mul = args.mapping_lr_mul or info.get("mapping_lr_multiplier") or 0.01
    config, params, buffers = from_rosinality(state_dict, w_avg, mapping_lr_mul=lr_mul,
                                              conv_clamp=info.get("conv_clamp"))
    from stylejax.nets.generator import Generator

    checkpoint.save_network(Generator(config, params, buffers), args.out, overwrite=args.overwrite,
                            inputs=[args.src], source=args.src)
    return {"message": f"converted {info.get('format', '?')} StyleGAN2 ({config.resolution}x{config.resolution}, "
                       f"{config.num_ws} ws) -> {args.out}", "out": args.out}


def _get(sd, key):
    try:
        return np.asarray(sd[key], np.float32)
    except KeyError:
        raise ConversionError(f"StyleGAN2 state dict lacks '{key}'; is this a StyleGAN2 generator checkpoint?") from None


def _layer(sd, prefix, noise=None):
    """rosinality StyledConv (with its noise buffer key) or ToRGB (noise=None) -> our ModulatedLayer
    params, and the noise buffer."""
    w = _get(sd, f"{prefix}.conv.weight")[0]  # [O, I, k, k]
    p = {
        "affine": {"weight": _get(sd, f"{prefix}.conv.modulation.weight").T,  # [w_dim, I]
                   "bias": _get(sd, f"{prefix}.conv.modulation.bias")},      # +1 already baked in
        "weight": np.ascontiguousarray(w.transpose(2, 3, 1, 0)),             # HWIO
    }
    if noise is None:  # ToRGB
        p["bias"] = _get(sd, f"{prefix}.bias").reshape(-1)
        return p, None
    p["bias"] = _get(sd, f"{prefix}.activate.bias")
    p["noise_strength"] = _get(sd, f"{prefix}.noise.weight").reshape(())
    return p, {"noise_const": _get(sd, noise)[0, 0]}


def from_rosinality(sd, w_avg=None, mapping_lr_mul=0.01, conv_clamp=None):
    """Canonical (rosinality-named) state dict -> (GeneratorConfig, params, buffers)."""
    from convert.stylegan2_formats import describe
    from stylejax.nets.generator import GeneratorConfig

    shape = describe(sd)  # resolution, dims and channels, from the tensor shapes
    config = GeneratorConfig(resolution=shape["resolution"], z_dim=shape["z_dim"], w_dim=shape["w_dim"],
                             mapping_layers=shape["mapping_layers"], mapping_lr_mul=mapping_lr_mul,
                             channels=tuple(shape["channels"].items()), conv_clamp=conv_clamp)

    mapping = {f"fc{i}": {"weight": _get(sd, f"style.{i + 1}.weight").T,
                          "bias": _get(sd, f"style.{i + 1}.bias")} for i in range(config.mapping_layers)}
    const = _get(sd, "input.input")[0]  # [C, 4, 4]
    synthesis = {"const": np.ascontiguousarray(const.transpose(1, 2, 0))}
    conv1, n1 = _layer(sd, "conv1", "noises.noise_0")
    synthesis["b4"] = {"conv1": conv1, "torgb": _layer(sd, "to_rgb1")[0]}
    noise = {"b4": {"conv1": n1}}
    for k, res in enumerate(config.resolutions[1:]):
        conv0, n0 = _layer(sd, f"convs.{2 * k}", f"noises.noise_{2 * k + 1}")
        conv1, n1 = _layer(sd, f"convs.{2 * k + 1}", f"noises.noise_{2 * k + 2}")
        synthesis[f"b{res}"] = {"conv0": conv0, "conv1": conv1, "torgb": _layer(sd, f"to_rgbs.{k}")[0]}
        noise[f"b{res}"] = {"conv0": n0, "conv1": n1}

    params = {"mapping": mapping, "synthesis": synthesis}
    if w_avg is None:
        w_avg = estimate_w_avg(config, params)
    w_avg = np.asarray(w_avg, np.float32).reshape(-1)
    if w_avg.shape != (config.w_dim,):
        raise ConversionError(f"w_avg has shape {w_avg.shape}, expected ({config.w_dim},)")
    buffers = {"mapping": {"w_avg": w_avg}, "synthesis": noise}
    return config, params, buffers


def estimate_w_avg(config, params, n=10_000, seed=0):
    """Checkpoints without a tracked W average (rosinality train.py): mean of mapping(z), z ~ N(0, I)."""
    import jax
    import jax.numpy as jnp

    from stylejax.nets.generator import Generator

    g = Generator(config, jax.tree_util.tree_map(jnp.asarray, params),
                  {"mapping": {"w_avg": jnp.zeros(config.w_dim)}, "synthesis": {}})
    z = np.random.RandomState(seed).randn(n, config.z_dim).astype(np.float32)
    return np.asarray(g.mapping(z)[:, 0].mean(axis=0))


def count_params(params):
    import jax

    return int(sum(np.prod(np.shape(v)) for v in jax.tree_util.tree_leaves(params)))
