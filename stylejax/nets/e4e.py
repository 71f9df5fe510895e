"""e4e encoder (Tov et al. 2021, `Encoder4Editing`): RGB [B,256,256,3] in [-1,1] -> W+ [B,18,512].

IR-SE50 body; FPN over the outputs of stages 2, 3, 4 (c1 64², c2 32², c3 16² at 256² input) with
bilinear align-corners up-sampling; one map2style block per W+ row (stride-2 3×3 convs + LeakyReLU 0.01
down to 1×1, then an equalised linear layer). Row 0 gives w0, broadcast to all rows; row i ≥ 1 adds
its own delta (from c3 for i < 3, p2 for i < 7, p1 otherwise); finally `latent_avg` [18,512] is added
(pSp's `start_from_latent_avg`).

    enc = stylejax.load("ckpt/e4e")                 # from `python -m convert e4e`: an `E4E`
    ws = jax.jit(lambda enc, x: enc(x))(enc, images)
"""
from dataclasses import dataclass, field
from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp
import jax
import numpy as np

from stylejax.nets.base import Network
from stylejax.nets.irse import HIGHEST, IRSEBody, IRSEConfig, conv


@dataclass(frozen=True)
class E4EConfig:
    """Defaults are the FFHQ e4e encoder (stylegan_size 1024 -> 18 styles)."""
    body: IRSEConfig = field(default_factory=IRSEConfig)
    n_styles: int = 18
    coarse_ind: int = 3  # rows [0, coarse) read c3, [coarse, middle) read p2, [middle, n) read p1
    middle_ind: int = 7
    # stride-2 convs per map2style block for coarse/middle/fine rows: log2 of the reference's
    # `spatial` argument (16, 32, 64), independent of the input size.
    style_convs: Tuple[int, int, int] = (4, 5, 6)
    start_from_latent_avg: bool = True

    def __post_init__(self):
        object.__setattr__(self, "style_convs", tuple(int(c) for c in self.style_convs))

    @property
    def style_width(self):
        return self.body.widths[-1]  # = c3 channels; FPN laterals project c1, c2 to it

    def convs_for_row(self, i):
        return self.style_convs[0 if i < self.coarse_ind else 1 if i < self.middle_ind else 2]


def small_config():
    """Test configuration: the real unit structure (24 units, taps at units 6/20/23, 18 rows,
    4/5/6 map2style convs) with narrow widths; the reference builds the same with patched widths."""
    return E4EConfig(body=IRSEConfig(stem_width=16, widths=(16, 18, 20, 22), units_per_stage=(3, 4, 14, 3)))


def upsample_bilinear_align_corners(x, out_hw):
    """F.interpolate(mode='bilinear', align_corners=True) for NHWC, as two interpolation matrices."""
    def matrix(n_in, n_out):
        scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
        src = np.arange(n_out, dtype=np.float32) * scale  # torch computes the source index in fp32
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = (src - i0).astype(np.float32)
        m = np.zeros((n_out, n_in), np.float32)
        np.add.at(m, (np.arange(n_out), i0), 1 - frac)
        np.add.at(m, (np.arange(n_out), i1), frac)
        return jnp.asarray(m)

    mh, mw = matrix(x.shape[1], out_hw[0]), matrix(x.shape[2], out_hw[1])
    return jnp.einsum("oh,bhwc,pw->bopc", mh.astype(x.dtype), x, mw.astype(x.dtype), precision=HIGHEST)


class Map2Style(nn.Module):
    """GradualStyleBlock: n × (conv3×3 stride 2 pad 1 + LeakyReLU 0.01) -> 1×1 -> EqualLinear."""
    width: int
    num_convs: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        for k in range(self.num_convs):
            x = nn.leaky_relu(conv(self.width, 3, 2, use_bias=True, name=f"conv_{k}", dtype=self.dtype)(x), 0.01)
        if x.shape[1:3] != (1, 1):
            raise ValueError(f"map2style ended at {x.shape[1]}x{x.shape[2]}, needs 1x1: the input image is too large "
                             f"for {self.num_convs} stride-2 convs (e4e expects 256x256)")
        # EqualLinear(lr_mul=1): the 1/sqrt(in) scale is folded into `kernel` by the converter.
        return nn.Dense(self.width, precision=HIGHEST, dtype=self.dtype, name="linear")(x[:, 0, 0, :])


class E4ENet(nn.Module):
    config: E4EConfig = field(default_factory=E4EConfig)
    dtype: Any = None  # e.g. jnp.bfloat16 for compute; params stay fp32

    @nn.compact
    def __call__(self, images):
        """images [B,H,W,3] RGB in [-1,1] (H = W = 256 for the FFHQ encoder) -> W+ [B,n_styles,width]."""
        cfg = self.config
        c1, c2, c3 = IRSEBody(cfg.body, dtype=self.dtype, name="body")(images)[1:4]
        width = cfg.style_width
        w0 = Map2Style(width, cfg.convs_for_row(0), self.dtype, name="style_0")(c3)
        rows, features = [w0], c3
        for i in range(1, cfg.n_styles):
            if i == cfg.coarse_ind:
                lat = nn.Conv(width, (1, 1), precision=HIGHEST, dtype=self.dtype, name="latlayer1")(c2)
                p2 = upsample_bilinear_align_corners(features, lat.shape[1:3]) + lat
                features = p2
            elif i == cfg.middle_ind:
                lat = nn.Conv(width, (1, 1), precision=HIGHEST, dtype=self.dtype, name="latlayer2")(c1)
                features = upsample_bilinear_align_corners(features, lat.shape[1:3]) + lat
            rows.append(w0 + Map2Style(width, cfg.convs_for_row(i), self.dtype, name=f"style_{i}")(features))
        ws = jnp.stack(rows, axis=1).astype(jnp.float32)
        if cfg.start_from_latent_avg:
            ws = ws + self.param("latent_avg", nn.initializers.zeros, (cfg.n_styles, width))
        return ws


# ----------------------------------------------------------------------------------------------
# the network object

@jax.tree_util.register_pytree_node_class
class E4E(Network):
    """The e4e encoder: `enc(images [B,256,256,3] in [-1,1], dtype=None)` -> W+ [B, n_styles, width] (fp32)."""

    kind = "e4e"
    config_class = E4EConfig

    @classmethod
    def init(cls, config, key):
        return {"params": E4ENet(config).init(key, jnp.zeros((1, 256, 256, 3), jnp.float32))["params"]}

    def __call__(self, images, dtype=None):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"e4e expects images [B, H, W, 3], got shape {tuple(images.shape)}")
        return E4ENet(self.config, dtype=dtype).apply({"params": self.params}, images)

    encode = __call__
