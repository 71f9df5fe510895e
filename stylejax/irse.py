"""IR-SE ResNet body (TreB1eN InsightFace layout) shared by the e4e encoder and ArcFace, NHWC Flax.

Inference only: every BatchNorm applies its stored running statistics (PyTorch eval mode); the
statistics live in `params` next to the affine terms, so no `batch_stats` collection is involved.
Parameter names mirror the PyTorch keys closely enough that `convert/` maps them one to one:

    input_conv, input_bn, input_prelu               <- input_layer.{0,1,2}
    unit_{i}/bn_in, conv1, prelu, conv2, bn_out     <- body.{i}.res_layer.{0,1,2,3,4}
    unit_{i}/se_fc1, se_fc2                          <- body.{i}.res_layer.5.fc{1,2}
    unit_{i}/shortcut_conv, shortcut_bn              <- body.{i}.shortcut_layer.{0,1}
"""
from dataclasses import dataclass, field
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
BN_EPS = 1e-5  # torch.nn.BatchNorm default


@dataclass(frozen=True)
class IRSEConfig:
    """Body shape. The defaults are IR-SE50 (num_layers=50, mode='ir_se')."""
    stem_width: int = 64
    widths: Tuple[int, ...] = (64, 128, 256, 512)
    units_per_stage: Tuple[int, ...] = (3, 4, 14, 3)
    se_reduction: int = 16

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "units_per_stage", tuple(int(u) for u in self.units_per_stage))
        if len(self.widths) != len(self.units_per_stage):
            raise ValueError("widths and units_per_stage need one entry per stage")
        if min(self.widths) < self.se_reduction:
            raise ValueError(f"every width must be >= se_reduction={self.se_reduction} (SE bottleneck would be empty)")

    @property
    def num_units(self):
        return sum(self.units_per_stage)

    def units(self):
        """[(in_channels, depth, stride)] per unit; the first unit of every stage has stride 2."""
        out, c_in = [], self.stem_width
        for depth, n in zip(self.widths, self.units_per_stage):
            out.append((c_in, depth, 2))
            out += [(depth, depth, 1)] * (n - 1)
            c_in = depth
        return out

    def stage_ends(self):
        """Index of the last unit of each stage (e4e taps units 6, 20, 23 of IR-SE50)."""
        ends, total = [], 0
        for n in self.units_per_stage:
            total += n
            ends.append(total - 1)
        return tuple(ends)

    def to_dict(self):
        return {"stem_width": self.stem_width, "widths": list(self.widths),
                "units_per_stage": list(self.units_per_stage), "se_reduction": self.se_reduction}

    @classmethod
    def from_dict(cls, d):
        return cls(stem_width=d["stem_width"], widths=tuple(d["widths"]),
                   units_per_stage=tuple(d["units_per_stage"]), se_reduction=d.get("se_reduction", 16))


class BatchNormInference(nn.Module):
    """PyTorch BatchNorm in eval mode over the last axis: (x - mean)/sqrt(var + eps)·scale + bias."""
    features: int
    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        inv = scale * jax.lax.rsqrt(var + self.eps)
        return x * inv.astype(x.dtype) + (bias - mean * inv).astype(x.dtype)


class PReLU(nn.Module):
    """Per-channel PReLU (torch init 0.25)."""
    features: int

    @nn.compact
    def __call__(self, x):
        alpha = self.param("alpha", nn.initializers.constant(0.25), (self.features,))
        return jnp.where(x > 0, x, alpha.astype(x.dtype) * x)


