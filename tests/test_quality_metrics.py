"""Video metrics (stylejax.metrics.FrameMetrics): flicker arithmetic, and identity and landmark numbers on real
faces with a known answer: the fixture's aligned crops against their own paste-back round trip (alignment ->
paste into the original frame -> crop again; no GAN), and against another person."""
import os

import numpy as np
import pytest

from stylejax import metrics

ROUND_TRIP_FRAMES = 4
SIZE = 512  # aligned crop size: landmarks are reported in px at 1024 whatever the crop size


def test_temporal_difference_is_tecogans_tlp():
    # LPIPS between consecutive frames of the re-synthesis and of the input: tLP = 100·|difference|
    np.testing.assert_allclose(metrics.temporal_difference([0.10, 0.02], [0.07, 0.05], 100.0), [3.0, 3.0])
    a = np.zeros((3, 68, 2))
    b = a + [3.0, 4.0]
    np.testing.assert_allclose(metrics.landmark_distance(a, b), [5.0, 5.0, 5.0])


def mean_abs(a, b):
    """A stand-in for LPIPS (mean absolute difference per frame): these tests are about the face metrics and
    the streaming bookkeeping, not about LPIPS (tests/nets/test_lpips.py)."""
    import jax.numpy as jnp
    return jnp.mean(jnp.abs(a - b), axis=(1, 2, 3))


def test_streaming_in_chunks_equals_one_pass():
    import jax
    rng = np.random.RandomState(0)
    orig = rng.randint(0, 256, (7, 16, 16, 3)).astype(np.uint8)
    gen = np.clip(orig.astype(int) + rng.randint(-9, 10, orig.shape), 0, 255).astype(np.uint8)
    lp = jax.tree_util.Partial(mean_abs)
    one, two = (metrics.FrameMetrics(lp, 16, faces=False) for _ in range(2))
    one.add(gen, orig)
    for lo, hi in ((0, 3), (3, 4), (4, 7)):  # the flicker pair across a chunk border is kept
        two.add(gen[lo:hi], orig[lo:hi])
    a, b = one.columns(), two.columns()
    # per-frame values see other batch shapes (XLA may reduce in another order): float32 rounding, a few ulps;
    # tLP is 100x a difference of float32 means near 0.3 (ulp 3e-8): 1e-4 covers ~30 ulps
    for key in ("frame", "psnr_db", "ssim", "lpips"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(a["tlp"], b["tlp"], rtol=0, atol=1e-4)
    assert np.isnan(a["tlp"][0]) and np.isfinite(a["tlp"][1:]).all()
    expected = 100 * np.abs(np.abs(gen[1:] / 127.5 - gen[:-1] / 127.5).mean((1, 2, 3))
                            - np.abs(orig[1:] / 127.5 - orig[:-1] / 127.5).mean((1, 2, 3)))
    np.testing.assert_allclose(a["tlp"][1:], expected, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """(aligned crops, their paste-back round trip, another person's aligned crops), uint8 [N, SIZE, SIZE, 3]."""
    from conftest import FIXTURES

    if not os.path.isdir(FIXTURES):
        pytest.skip("../shared/fixtures is absent")
    fixtures = FIXTURES
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    from check_metrics_fixtures import paste_round_trip

    return paste_round_trip(fixtures, str(tmp_path_factory.mktemp("align")), ROUND_TRIP_FRAMES, SIZE)


def test_identity_and_landmarks_on_real_faces(round_trip):
    import jax
    crops, trip, other = round_trip
    lp = jax.tree_util.Partial(mean_abs)
    same = metrics.FrameMetrics(lp, SIZE)
    same.add(trip, crops)
    cols = same.columns()
    assert np.isfinite(cols["dlib_id_distance"]).all() and np.isfinite(cols["landmark_px"]).all()
    # the round trip resamples twice (crop -> frame at scale ~0.6 -> crop) and blends at the mask's edge: the
    # same face, slightly blurred. dlib calls two photos one person below 0.6; consecutive frames of this clip are
    # 0.012 apart (measured), so 0.1 leaves room for blur yet is far below 0.6.
    assert cols["dlib_id_distance"].max() < 0.1, cols["dlib_id_distance"]
    # landmarks: the predictor's own jitter between frames of the clip is ~0.5 px at 1024 (measured 0.55 between
    # consecutive frames); 3 px at 1024 is under 0.1 of an eye's width and catches a frame or axis mix-up
    assert cols["landmark_px"].max() < 3.0, cols["landmark_px"]
    other_fm = metrics.FrameMetrics(lp, SIZE)
    other_fm.add(other, crops)
    other_cols = other_fm.columns()
    # another person: beyond dlib's 0.6 threshold (measured 0.87), and landmarks tens of px away
    assert other_cols["dlib_id_distance"].min() > 0.6, other_cols["dlib_id_distance"]
    assert other_cols["landmark_px"].min() > 5.0, other_cols["landmark_px"]
