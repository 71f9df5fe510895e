"""IR-SE ResNet body (TreB1eN InsightFace layout) shared by the e4e encoder and ArcFace, NHWC Flax.

Inference only: every BatchNorm applies its stored running statistics (PyTorch eval mode); the
statistics live in `params` next to the affine terms, so no `batch_stats` collection is involved.
Parameters: input_conv, input_bn, input_prelu, then per unit `unit_{i}/` bn_in, conv1, prelu, conv2,
bn_out, se_fc1, se_fc2 (+ shortcut_conv, shortcut_bn where the width changes). The mapping from the
PyTorch keys lives in `convert/irse.py`.
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
