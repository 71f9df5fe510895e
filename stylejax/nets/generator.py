"""StyleGAN2 generator in Flax: mapping, synthesis and StyleSpace (Karras et al. 2020).

Layout and maths follow NVlabs `training/networks.py` / rosinality `model.py`:

  z -> 2nd-moment norm -> n x [FC (lr-mul 0.01) + lrelu*sqrt2] -> w -> broadcast to num_ws -> truncation
  ws[:, i] -> affine (+1 baked into the bias) -> styles s -> modulated conv -> noise -> bias, lrelu*sqrt2

Modulated convs scale the activations by the styles, run ONE shared-weight convolution for the whole
batch, then demodulate the outputs (NVlabs' non-fused path). That is mathematically identical to the
per-sample weights of the grouped-conv formulation, but its backward pass is an ordinary conv, which
XLA/cuDNN run fast; grouped convs with one group per sample do not.

Everything is NHWC. Parameters use a JAX-friendly layout (HWIO convs, [in, out] dense weights); see
`convert/stylegan2.py` for the mapping from the PyTorch checkpoints. Noise maps and `w_avg` are not
trainable and live in the `buffers` collection.

Public API: `stylejax.load_generator(path)` (in `stylejax.io.checkpoint`) -> `Generator` with `.config`, `.params`, `.buffers` and
`mapping`, `synthesize`, `styles_from_ws`, `synthesize_from_styles`. A `Generator` is a pytree (config
static), so it can be passed through `jax.jit`/`jax.grad` (e.g. to fine-tune `params`).
"""
import dataclasses
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stylejax.nets.base import Network

