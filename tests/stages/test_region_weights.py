"""Eye/mouth loss weights of the attributes stage on the demo's synthetic clip: they land on the eyes and mouth of
the crop and change the stage's loss there, and only there.

The synthetic clip's landmarks once lay in a 256 px frame while its quads covered the 32 px crop, so every
landmark fell outside the crop and every weight was 1.0: weighting was switched on and did nothing.
"""
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax import demo
from stylejax.stages import attributes

pytest.importorskip("cv2")

SIZE = 32  # the tiny generator's resolution and the loss size of configs/encode_tiny.py
EYE, MOUTH = 2.0, 4.0  # different, so a swap shows


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A synthetic work directory of three frames (the head turned 0°, 10° and -8°) and its crop landmarks."""
    from stylejax.regions import landmarks_to_crop

    pose = np.array([[0.0, 0.0, 0.0], [10.0, 6.0, 4.0], [-8.0, -3.0, -2.0]], np.float32)
    frames = np.full((3, SIZE, SIZE, 3), 128, np.uint8)
    workdir = demo.synthetic_workdir(str(tmp_path_factory.mktemp("regions") / "workdir"), frames, pose)
    tf = workdir.transforms()
    crop = landmarks_to_crop(np.asarray(tf["landmarks"], np.float64), np.asarray(tf["quad"], np.float64), SIZE)
    return workdir, crop


def config(eye=EYE, mouth=MOUTH):
    c = demo.load_config(demo.TINY_CONFIG).attributes
    c.eye_weight, c.mouth_weight, c.lpips_weight, c.l2_weight = eye, mouth, 0.0, 1.0
    return c


def pixel(xy):
    """(row, col) of the crop pixel nearest to crop point (x, y)."""
    return int(round(xy[1])), int(round(xy[0]))


def test_landmarks_fall_on_the_crop_like_an_ffhq_crop(clip):
    _, crop = clip
    eyes = (crop[:, 36:42].mean(1) + crop[:, 42:48].mean(1)) / 2
    mouth = crop[:, 48:60].mean(1)
    # the frontal frame: FFHQ puts the eye line at ~0.46 of the crop height, the mouth at ~0.74, both centred
    np.testing.assert_allclose(eyes[0] / SIZE, [0.5, 0.46], atol=0.03)
    np.testing.assert_allclose(mouth[0] / SIZE, [0.5, 0.74], atol=0.03)
    assert (crop[:, 36:60] > 0).all() and (crop[:, 36:60] < SIZE - 1).all()


def test_weights_land_on_eyes_and_mouth(clip):
    workdir, crop = clip
    w = attributes.region_weights(workdir, 3, SIZE, config())
    assert w.shape == (3, SIZE, SIZE) and w.dtype == np.float32
    for t in range(3):
        # the extra weight at each eye's and the mouth's centre (an eye is 1-2 px tall at 32 px: the 0.64 px
        # feather and pixel rounding leave it at least half; the mouth region is wider than 4 feather sigmas),
        # 1 at the crop's corners and on the nose tip between them
        for eye in (crop[t, 36:42].mean(0), crop[t, 42:48].mean(0)):
            assert w[(t,) + pixel(eye)] > 1 + 0.5 * EYE
        assert w[(t,) + pixel(crop[t, 48:60].mean(0))] > 1 + 0.9 * MOUTH
        assert w[t, :4, :4].max() == w[t, -4:, -4:].max() == 1.0
        assert w[(t,) + pixel(crop[t, 30])] < 1.05
        assert w[t].max() <= 1 + MOUTH + 1e-4
    # the weights follow the head: the eyes move with the yaw of frame 1
    assert np.abs(w[1] - w[0]).max() > 1.0


def test_weights_are_off_without_weighting_or_landmarks(clip, tmp_path):
    workdir, _ = clip
    assert attributes.region_weights(workdir, 3, SIZE, config(0.0, 0.0)) is None
    assert attributes.region_weights(workdir, 4, SIZE, config()) is None  # landmarks of another length


@pytest.fixture(scope="module")
def generator():
    import os

    from conftest import DATA
    from convert.stylegan2 import from_rosinality
    from stylejax.nets.generator import Generator

    golden = dict(np.load(os.path.join(DATA, "stylegan2_small.npz")))
    cfg, params, buffers = from_rosinality({k[3:]: v for k, v in golden.items() if k.startswith("sd/")},
                                           golden["w_avg"])
    return Generator(cfg, params, buffers), golden["ws_plus"][:1]


def test_weights_change_the_stage_loss_where_they_weight(clip, generator):
    """The attributes stage's own loss on one frame whose target differs from the rendering by a 2x2 patch:
    weighted, the patch's error counts (1 + weight) times on the mouth and eyes, once on the cheek."""
    workdir, crop = clip
    g, ws = generator
    cfg = config()
    weights = attributes.region_weights(workdir, 3, SIZE, cfg)[:1]
    loss = {use: attributes.loss_fn(cfg, SIZE, jnp.float32, np.array([0]), use, False, 8) for use in (True, False)}
    image = np.asarray(g.synthesize(jnp.asarray(ws), "const"))

    def ratio(xy):
        row, col = pixel(xy)
        target = image.copy()
        target[0, row:row + 2, col:col + 2] += 0.5
        batch = {"ws": jnp.asarray(ws), "target": jnp.asarray(target), "weights": jnp.asarray(weights)}
        params = {"offsets": jnp.zeros((1, 1))}
        nets = {"generator": g, "lpips": None, "offset_scale": jnp.ones(1)}
        out = {use: float(fn(params, nets, batch)[0]) for use, fn in loss.items()}
        assert out[False] == pytest.approx(4 * 0.25 / SIZE ** 2, rel=1e-4)  # the unweighted mean squared error
        return out[True] / out[False]

    assert ratio(crop[0, 48:60].mean(0) - 0.5) == pytest.approx(1 + MOUTH, rel=0.1)
    assert ratio(crop[0, 42:48].mean(0) - 0.5) == pytest.approx(1 + EYE, rel=0.15)
    assert ratio((3.0, 20.0)) == pytest.approx(1.0, abs=1e-4)  # cheek, far from eyes and mouth
