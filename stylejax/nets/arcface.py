"""ArcFace IR-SE50 (TreB1eN `model_ir_se50.pth`) as used for pSp/e4e's identity loss.

    net = stylejax.load("ckpt/arcface")              # from `python -m convert arcface`: an `ArcFace`
    emb = net.embed(images)                          # [B,256,256,3] (or 1024²) in [-1,1] -> [B,512], unit norm
    loss = net.id_loss(y_hat, y)                     # mean over batch of 1 - cos; y's embedding is detached

Preprocessing follows e4e's `IDLoss.extract_feats`: a 1024² image is first average-pooled to 256²
(pSp's `face_pool`), then rows 35:223 and columns 32:220 are cropped (188²) and adaptive-average-pooled
to 112² with PyTorch's window rule. The network: IR-SE50 body (112 -> 7) -> BN2d -> dropout (off) ->
flatten in torch's (C, H, W) order -> Linear(512·7·7 -> 512) -> BN1d -> L2 normalisation.
"""
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stylejax.nets.base import Network
from stylejax.nets.irse import HIGHEST, BatchNormInference, IRSEBody, IRSEConfig

CROP_ROWS = (35, 223)
CROP_COLS = (32, 220)


@dataclass(frozen=True)
class ArcFaceConfig:
    body: IRSEConfig = field(default_factory=IRSEConfig)
    embed_dim: int = 512
    input_size: int = 112  # the body downsamples 16×: 112 -> 7


def small_config():
    """Test configuration: the real 24-unit structure with narrow widths and a 32-d embedding."""
    return ArcFaceConfig(body=IRSEConfig(stem_width=16, widths=(16, 18, 20, 22), units_per_stage=(3, 4, 14, 3)),
                         embed_dim=32)


def adaptive_pool_matrix(n_in, n_out):
    """[n_out, n_in] averaging matrix of torch's AdaptiveAvgPool: window i = [floor(i·in/out), ceil((i+1)·in/out))."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m.astype(np.float32)


def adaptive_avg_pool(x, out_hw):
    """torch.nn.functional.adaptive_avg_pool2d for NHWC."""
    mh = jnp.asarray(adaptive_pool_matrix(x.shape[1], out_hw[0]), x.dtype)
    mw = jnp.asarray(adaptive_pool_matrix(x.shape[2], out_hw[1]), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw, precision=HIGHEST)


def preprocess(images, input_size=112):
    """[B,H,W,3] in [-1,1] at 256² (1024² or other sizes are first pooled to 256², as pSp's face_pool)
    -> the 112² face crop the network sees."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected NHWC RGB images [B,H,W,3], got shape {images.shape}")
    if images.shape[1:3] != (256, 256):
        images = adaptive_avg_pool(images, (256, 256))  # 1024 -> 256 is an exact 4×4 mean
    crop = images[:, CROP_ROWS[0]:CROP_ROWS[1], CROP_COLS[0]:CROP_COLS[1], :]
    return adaptive_avg_pool(crop, (input_size, input_size))


class ArcFaceNet(nn.Module):
    config: ArcFaceConfig = field(default_factory=ArcFaceConfig)
    dtype: Any = None

    @nn.compact
    def __call__(self, images, preprocessed=False):
        """images: [B,256,256,3] (or 1024²) in [-1,1]; or, with preprocessed=True, the [B,112,112,3] crop.
        Returns unit-norm embeddings [B, embed_dim] (fp32)."""
        cfg = self.config
        x = images if preprocessed else preprocess(images, cfg.input_size)
        x = IRSEBody(cfg.body, dtype=self.dtype, name="body")(x)[-1]
        x = BatchNormInference(x.shape[-1], name="out_bn2d")(x).astype(jnp.float32)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch Flatten of NCHW
        x = nn.Dense(cfg.embed_dim, precision=HIGHEST, name="out_linear")(x)
        x = BatchNormInference(cfg.embed_dim, name="out_bn1d")(x)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@jax.tree_util.register_pytree_node_class
class ArcFace(Network):
    """ArcFace IR-SE50: `net.embed(images)` -> unit embeddings; `net.id_loss(images, targets)`."""

    kind = "arcface"
    config_class = ArcFaceConfig

    @classmethod
    def init(cls, config, key):
        x = jnp.zeros((1, config.input_size, config.input_size, 3), jnp.float32)
        return {"params": ArcFaceNet(config).init(key, x, preprocessed=True)["params"]}

    def embed(self, images, preprocessed=False, dtype=None):
        """[B,256,256,3] (or 1024²) in [-1,1], or the [B,112,112,3] crop with preprocessed=True -> [B, D]."""
        return ArcFaceNet(self.config, dtype=dtype).apply({"params": self.params}, images, preprocessed=preprocessed)

    def id_loss_per_sample(self, images, targets, dtype=None):
        """[B] 1 - cos(e(images), e(targets)); the target embedding is a constant (as e4e detaches it)."""
        e = self.embed(images, dtype=dtype)
        t = jax.lax.stop_gradient(self.embed(targets, dtype=dtype))
        return 1.0 - jnp.sum(e * t, axis=-1)

    def id_loss(self, images, targets, dtype=None):
        """e4e's ID loss: mean over the batch of 1 - cos(e(images), e(targets))."""
        return jnp.mean(self.id_loss_per_sample(images, targets, dtype))
