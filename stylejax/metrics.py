"""Image quality metrics per frame: batch axis first, images [B, H, W, C] in [-1, 1] (data_range 2)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al. 2004


def _check(pred, target):
    pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred and target must be [B, H, W, C] of one shape, got {pred.shape} and {target.shape}")
    return pred, target


def psnr(pred, target, data_range: float = 2.0) -> jnp.ndarray:
    """Peak signal-to-noise ratio [B] in dB from each frame's MSE; identical frames give +inf."""
    pred, target = _check(pred, target)
    mse = jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range ** 2 / mse)  # mse = 0 -> log10(inf) = inf


def _gaussian_window() -> np.ndarray:
    x = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
    w = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur_valid(x: jnp.ndarray) -> jnp.ndarray:
    """Separable Gaussian window over H and W of [B, H, W, C], each channel alone, valid region only."""
    c = x.shape[-1]
    w = jnp.asarray(_gaussian_window())
    conv = lambda v, kernel: jax.lax.conv_general_dilated(
        v, jnp.tile(kernel, (1, 1, 1, c)), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c, precision=jax.lax.Precision.HIGHEST)
    return conv(conv(x, w.reshape(-1, 1, 1, 1)), w.reshape(1, -1, 1, 1))


def ssim(pred, target, data_range: float = 2.0) -> jnp.ndarray:
    """Structural similarity [B] (Wang et al. 2004): 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03,
    population (not sample) variances, each channel alone over the valid region (no padding), then the
    mean over positions and channels."""
    pred, target = _check(pred, target)
    if min(pred.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {pred.shape[1:3]}")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    n = pred.shape[-1]
    # One blur pass for all five local statistics.
    stats = _blur_valid(jnp.concatenate([pred, target, pred * pred, target * target, pred * target], -1))
    mu_p, mu_t, e_pp, e_tt, e_pt = (stats[..., k * n:(k + 1) * n] for k in range(5))
    var_p, var_t, cov = e_pp - mu_p ** 2, e_tt - mu_t ** 2, e_pt - mu_p * mu_t
    num = (2 * mu_p * mu_t + c1) * (2 * cov + c2)
    den = (mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2)
    return jnp.mean(num / den, axis=(1, 2, 3))
