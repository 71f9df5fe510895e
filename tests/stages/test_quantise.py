"""Quantisation steps of the compact motion coding (stylejax.stages.quantise): the sensitivities are the RMS image
change per unit of each column, checked against central finite differences of the decoder (an independent
route: no derivatives), and the steps spend the PSNR budget as the formula says."""
import numpy as np
import pytest

import tiny_encoder
from stylejax import demo
from stylejax.decoder import iter_renders
from stylejax.io.encoding import Encoding
from stylejax.stages import quantise

FRAMES = 3


@pytest.fixture(scope="module")
def clip():
    g, _, flow, _ = tiny_encoder.networks()
    id_latent, pose, offsets, channels = demo.ground_truth(g, flow, 8)
    enc = Encoding(id_latent=id_latent, pose_deg=pose, offsets=offsets, channels=tuple(channels),
                   offset_scale=demo.truth_scale(g, channels, samples=1000), fps=25.0,
                   resolution=g.config.resolution, generator_fingerprint="0" * 16, pose_model="styleflow-rk4-8",
                   cond_src=np.zeros(17, np.float32))
    return g, flow, enc


def rms_change(g, flow, enc, frames, column, h):
    """RMS over pixels of (image(x + h e_j) - image(x - h e_j)) / 2h at `frames`, rendered by the decoder."""
    import dataclasses

    images = []
    for sign in (1, -1):
        pose, off = enc.pose_deg.copy(), enc.offsets.copy()
        if column < 3:
            pose[:, column] += sign * h
        else:
            off[:, column - 3] += sign * h
        moved = dataclasses.replace(enc, pose_deg=pose, offsets=off)
        images.append(np.concatenate([img for _, _, img in iter_renders(moved, g, flow, chunk=8)])[frames])
    return float(np.sqrt(np.mean(((images[0].astype(np.float64) - images[1]) / (2 * h)) ** 2)))


def test_sensitivities_match_finite_differences(clip):
    g, flow, enc = clip
    frames = np.array([1, 4, 6])
    sens, mse = quantise.sensitivities(enc, g, flow, frames)
    assert mse is None and sens.shape == (3 + len(enc.channels),) and (sens > 0).all()
    for column in (0, 1, 3, 10, 34):
        # central differences are exact to O(h²); h = 1e-2 (degrees, stds) keeps float32 rounding of the images
        # (~1e-7 / 2h ~ 1e-5) far below the ~1e-2..1e-1 sensitivities: agreement to 2 %
        fd = rms_change(g, flow, enc, frames, column, 1e-2)
        assert sens[column] == pytest.approx(fd, rel=0.02), (column, sens[column], fd)


def test_roll_sensitivity_is_the_rotation_of_the_image():
    from scipy.ndimage import map_coordinates

    # a smooth image rotated by ±0.5° about its centre by cubic-spline resampling (OpenCV's warp is no reference
    # here: it rounds sample positions to 1/32 px, 0.1-0.2 of the displacement at these angles)
    s = 64
    c = (s - 1) / 2
    yy, xx = np.mgrid[0:s, 0:s] / s
    img = np.stack([np.sin(6 * xx + 2 * yy), np.cos(5 * yy - 3 * xx), np.sin(4 * xx * yy)], -1)
    y, x = np.mgrid[0:s, 0:s] - c

    def rotate(deg):
        co, si = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
        return np.stack([map_coordinates(img[..., k], [si * x + co * y + c, co * x - si * y + c], order=3,
                                         mode="reflect") for k in range(3)], -1)

    inner = slice(8, -8)  # away from the reflected border
    fd = np.sqrt(np.mean((rotate(0.5) - rotate(-0.5))[inner, inner] ** 2))  # per degree
    gy, gx = np.gradient(img, axis=(0, 1))
    change = (gx * -y[..., None] + gy * x[..., None]) * np.pi / 180
    inner_rms = np.sqrt(np.mean(change[inner, inner] ** 2))
    # central differences of a smooth rotation: O(θ²) and the gradient's O(h²) on a slowly varying image
    assert inner_rms == pytest.approx(fd, rel=0.01)
    # quantise's version over the whole image is the same formula
    assert quantise._roll_sensitivity(img[None]) == pytest.approx(float(np.sqrt(np.mean(change ** 2))), rel=1e-9)


def test_steps_spend_the_budget_equally():
    sens = np.array([0.5, 0.1, 0.02, 1.0, 0.25])
    step = quantise.choose_steps(sens, mse=1e-3, psnr_loss_db=0.1, max_step_deg=10.0, max_step_std=10.0)
    budget = 1e-3 * (10 ** 0.01 - 1)
    # each column adds step²·s²/12 of MSE, all equal, summing to the budget
    np.testing.assert_allclose((step.astype(np.float64) * sens) ** 2 / 12, budget / len(sens), rtol=1e-6)
    capped = quantise.choose_steps(sens, mse=1e-3, psnr_loss_db=0.1, max_step_deg=0.01, max_step_std=0.02)
    assert (capped[:3] <= 0.01).all() and (capped[3:] <= 0.02).all()
