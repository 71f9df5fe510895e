"""Crop coordinates of landmarks and eye/mouth loss weights."""
import numpy as np
import pytest

pytest.importorskip("cv2")

from stylejax.regions import landmarks_to_crop, region_weights  # noqa: E402

S = 256


def square_quad(centre, half, angle_deg):
    """TL, BL, BR, TR of a square crop: half-axis `half` px, turned clockwise on screen by `angle_deg`."""
    a = np.radians(angle_deg)
    x = half * np.array([np.cos(a), np.sin(a)])
    y = np.array([-x[1], x[0]])
    c = np.asarray(centre, np.float64)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def test_quad_corners_and_centre():
    quad = square_quad((600.3, 350.7), 210.0, 17.0)
    centre = quad.mean(0)
    pts = np.zeros((1, 68, 2))
    pts[0, :5] = np.vstack([quad, centre])
    crop = landmarks_to_crop(pts, quad[None], S)[0, :5]
    expected = [[-0.5, -0.5], [-0.5, S - 0.5], [S - 0.5, S - 0.5], [S - 0.5, -0.5], [(S - 1) / 2, (S - 1) / 2]]
    np.testing.assert_allclose(crop, expected, atol=1e-9)


def test_matches_align_sampling():
    """A blob at a sub-pixel frame point lands, in align's rendered crop, where landmarks_to_crop puts it."""
    from stylejax.align.warp import render_crop
    h, w, size = 300, 400, 128
    p = np.array([211.3, 143.8])
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 3.0 ** 2))
    frame = np.repeat((blob * 250)[..., None], 3, -1).astype(np.float32)
    quad = square_quad((200.0, 150.0), 70.0, 20.0)  # 140 px onto 128: no pre-shrink, one plain warp
    crop = render_crop(frame, quad, size, "linear")[..., 0].astype(np.float64)
    rows, cols = np.mgrid[0:size, 0:size]
    wts = np.clip(crop - 5, 0, None)
    found = np.array([(wts * cols).sum(), (wts * rows).sum()]) / wts.sum()
    pts = np.zeros((1, 68, 2))
    pts[0, 0] = p
    predicted = landmarks_to_crop(pts, quad[None], size)[0, 0]
    print(f"blob centroid {found}, predicted {predicted}")  # measured |diff| 0.0005 px
    np.testing.assert_allclose(found, predicted, atol=0.05)


def synthetic_face(size=S):
    """Crop landmarks [1, 68, 2]: eyes as hexagons, the outer lip as a 12-gon, in FFHQ-like places."""
    lm = np.zeros((1, 68, 2))
    hexagon = np.array([[-1, 0], [-0.5, -1], [0.5, -1], [1, 0], [0.5, 1], [-0.5, 1]])
    # dlib order: 36 outer corner ... 39 inner corner (subject's right eye, image left), 42 inner ... 45 outer
    lm[0, 36:42] = np.array([0.37, 0.45]) * size + hexagon * [0.05 * size, 0.02 * size]
    lm[0, 42:48] = np.array([0.63, 0.45]) * size + hexagon * [0.05 * size, 0.02 * size]
    a = np.radians(np.arange(12) * 30.0)
    lm[0, 48:60] = np.array([0.5, 0.75]) * size + np.stack([-np.cos(a) * 0.1 * size, -np.sin(a) * 0.04 * size], -1)
    return lm


def test_region_weights_values():
    lm = synthetic_face()
    wts = region_weights(lm, S, eye_weight=3.0, mouth_weight=2.0, feather=0.01)
    assert wts.shape == (1, S, S) and wts.dtype == np.float32
    at = lambda xy: float(wts[0, int(round(xy[1])), int(round(xy[0]))])
    eye_r, eye_l, mouth = lm[0, 36:42].mean(0), lm[0, 42:48].mean(0), lm[0, 48:60].mean(0)
    # Centres lie ≥ 10 px (~4σ of the 2.6 px feather) inside their regions: the full weight, to 1e-3.
    assert at(eye_r) == pytest.approx(4.0, abs=1e-3) and at(eye_l) == pytest.approx(4.0, abs=1e-3)
    assert at(mouth) == pytest.approx(3.0, abs=1e-3)
    # Far from the face, and on the nose between eyes and mouth: exactly / almost 1.
    assert wts[0, :40, :].max() == 1.0 and wts[0, :, :40].max() == 1.0
    assert at((0.5 * S, 0.6 * S)) == pytest.approx(1.0, abs=1e-3)
    assert wts.min() == 1.0 and wts.max() == pytest.approx(4.0, abs=1e-3)


def test_region_margins_without_feather():
    lm = synthetic_face()
    wts = region_weights(lm, S, eye_weight=3.0, mouth_weight=2.0, feather=0.0, eye_margin=0.3, mouth_margin=0.15)
    assert set(np.unique(wts)) == {1.0, 3.0, 4.0}
    outer = lm[0, 36]  # (0.32 S, 0.45 S) = (81.92, 115.2); the eye is 0.1 S = 25.6 px wide -> margin 7.68 px
    row = int(round(outer[1]))
    inside, outside = int(np.ceil(outer[0] - 7.68 + 0.5)), int(np.floor(outer[0] - 7.68 - 0.5))
    assert (wts[0, row, inside], wts[0, row, outside]) == (4.0, 1.0)
    # Vertically too the margin is the eye's width, not its height: 7.68 px above the top of the eye.
    top = int(round(lm[0, 37, 1])) - 6  # a height-based margin (0.3 x 10 px) would stop 3 px above
    assert wts[0, top, int(round(lm[0, 37:39, 0].mean()))] == 4.0
    mouth_left = lm[0, 48]  # mouth 0.2 S = 51.2 px wide -> margin 7.68 px
    assert wts[0, int(round(mouth_left[1])), int(np.ceil(mouth_left[0] - 7.68 + 0.5))] == 3.0
    assert wts[0, int(round(mouth_left[1])), int(np.floor(mouth_left[0] - 7.68 - 0.5))] == 1.0


def test_non_finite_frames_and_batch():
    lm = np.concatenate([synthetic_face(), np.full((1, 68, 2), np.nan), synthetic_face() + [10, 0]])
    wts = region_weights(lm, S, 1.0, 1.0, 0.01)
    assert wts.shape == (3, S, S) and (wts[1] == 1.0).all()
    # A face moved 10 px right moves its weights 10 px right.
    np.testing.assert_allclose(wts[2][:, 60:200], wts[0][:, 50:190], atol=1e-5)
