"""Reconstruction losses of the encoder stages: per-frame LPIPS + (optionally region-weighted) L2 + ID."""
import jax
import jax.numpy as jnp


def resize(images, size):
    """[B,H,W,3] -> [B,size,size,3]; antialiased (triangle filter) when shrinking."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "linear", antialias=True)


def coarse_resolution(gconfig, loss_size):
    """The generator resolution the coarse steps synthesise to: the smallest one >= the loss size (the finer
    blocks only add detail the loss's downsampling mostly removes); None when that is the full resolution."""
    res = min(r for r in gconfig.resolutions if r >= min(int(loss_size), gconfig.resolution))
    return None if res == gconfig.resolution else res


def reconstruction(pred, target, lpips, lpips_weight=1.0, l2_weight=1.0, weights=None, dtype=None):
    """Per-frame loss [B] between images in [-1, 1] of equal size: l2_weight · mean(w · (pred - target)²)
    + lpips_weight · LPIPS(pred, target). `weights` [B,H,W] (mean ≈ 1) emphasises regions in the L2 term."""
    sq = jnp.mean((pred - target) ** 2, axis=-1)
    l2 = jnp.mean(sq if weights is None else sq * weights, axis=(1, 2))
    loss = l2_weight * l2
    if lpips_weight:
        loss = loss + lpips_weight * lpips(pred, target, dtype)
    return loss
