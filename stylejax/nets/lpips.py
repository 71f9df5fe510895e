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
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from stylejax.nets.base import Network

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
    # compute dtype of the trunk convs (e.g. bf16 for speed); None = the input's dtype (fp32 or fp64).
    # Normalisation and heads run in at least fp32.
    dtype: Any = None

    @nn.compact
    def __call__(self, x0, x1):
        if x0.shape != x1.shape:
            raise ValueError(f"LPIPS inputs must have equal shapes, got {x0.shape} and {x1.shape}")
        widths = LPIPSConfig(self.net, self.widths).widths
        convs = {idx: nn.Conv(widths[s], (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                              dtype=self.dtype, precision=jax.lax.Precision.HIGHEST, name=f"features_{idx}")
                 for idx, k, stride, pad, s in conv_specs(self.net)}
        acc = jnp.promote_types(jnp.result_type(x0), jnp.float32)
        # two trunk passes sharing weights (identical inputs give bitwise-identical taps; XLA's vectorised
        # division in the normalisation can still differ by an ulp between lanes, so d(x, x) ~ 1e-16)
        taps0 = self.trunk(x0.astype(acc), convs)
        taps1 = self.trunk(x1.astype(acc), convs)
        total = jnp.zeros(x0.shape[0], acc)
        for k, (f0, f1) in enumerate(zip(taps0, taps1)):
            diff = (_unit_normalise(f0.astype(acc)) - _unit_normalise(f1.astype(acc))) ** 2
            head = nn.Dense(1, use_bias=False, dtype=acc, precision=jax.lax.Precision.HIGHEST, name=f"lin{k}")
            total = total + jnp.mean(head(diff)[..., 0], axis=(1, 2))
        return total

    def trunk(self, x, convs):
        """Image in [-1,1] → list of the five tapped ReLU activations (NHWC)."""
        x = (x - jnp.asarray(SHIFT, x.dtype)) / jnp.asarray(SCALE, x.dtype)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        taps = []
        for stage in LAYOUTS[self.net]:
            for op in stage:
                if op[0] == "pool":  # torch MaxPool2d, floor mode == VALID
                    x = nn.max_pool(x, (op[1], op[1]), strides=(op[2], op[2]), padding="VALID")
                else:
                    x = nn.relu(convs[op[1]](x))
            taps.append(x)
        return taps


def config_from_params(params):
    """Infers (net, widths) from parameter names and shapes (static under jit)."""
    params = params.get("params", params)
    convs = sorted(int(k.split("_")[1]) for k in params if k.startswith("features_"))
    for net in LAYOUTS:
        if convs == [c[0] for c in conv_specs(net)]:
            return LPIPSConfig(net, tuple(int(params[f"lin{k}"]["kernel"].shape[0]) for k in range(5)))
    raise ValueError(f"parameters hold trunk convs {convs}, which match neither vgg16 nor alexnet")


def distance(params, x0, x1, dtype=None):
    """Pure LPIPS distance [B]; the architecture is read from the parameter shapes."""
    cfg = config_from_params(params)
    variables = params if "params" in params else {"params": params}
    return LPIPSNet(cfg.net, cfg.widths, dtype).apply(variables, x0, x1)


def init_params(key, net="vgg", widths=None):
    """Random weights: He-normal trunk convs, small biases, non-negative heads (like the real ones)."""
    cfg = LPIPSConfig(net, widths)
    shapes, cin = {}, 3
    for idx, k, _stride, _pad, s in conv_specs(cfg.net):
        shapes[f"features_{idx}"] = (k, k, cin, cfg.widths[s])
        cin = cfg.widths[s]

    # two draws sliced into tensors (one draw per tensor compiles slowly: threefry per shape)
    sizes = [int(np.prod(sh)) for sh in shapes.values()]
    k_w, k_b = jax.random.split(key)
    normal = np.asarray(jax.random.normal(k_w, (sum(sizes),)))
    uniform = np.asarray(jax.random.uniform(k_b, (sum(sh[-1] for sh in shapes.values()) + sum(cfg.widths),)))
    params, pos, upos = {}, 0, 0
    for (name, shape), size in zip(shapes.items(), sizes):
        fan_in = shape[0] * shape[1] * shape[2]
        params[name] = {"kernel": normal[pos:pos + size].reshape(shape) * np.float32(np.sqrt(2.0 / fan_in)),
                        "bias": (uniform[upos:upos + shape[-1]] - 0.5) * np.float32(0.2)}
        pos, upos = pos + size, upos + shape[-1]
    for i, c in enumerate(cfg.widths):
        params[f"lin{i}"] = {"kernel": uniform[upos:upos + c].reshape(c, 1) * np.float32(0.2)}
        upos += c
    return jax.tree_util.tree_map(jnp.asarray, params)


@jax.tree_util.register_pytree_node_class
class LPIPS(Network):
    """LPIPS with its weights: `lpips(x0, x1, dtype=None)` -> distances [B]; `lpips.loss(x0, x1)` -> mean."""

    kind = KIND
    config_class = LPIPSConfig

    @classmethod
    def init(cls, config, key):
        x = jnp.zeros((1, 64, 64, 3), jnp.float32)
        return {"params": LPIPSNet(config.net, config.widths).init(key, x, x)["params"]}

    @classmethod
    def random(cls, config, key=None):
        """Random weights with non-negative heads, like the real ones (see `init_params`)."""
        key = jax.random.PRNGKey(0) if key is None else key
        return cls(config, init_params(key, config.net, config.widths))

    def __call__(self, x0, x1, dtype=None):
        return LPIPSNet(self.config.net, self.config.widths, dtype).apply({"params": self.params}, x0, x1)

    def loss(self, x0, x1, dtype=None):
        """Mean distance over the batch (a scalar perceptual loss)."""
        return jnp.mean(self(x0, x1, dtype))
