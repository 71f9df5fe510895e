"""PSNR and SSIM against closed forms and an independent scipy.ndimage reference."""
import numpy as np
import pytest

from stylejax.metrics import psnr, ssim


def images(seed, shape=(3, 32, 40, 3)):
    """A smooth pattern plus noise (so local statistics vary), and a distorted copy, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[1], 0:shape[2]]
    base = np.stack([np.sin(xx / (3 + b) + c) * np.cos(yy / 5) for b in range(shape[0]) for c in range(shape[3])])
    base = base.reshape(shape[0], shape[3], *shape[1:3]).transpose(0, 2, 3, 1)
    clean = np.clip(0.7 * base + rng.normal(0, 0.1, shape), -1, 1)
    noise_std = 0.08 * (1 + np.arange(shape[0])).reshape(-1, 1, 1, 1)  # frame k: a different SSIM
    noisy = np.clip(clean + rng.normal(0, 1, shape) * noise_std, -1, 1)
    return clean.astype(np.float32), noisy.astype(np.float32)


def reference_ssim(a, b, data_range=2.0):
    """Wang et al. 2004 in float64 with scipy: Gaussian filter (σ 1.5, truncated to an 11-tap window), then
    the 5-pixel border whose windows leave the image is dropped."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda x: gaussian_filter(x, 1.5, truncate=3.5)[5:-5, 5:-5]  # radius int(3.5·1.5 + 0.5) = 5
    out = []
    for img_a, img_b in zip(a.astype(np.float64), b.astype(np.float64)):
        per_channel = []
        for ch in range(a.shape[-1]):
            x, y = img_a[..., ch], img_b[..., ch]
            mx, my = blur(x), blur(y)
            vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
            s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
            per_channel.append(s.mean())
        out.append(np.mean(per_channel))
    return np.array(out)


def test_psnr_known_values():
    target = np.zeros((2, 8, 8, 3), np.float32)
    pred = target.copy()
    pred[1] += 0.1  # MSE 0.01 -> 10·log10(4 / 0.01) = 26.0206 dB
    out = np.asarray(psnr(pred, target))
    assert out.shape == (2,) and out[0] == np.inf
    assert out[1] == pytest.approx(10 * np.log10(400), abs=1e-4)
    # data_range 1 (images in [0, 1]): MSE 0.01 -> 20 dB
    assert float(psnr(pred[1:], target[1:], data_range=1.0)[0]) == pytest.approx(20.0, abs=1e-4)


def test_ssim_identical_and_constant():
    a, _ = images(0)
    np.testing.assert_allclose(np.asarray(ssim(a, a)), 1.0, atol=1e-6)
    # Constant images: only the luminance term is left, (2ab + C1) / (a² + b² + C1) with C1 = (0.01·2)².
    x, y = np.full((1, 16, 16, 3), 0.2, np.float32), np.full((1, 16, 16, 3), -0.1, np.float32)
    c1 = 0.02 ** 2
    assert float(ssim(x, y)[0]) == pytest.approx((2 * 0.2 * -0.1 + c1) / (0.04 + 0.01 + c1), abs=1e-5)


def test_ssim_matches_reference():
    a, b = images(1)
    ours, ref = np.asarray(ssim(a, b)), reference_ssim(a, b)
    print(f"ssim {ours}, reference {ref}, max |diff| {np.abs(ours - ref).max():.2e}")  # measured 5e-8
    assert 0.3 < ref.min() and ref.max() < 0.95  # a mid-range test, not a trivially ~1 one
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    # Each frame alone gives its own value (no mixing across the batch).
    np.testing.assert_allclose(np.asarray(ssim(a[1:2], b[1:2]))[0], ours[1], atol=1e-6)


def test_ssim_matches_skimage():
    from skimage import metrics  # in the [test] extra: a missing package fails here instead of skipping
    a, b = images(2, (2, 24, 24, 3))
    sk = [metrics.structural_similarity(x, y, data_range=2.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False) for x, y in zip(a, b)]
    np.testing.assert_allclose(np.asarray(ssim(a, b)), sk, atol=1e-4)


def test_shape_errors():
    a = np.zeros((1, 10, 16, 3), np.float32)
    with pytest.raises(ValueError, match=r"ssim needs images of at least 11x11"):
        ssim(a, a)
    with pytest.raises(ValueError, match=r"pred and target must be \[B, H, W, C\] of one shape"):
        psnr(a, a[0])
