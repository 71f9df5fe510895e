"""LPIPS v0.1 (Zhang et al. 2018) in Flax: the perceptual distance used as loss and metric.

distance = Σ_layers mean_hw( lin_k · (n(f0_k) − n(f1_k))² ), where f_k are five ReLU taps of a frozen
ImageNet trunk (torchvision `vgg16.features` or `alexnet.features`, same kernels/strides/paddings),
n(f) = f / (‖f‖_channels + 1e-10) and lin_k is a non-negative 1×1 conv C→1 without bias.
Inputs are NHWC images in [-1, 1]; the result is one distance per batch item, differentiable w.r.t.
both inputs.

Parameters keep torchvision's layer indices (`features_{i}` = torch `features.{i}`) and the head index
(`lin{k}`), so the converter is a transpose per tensor. `widths` (channels of the five taps) lets tests
run a narrowed trunk with the same layer structure.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

KIND = "lpips"

# v0.1 ScalingLayer: (x − shift) / scale per RGB channel, from [-1,1] to ImageNet statistics.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # added to the channel norm (outside the sqrt), as lpips.normalize_tensor

# torchvision `features` layouts, split into the five LPIPS slices (each ends at a tapped ReLU).
# ("conv", index, kernel, stride, padding) / ("pool", kernel, stride); every conv is followed by a ReLU.
_VGG_STAGE_CONVS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
LAYOUTS = {
    "vgg": tuple(
        ((("pool", 2, 2),) if s else ()) + tuple(("conv", i, 3, 1, 1) for i in convs)
        for s, convs in enumerate(_VGG_STAGE_CONVS)
    ),
    "alex": (
        (("conv", 0, 11, 4, 2),),
        (("pool", 3, 2), ("conv", 3, 5, 1, 2)),
        (("pool", 3, 2), ("conv", 6, 3, 1, 1)),
        (("conv", 8, 3, 1, 1),),
        (("conv", 10, 3, 1, 1),),
    ),
}
WIDTHS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}


def conv_specs(net):
    """[(torch index, kernel, stride, padding, stage)] for every conv of the trunk, in order."""
    return [(op[1], op[2], op[3], op[4], s) for s, stage in enumerate(LAYOUTS[net]) for op in stage if op[0] == "conv"]


@dataclasses.dataclass(frozen=True)
class LPIPSConfig:
    net: str = "vgg"
    widths: tuple = None  # channels of the five taps; None = the torchvision widths

    def __post_init__(self):
        if self.net not in LAYOUTS:
            raise ValueError(f"net must be one of {sorted(LAYOUTS)}, got {self.net!r}")
        widths = WIDTHS[self.net] if self.widths is None else tuple(int(w) for w in self.widths)
        if len(widths) != 5:
            raise ValueError(f"widths must have 5 entries (one per tap), got {widths}")
        object.__setattr__(self, "widths", widths)

    def to_dict(self):
        return {"net": self.net, "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d):
        return cls(net=d["net"], widths=tuple(d["widths"]))


def _unit_normalise(f):
    # sqrt with a zero-safe gradient: an all-zero feature vector (dead ReLUs) gives value 0 as in the
    # reference, but no inf·0 = NaN in the backward pass.
    sq = jnp.sum(f * f, axis=-1, keepdims=True)
    norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    return f / (norm + EPS)


class LPIPSNet(nn.Module):
    """`apply(params, x0, x1)` → distances [B]; x0, x1 NHWC in [-1, 1]."""

    net: str = "vgg"
    widths: tuple = None
    dtype: jnp.dtype = jnp.float32  # compute dtype of the trunk convs (bf16 for speed); heads stay fp32

    def trunk(self, x):
        """Scaled image → list of the five tapped ReLU activations (NHWC)."""
        widths = LPIPSConfig(self.net, self.widths).widths
        taps = []
        for s, stage in enumerate(LAYOUTS[self.net]):
            for op in stage:
                if op[0] == "pool":  # torch MaxPool2d, floor mode == VALID
                    x = nn.max_pool(x, (op[1], op[1]), strides=(op[2], op[2]), padding="VALID")
                else:
                    _, idx, k, stride, pad = op
                    x = nn.Conv(widths[s], (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                                dtype=self.dtype, precision=jax.lax.Precision.HIGHEST, name=f"features_{idx}")(x)
                    x = nn.relu(x)
            taps.append(x)
        return taps

    @nn.compact
    def __call__(self, x0, x1):
        if x0.shape != x1.shape:
            raise ValueError(f"LPIPS inputs must have equal shapes, got {x0.shape} and {x1.shape}")
        shift = jnp.asarray(SHIFT, jnp.float32)
        scale = jnp.asarray(SCALE, jnp.float32)
        batch = x0.shape[0]
        # one trunk pass over both images
        x = (jnp.concatenate([x0, x1], 0).astype(jnp.float32) - shift) / scale
        total = 0.0
        for k, f in enumerate(self.trunk(x.astype(self.dtype))):
            f = _unit_normalise(f.astype(jnp.float32))
            diff = (f[:batch] - f[batch:]) ** 2
            head = nn.Dense(1, use_bias=False, precision=jax.lax.Precision.HIGHEST, name=f"lin{k}")
            total = total + jnp.mean(head(diff)[..., 0], axis=(1, 2))
        return total


def config_from_params(params):
    """Infers (net, widths) from parameter names and shapes (static under jit)."""
    params = params.get("params", params)
    convs = sorted(int(k.split("_")[1]) for k in params if k.startswith("features_"))
    for net in LAYOUTS:
        if convs == [c[0] for c in conv_specs(net)]:
            return LPIPSConfig(net, tuple(int(params[f"lin{k}"]["kernel"].shape[0]) for k in range(5)))
    raise ValueError(f"parameters hold trunk convs {convs}, which match neither vgg16 nor alexnet")


@functools.partial(jax.jit, static_argnames=("dtype",))
def distance(params, x0, x1, dtype=jnp.float32):
    """Pure LPIPS distance [B]; the architecture is read from the parameter shapes."""
    cfg = config_from_params(params)
    variables = params if "params" in params else {"params": params}
    return LPIPSNet(cfg.net, cfg.widths, dtype).apply(variables, x0, x1)


def init_params(key, net="vgg", widths=None, image_size=64):
    """Random trunk and (non-negative) head weights, e.g. for benchmarks and tests."""
    cfg = LPIPSConfig(net, widths)
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    params = LPIPSNet(cfg.net, cfg.widths).init(key, x, x)["params"]
    return jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.abs(p) if str(path[0].key).startswith("lin") else p, params)


class LPIPS:
    """Converted LPIPS with its weights bound: `LPIPS(config, params)(x0, x1)` → distances [B]."""

    def __init__(self, config, params, dtype=jnp.float32):
        self.config = config if isinstance(config, LPIPSConfig) else LPIPSConfig.from_dict(config)
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        self.dtype = dtype
        found = config_from_params(self.params)
        if found != self.config:
            raise ValueError(f"parameters are for {found}, config says {self.config}")

    def __call__(self, x0, x1):
        return distance(self.params, x0, x1, dtype=self.dtype)

    def loss(self, x0, x1):
        """Mean distance over the batch (a scalar perceptual loss)."""
        return jnp.mean(self(x0, x1))


def load_lpips(path, dtype=jnp.float32):
    """Loads a checkpoint written by `python -m convert lpips` → `LPIPS` callable."""
    from stylejax import checkpoint

    config, params = checkpoint.load(path, KIND)
    return LPIPS(LPIPSConfig.from_dict(config), params, dtype=dtype)