def conv(features, kernel, stride=1, use_bias=False, name=None, dtype=None):
    """PyTorch Conv2d with padding kernel//2 on both sides (explicit: 'SAME' is asymmetric for stride 2)."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=use_bias, precision=HIGHEST, dtype=dtype, name=name)


class BottleneckIRSE(nn.Module):
    in_channels: int
    depth: int
    stride: int
    se_reduction: int = 16
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        if self.in_channels == self.depth:
            shortcut = x[:, ::self.stride, ::self.stride, :]  # MaxPool2d(kernel 1, stride s)
        else:
            shortcut = conv(self.depth, 1, self.stride, name="shortcut_conv", dtype=self.dtype)(x)
            shortcut = BatchNormInference(self.depth, name="shortcut_bn")(shortcut)
        r = BatchNormInference(self.in_channels, name="bn_in")(x)
        r = conv(self.depth, 3, 1, name="conv1", dtype=self.dtype)(r)
        r = PReLU(self.depth, name="prelu")(r)
        r = conv(self.depth, 3, self.stride, name="conv2", dtype=self.dtype)(r)
        r = BatchNormInference(self.depth, name="bn_out")(r)
        # squeeze-and-excitation: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid gate
        s = jnp.mean(r, axis=(1, 2), keepdims=True)
        s = nn.relu(conv(self.depth // self.se_reduction, 1, name="se_fc1", dtype=self.dtype)(s))
        s = nn.sigmoid(conv(self.depth, 1, name="se_fc2", dtype=self.dtype)(s))
        return r * s + shortcut


class IRSEBody(nn.Module):
    """input layer + all bottleneck units; returns the feature map at the end of every stage."""
    config: IRSEConfig = field(default_factory=IRSEConfig)
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = conv(cfg.stem_width, 3, name="input_conv", dtype=self.dtype)(x)
        x = BatchNormInference(cfg.stem_width, name="input_bn")(x)
        x = PReLU(cfg.stem_width, name="input_prelu")(x)
        ends, stage_outputs = set(cfg.stage_ends()), []
        for i, (c_in, depth, stride) in enumerate(cfg.units()):
            x = BottleneckIRSE(c_in, depth, stride, cfg.se_reduction, dtype=self.dtype, name=f"unit_{i}")(x)
            if i in ends:
                stage_outputs.append(x)
        return stage_outputs


# ----------------------------------------------------------------------------------------------
# PyTorch state dict -> params (pure numpy; used by convert/e4e.py and convert/arcface.py)

def _conv_kernel(w):
    """torch [out, in, kh, kw] -> flax [kh, kw, in, out]."""
    return w.transpose(2, 3, 1, 0)


def _bn(sd, prefix):
    return {"scale": sd[prefix + ".weight"], "bias": sd[prefix + ".bias"],
            "mean": sd[prefix + ".running_mean"], "var": sd[prefix + ".running_var"]}


def body_params_from_state_dict(sd, prefix, config):
    """Maps `{prefix}input_layer.*` and `{prefix}body.{i}.*` to IRSEBody params (raises KeyError)."""
    p = {
        "input_conv": {"kernel": _conv_kernel(sd[prefix + "input_layer.0.weight"])},
        "input_bn": _bn(sd, prefix + "input_layer.1"),
        "input_prelu": {"alpha": sd[prefix + "input_layer.2.weight"].reshape(-1)},
    }
    for i, (c_in, depth, _) in enumerate(config.units()):
        u = f"{prefix}body.{i}."
        unit = {
            "bn_in": _bn(sd, u + "res_layer.0"),
            "conv1": {"kernel": _conv_kernel(sd[u + "res_layer.1.weight"])},
            "prelu": {"alpha": sd[u + "res_layer.2.weight"].reshape(-1)},
            "conv2": {"kernel": _conv_kernel(sd[u + "res_layer.3.weight"])},
            "bn_out": _bn(sd, u + "res_layer.4"),
            "se_fc1": {"kernel": _conv_kernel(sd[u + "res_layer.5.fc1.weight"])},
            "se_fc2": {"kernel": _conv_kernel(sd[u + "res_layer.5.fc2.weight"])},
        }
        if c_in != depth:
            unit["shortcut_conv"] = {"kernel": _conv_kernel(sd[u + "shortcut_layer.0.weight"])}
            unit["shortcut_bn"] = _bn(sd, u + "shortcut_layer.1")
        p[f"unit_{i}"] = unit
    return p


def infer_body_config(sd, prefix):
    """Reads the body shape from the state dict: widths from conv shapes; a stage starts at unit 0 and
    wherever the channel count changes (true for IR-SE50/100/152, whose stages all widen)."""
    stem_key = prefix + "input_layer.0.weight"
    if stem_key not in sd:
        raise KeyError(stem_key)
    stem = int(sd[stem_key].shape[0])
    depths, n = [], 0
    while f"{prefix}body.{n}.res_layer.1.weight" in sd:
        depths.append(int(sd[f"{prefix}body.{n}.res_layer.1.weight"].shape[0]))
        n += 1
    if n == 0:
        raise KeyError(prefix + "body.0.res_layer.1.weight")
    widths, units, c_in = [], [], stem
    for i, d in enumerate(depths):
        if i == 0 or d != c_in:
            widths.append(d)
            units.append(0)
        units[-1] += 1
        c_in = d
    fc1 = sd.get(prefix + "body.0.res_layer.5.fc1.weight")
    reduction = int(depths[0] // fc1.shape[0]) if fc1 is not None else 16
    return IRSEConfig(stem_width=stem, widths=tuple(widths), units_per_stage=tuple(units), se_reduction=reduction)