SQRT2 = math.sqrt(2.0)
_FIR = np.array([1.0, 3.0, 3.0, 1.0])
# [1,3,3,1] (x) [1,3,3,1], normalised; x4 gain for 2x upsampling (zero insertion keeps 1 in 4 samples).
UP_FILTER = (np.outer(_FIR, _FIR) / np.sum(_FIR) ** 2 * 4.0).astype(np.float32)
NOISE_MODES = ("const", "random", "none")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    resolution: int = 1024
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    # channels per resolution, as ((4, 512), (8, 512), ...); config-f by default
    channels: Tuple[Tuple[int, int], ...] = (
        (4, 512), (8, 512), (16, 512), (32, 512), (64, 512),
        (128, 256), (256, 128), (512, 64), (1024, 32))
    conv_clamp: Optional[float] = None  # NVlabs ADA models may clamp conv outputs (e.g. 256)

    def __post_init__(self):
        log2 = math.log2(self.resolution)
        if self.resolution < 4 or log2 != int(log2):
            raise ValueError(f"resolution must be a power of two >= 4, got {self.resolution}")
        channels = tuple((int(r), int(c)) for r, c in dict(self.channels).items())
        missing = [r for r in self.resolutions if r not in dict(channels)]
        if missing:
            raise ValueError(f"channels has no entry for resolutions {missing}")
        object.__setattr__(self, "channels", tuple(sorted(channels)))

    @property
    def resolutions(self):
        return [2 ** i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self):
        return 2 * len(self.resolutions)

    def ch(self, res):
        return dict(self.channels)[res]

    def style_layers(self):
        """StyleSpace layers in use order: (name, W+ row, style dim, is_torgb).

        conv 4x4, torgb 4x4, then per block conv0 (up), conv1, torgb. A ToRGB shares its W+ row with the
        next block's conv0 (NVlabs/rosinality index assignment).
        """
        layers = [("b4.conv1", 0, self.ch(4), False), ("b4.torgb", 1, self.ch(4), True)]
        row = 1
        for res in self.resolutions[1:]:
            layers.append((f"b{res}.conv0", row, self.ch(res // 2), False))
            layers.append((f"b{res}.conv1", row + 1, self.ch(res), False))
            layers.append((f"b{res}.torgb", row + 2, self.ch(res), True))
            row += 2
        return layers


def config_f(resolution=1024):
    """StyleGAN2 config-f (FFHQ 1024: 30.37 M parameters)."""
    return GeneratorConfig(resolution=resolution)


# ---------------------------------------------------------------------------------------------
# Ops


def _lrelu(x):
    return jnp.where(x >= 0, x, 0.2 * x) * SQRT2


def _conv(x, w, padding, lhs_dilation=(1, 1), groups=1, precision=None):
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=padding, lhs_dilation=lhs_dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        precision=precision, preferred_element_type=jnp.float32)


def _fir(x, pad0, pad1, upsample, precision):
    """upfirdn2d with the [1,3,3,1] filter: optional 2x zero-insertion, pad, depthwise filter."""
    c = x.shape[-1]
    k = jnp.asarray(UP_FILTER, x.dtype)
    k = jnp.tile(k[:, :, None, None], (1, 1, 1, c))
    if upsample:  # zero insertion = lhs dilation; one zero after the last sample too
        return _conv(x, k, ((pad0, pad1 + 1),) * 2, lhs_dilation=(2, 2), groups=c,
                     precision=precision).astype(x.dtype)
    return _conv(x, k, ((pad0, pad1),) * 2, groups=c, precision=precision).astype(x.dtype)


def _precision(dtype):
    # fp32 must be fp32 (XLA may otherwise use TF32 / bf16 passes on GPUs).
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


# ---------------------------------------------------------------------------------------------
# Modules


class Dense(nn.Module):
    """Equalised-lr linear layer: runtime weight gain lr_mul/sqrt(in), bias gain lr_mul."""
    features: int
    lr_mul: float = 1.0
    bias_init: float = 0.0
    activation: bool = False

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        w = self.param("weight", lambda k, s: jax.random.normal(k, s) / self.lr_mul, (fan_in, self.features))
        b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
        y = jnp.matmul(x, w * (self.lr_mul / math.sqrt(fan_in)), precision=jax.lax.Precision.HIGHEST)
        y = y + b * self.lr_mul
        return _lrelu(y) if self.activation else y


class MappingNetwork(nn.Module):
    config: GeneratorConfig

    @nn.compact
    def __call__(self, z, truncation_psi=1.0, truncation_cutoff=None):
        cfg = self.config
        w_avg = self.variable("buffers", "w_avg", jnp.zeros, (cfg.w_dim,))
        x = z.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-8)
        for i in range(cfg.mapping_layers):
            x = Dense(cfg.w_dim, lr_mul=cfg.mapping_lr_mul, activation=True, name=f"fc{i}")(x)
        ws = jnp.repeat(x[:, None, :], cfg.num_ws, axis=1)
        cutoff = cfg.num_ws if truncation_cutoff is None else truncation_cutoff
        rows = (jnp.arange(cfg.num_ws) < cutoff)[None, :, None]
        truncated = w_avg.value + truncation_psi * (ws - w_avg.value)
        return jnp.where(rows, truncated, ws)


class ModulatedLayer(nn.Module):
    """Affine -> modulate -> shared-weight conv -> demodulate -> (noise, bias, lrelu) | ToRGB."""
    in_channels: int
    out_channels: int
    kernel: int = 3
    up: bool = False
    torgb: bool = False
    resolution: int = 4
    conv_clamp: Optional[float] = None

    def setup(self):
        self.affine = Dense(self.in_channels, bias_init=1.0, name="affine")
        k = self.kernel
        self.weight = self.param("weight", nn.initializers.normal(1.0), (k, k, self.in_channels, self.out_channels))
        self.bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
        if not self.torgb:
            self.noise_strength = self.param("noise_strength", nn.initializers.zeros, ())
            self.noise_const = self.variable(
                "buffers", "noise_const",
                lambda: jax.random.normal(self.make_rng("params"), (self.resolution, self.resolution)))

    def style(self, w):
        """StyleSpace vector: the affine output (+1 included); ToRGB before its 1/sqrt(fan_in) gain."""
        return self.affine(w)

    def __call__(self, x, styles, noise_mode="const", noise_rng=None, dtype=jnp.float32):
        k, prec = self.kernel, _precision(dtype)
        weight = self.weight * (1.0 / math.sqrt(self.in_channels * k * k))
        x_mod = (x.astype(jnp.float32) * styles[:, None, None, :]).astype(dtype)
        if self.torgb:
            y = _conv(x_mod, weight.astype(dtype), "VALID", precision=prec) + self.bias
            return y if self.conv_clamp is None else jnp.clip(y, -self.conv_clamp, self.conv_clamp)
        if self.up:
            # conv_transpose(stride 2) == conv of the zero-interleaved input with the flipped kernel
            y = _conv(x_mod, weight[::-1, ::-1].astype(dtype), ((k - 1, k - 1),) * 2,
                      lhs_dilation=(2, 2), precision=prec)
            y = _fir(y.astype(dtype), 1, 1, upsample=False, precision=prec).astype(jnp.float32)
        else:
            y = _conv(x_mod, weight.astype(dtype), ((k // 2, k // 2),) * 2, precision=prec)
        # demodulation: 1/||w * s|| per (sample, out channel), computed without per-sample weights
        wsq = jnp.sum(weight * weight, axis=(0, 1))  # [in, out]
        demod = jax.lax.rsqrt(jnp.matmul(styles * styles, wsq, precision=jax.lax.Precision.HIGHEST) + 1e-8)
        y = y * demod[:, None, None, :]
        if noise_mode == "const":
            y = y + self.noise_strength * self.noise_const.value[None, :, :, None]
        elif noise_mode == "random":
            noise = jax.random.normal(noise_rng, y.shape[:3] + (1,))
            y = y + self.noise_strength * noise
        y = _lrelu(y + self.bias)
        if self.conv_clamp is not None:
            y = jnp.clip(y, -self.conv_clamp, self.conv_clamp)
        return y.astype(dtype)


class SynthesisBlock(nn.Module):
    """One resolution: [conv0 (2x up)], conv1, torgb."""
    config: GeneratorConfig
    res: int

    def setup(self):
        cfg, res = self.config, self.res
        if res > 4:
            self.conv0 = ModulatedLayer(cfg.ch(res // 2), cfg.ch(res), up=True, resolution=res,
                                        conv_clamp=cfg.conv_clamp)
        self.conv1 = ModulatedLayer(cfg.ch(res), cfg.ch(res), resolution=res, conv_clamp=cfg.conv_clamp)
        self.torgb = ModulatedLayer(cfg.ch(res), 3, kernel=1, torgb=True, conv_clamp=cfg.conv_clamp)

    def layers(self):
        return ([self.conv0] if self.res > 4 else []) + [self.conv1, self.torgb]

    def styles(self, w_rows):
        """w_rows: the W+ rows this block reads, one per layer (see GeneratorConfig.style_layers)."""
        return [layer.style(w) for layer, w in zip(self.layers(), w_rows)]

    def __call__(self, x, img, styles, noise_mode, noise_rngs, dtype):
        convs = self.layers()[:-1]
        for layer, s, rng in zip(convs, styles, noise_rngs):
            x = layer(x, s, noise_mode, rng, dtype)
        y = self.torgb(x, styles[-1], dtype=dtype)
        img = y if img is None else _fir(img, 2, 1, upsample=True, precision=_precision(dtype)) + y
        return x, img


class SynthesisNetwork(nn.Module):
    config: GeneratorConfig

    def setup(self):
        cfg = self.config
        self.const = self.param("const", nn.initializers.normal(1.0), (4, 4, cfg.ch(4)))
        self.blocks = [SynthesisBlock(cfg, res, name=f"b{res}") for res in cfg.resolutions]

    def _split(self, seq):
        """Splits a per-layer sequence (in style_layers order) into per-block chunks."""
        out, i = [], 0
        for res in self.config.resolutions:
            n = 2 if res == 4 else 3
            out.append(seq[i:i + n])
            i += n
        return out

    def styles(self, ws):
        rows = [ws[:, row] for _, row, _, _ in self.config.style_layers()]
        return [s for block, r in zip(self.blocks, self._split(rows)) for s in block.styles(r)]

    def __call__(self, styles, noise_mode="const", noise_rng=None, dtype=jnp.float32, max_resolution=None):
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if noise_mode == "random" and noise_rng is None:
            raise ValueError("noise_mode='random' needs an rng key")
        n_layers = len(styles)
        rngs = (list(jax.random.split(noise_rng, n_layers)) if noise_rng is not None
                else [None] * n_layers)
        batch = styles[0].shape[0]
        x = jnp.broadcast_to(self.const.astype(dtype), (batch,) + self.const.shape)
        img = None
        for block, s, r in zip(self.blocks, self._split(list(styles)), self._split(rngs)):
            if max_resolution is not None and block.res > max_resolution:
                break  # the skip architecture's image so far: the output without the finer blocks' detail
            x, img = block(x, img, s, noise_mode, r, dtype)
        return img


class StyleGAN2(nn.Module):
    config: GeneratorConfig

    def setup(self):
        self.mapping = MappingNetwork(self.config)
        self.synthesis = SynthesisNetwork(self.config)

    def __call__(self, z, truncation_psi=1.0, noise_mode="const"):
        ws = self.mapping(z, truncation_psi)
        return self.synthesis(self.synthesis.styles(ws), noise_mode)

    def map(self, z, truncation_psi=1.0, truncation_cutoff=None):
        return self.mapping(z, truncation_psi, truncation_cutoff)

    def styles(self, ws):
        return self.synthesis.styles(ws)

    def render(self, styles, noise_mode="const", noise_rng=None, dtype=jnp.float32, max_resolution=None):
        return self.synthesis(styles, noise_mode, noise_rng, dtype, max_resolution)


# ---------------------------------------------------------------------------------------------
# Pure functions over (config, variables); jitted with the config static.


def init_variables(config, key):
    """Random weights (N(0,1) convs, unit affine biases); noise maps and w_avg in `buffers`."""
    z = jnp.zeros((1, config.z_dim))
    return StyleGAN2(config).init({"params": key}, z)


def _vars(params, buffers):
    return {"params": params, "buffers": buffers}


@jax.tree_util.register_pytree_node_class
class Generator(Network):
    """A StyleGAN2 generator: config (static) + params + buffers (noise maps, w_avg) as pytree leaves.

    Methods are pure and un-jitted; jit at the call site with the generator as an argument:
    `jax.jit(lambda g, ws: g.synthesize(ws))(g, ws)`.
    """

    kind = "stylegan2"
    config_class = GeneratorConfig

    @classmethod
    def init(cls, config, key):
        return init_variables(config, key)

    @property
    def num_ws(self):
        return self.config.num_ws

    def _apply(self, *args, method):
        return StyleGAN2(self.config).apply(_vars(self.params, self.buffers), *args, method=method)

    def mapping(self, z, truncation_psi=1.0, truncation_cutoff=None):
        """z [B, z_dim] -> ws [B, num_ws, w_dim]; truncation towards w_avg on rows < cutoff."""
        return self._apply(jnp.asarray(z, jnp.float32), truncation_psi, truncation_cutoff, method=StyleGAN2.map)

    def styles_from_ws(self, ws):
        """ws [B, num_ws, w_dim] -> StyleSpace: list of [B, C_l], one per modulated conv and ToRGB."""
        self._check_ws(ws)
        return self._apply(jnp.asarray(ws, jnp.float32), method=StyleGAN2.styles)

    def synthesize_from_styles(self, styles, noise_mode="const", rng=None, dtype=jnp.float32, max_resolution=None):
        """StyleSpace -> images [B, H, W, 3] float32, about [-1, 1]. `max_resolution` r: stop after the block
        of resolution r and return the skip architecture's image there ([B, r, r, 3]: what the finer blocks
        refine, at a fraction of the cost; the coarse steps of the encoder's optimisations)."""
        expected = [c for _, _, c, _ in self.config.style_layers()]
        got = [s.shape[-1] for s in styles]
        if got != expected:
            raise ValueError(f"styles have channels {got}, expected {expected}")
        if max_resolution is not None and max_resolution not in self.config.resolutions:
            raise ValueError(f"max_resolution must be one of {self.config.resolutions}, got {max_resolution}")
        img = self._apply(list(styles), noise_mode, rng, jnp.dtype(dtype), max_resolution, method=StyleGAN2.render)
        return img.astype(jnp.float32)

    def synthesize(self, ws, noise_mode="const", rng=None, dtype=jnp.float32, max_resolution=None):
        """W+ latents [B, num_ws, w_dim] -> images [B, H, W, 3] float32, about [-1, 1] (`max_resolution`: as
        in `synthesize_from_styles`)."""
        return self.synthesize_from_styles(self.styles_from_ws(ws), noise_mode, rng, dtype, max_resolution)

    def _check_ws(self, ws):
        shape = (self.config.num_ws, self.config.w_dim)
        if ws.ndim != 3 or tuple(ws.shape[1:]) != shape:
            raise ValueError(f"ws must have shape [B, {shape[0]}, {shape[1]}], got {list(ws.shape)}")
