"""`render`: the roll it re-applies (against an independent rotation and the alignment's convention), the
side-by-side video, paste-back errors, the output rules of both outputs, and the StyleFlow fingerprint check.

Encodings are written directly (no encoder run) for the tiny networks of tests/tiny_encoder.py.
"""
import os

import numpy as np
import pytest

import tiny_encoder
from stylejax.errors import UserError
from stylejax.io.video import VideoError, iter_frames, probe, write_video
from stylejax.stages.render import apply_roll, render_video

pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")
pytest.importorskip("cv2")

SIZE = 32


def rotate_clockwise(image, deg):
    """An independent rotation: output pixel q samples the input at R(-deg) q about the centre, bilinear, where
    R(deg) turns (x right, y down) clockwise on screen."""
    from scipy.ndimage import map_coordinates

    s = image.shape[0]
    a = np.radians(deg)
    rows, cols = np.mgrid[0:s, 0:s].astype(np.float64)
    x, y = cols - (s - 1) / 2, rows - (s - 1) / 2
    src_x = np.cos(a) * x + np.sin(a) * y + (s - 1) / 2  # R(-deg) (x, y)
    src_y = -np.sin(a) * x + np.cos(a) * y + (s - 1) / 2
    out = [map_coordinates(image[..., c].astype(np.float64), [src_y, src_x], order=1, mode="nearest")
           for c in range(image.shape[-1])]
    return np.stack(out, -1)


def dots(size, points, sigma=1.2):
    """uint8 [size, size, 3]: Gaussian dots at (x, y) points on black."""
    rows, cols = np.mgrid[0:size, 0:size]
    img = sum(np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma ** 2)) for x, y in points)
    return np.repeat((np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)


def centroids(image, boxes):
    out = []
    for (x0, y0, x1, y1) in boxes:
        w = image[y0:y1, x0:x1, 0].astype(np.float64)
        rows, cols = np.mgrid[y0:y1, x0:x1]
        out.append([(w * cols).sum() / w.sum(), (w * rows).sum() / w.sum()])
    return np.array(out)


# ------------------------------------------------------------------------------------------------ roll

def test_positive_roll_turns_clockwise_on_screen():
    s = 65
    img = dots(s, [(52.0, 32.0)])  # 20 px right of the centre (32, 32)
    out = apply_roll(img, 30.0)
    (x, y), = centroids(out, [(0, 0, s, s)])
    # clockwise on screen with y down: right of the centre moves down, to (32 + 20 cos 30°, 32 + 20 sin 30°)
    np.testing.assert_allclose([x, y], [32 + 20 * np.cos(np.radians(30)), 32 + 20 * np.sin(np.radians(30))],
                               atol=0.2)
    assert apply_roll(img, 0.0) is img


def test_rendered_roll_is_the_alignments_roll():
    """A level crop's eye line, rolled by render, has the roll that alignment measures (geometry.roll_degrees
    of the eye-to-eye vector)."""
    from stylejax.align.geometry import roll_degrees

    s = 65
    img = dots(s, [(20.0, 32.0), (44.0, 32.0)])
    for roll in (-14.0, 9.0):
        out = apply_roll(img, roll)
        left, right = centroids(out, [(0, 0, 32, s), (33, 0, s, s)])
        assert float(roll_degrees(right - left)) == pytest.approx(roll, abs=0.3)


def make_encoding(path, frames, roll_deg=None, quad=None, frame_size=None, flow_fp=None):
    """Writes a valid encoding of the tiny generator with `frames` frames (pose 0 except the roll)."""
    from stylejax.io.encoding import Encoding, save_encoding
    import jax.numpy as jnp

    from stylejax.pipeline import fingerprint

    g, _, flow, _ = tiny_encoder.networks()
    id_latent = np.asarray(g.mapping(jnp.asarray(np.random.RandomState(0).randn(1, g.config.z_dim), jnp.float32),
                                     truncation_psi=0.5))[0]
    pose = np.zeros((frames, 3), np.float32)
    if roll_deg is not None:
        pose[:, 2] = roll_deg
    save_encoding(path, Encoding(
        id_latent=id_latent, pose_deg=pose, offsets=np.zeros((frames, 1), np.float32), channels=("3_0",), fps=25.0,
        resolution=SIZE, generator_fingerprint=fingerprint(g), pose_model="styleflow-rk4-8",
        cond_src=np.zeros(17, np.float32), styleflow_fingerprint=flow_fp or fingerprint(flow),
        quad=quad, frame_size=frame_size))
    return path


def load(path):
    from stylejax.io.encoding import load_encoding

    g, _, flow, _ = tiny_encoder.networks()
    return load_encoding(path), g, flow


def read(path):
    return np.stack(list(iter_frames(path)))


def test_render_re_applies_the_encodings_roll_clockwise(tmp_path):
    enc, g, flow = load(make_encoding(str(tmp_path / "roll.enc"), 3, roll_deg=[0.0, 20.0, -20.0]))
    out = str(tmp_path / "roll.mp4")
    assert render_video(enc, g, flow, out) == 3
    frames = read(out).astype(np.float64)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    disc = np.hypot(rows - 15.5, cols - 15.5) < 11  # away from the corners the rotation fills in
    err = lambda a, b: float(np.abs(a - b)[disc].mean())
    for t, roll in ((1, 20.0), (2, -20.0)):
        right, wrong = err(frames[t], rotate_clockwise(frames[0], roll)), err(frames[t], rotate_clockwise(frames[0], -roll))
        # the same turn: what remains is H.264 (crf 16) and bicubic vs bilinear resampling of a 32 px texture
        assert right < 0.4 * wrong, (t, right, wrong)


# ------------------------------------------------------------------------------------------------ side by side

def test_side_by_side_is_input_rendering_and_error(tmp_path):
    enc, g, flow = load(make_encoding(str(tmp_path / "sbs.enc"), 2))
    out, sbs = str(tmp_path / "out.mp4"), str(tmp_path / "sbs.mp4")
    render_video(enc, g, flow, out)
    rendered = read(out)
    aligned = np.stack([rendered[0], 255 - rendered[1]])  # frame 0 as rendered, frame 1 far from it
    os.remove(out)
    assert render_video(enc, g, flow, out, side_by_side=sbs, aligned=aligned) == 2
    panels = read(sbs).astype(np.float64)
    assert panels.shape == (2, SIZE, 3 * SIZE, 3) and probe(sbs).fps == 25.0
    left, middle, right = panels[..., :SIZE, :], panels[..., SIZE:2 * SIZE, :], panels[..., 2 * SIZE:, :]
    # H.264 at crf 16 on random 32 px textures: a few levels of error (measured about 2)
    assert np.abs(left - aligned).mean() < 6 and np.abs(middle - read(out)).mean() < 6
    # error map: dark where input and rendering agree, bright where they do not
    assert right[0].mean() < 15 and right[1].mean() > 60


# ------------------------------------------------------------------------------------------------ output rules

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    return load(make_encoding(str(d / "small.enc"), 2)), str(d / "small.enc")


def test_side_by_side_follows_the_output_rules(small, tmp_path):
    (enc, g, flow), enc_path = small
    out, sbs = str(tmp_path / "out.mp4"), str(tmp_path / "sbs.mp4")
    frames = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    (tmp_path / "sbs.mp4").write_bytes(b"someone's video")
    with pytest.raises(UserError) as e:
        render_video(enc, g, flow, out, side_by_side=sbs, aligned=frames)
    assert str(e.value) == (f"the --side-by-side {os.path.realpath(sbs)} already exists; choose another path or pass "
                            "--overwrite")
    with pytest.raises(UserError) as e:
        render_video(enc, g, flow, out, side_by_side=out, aligned=frames)
    assert str(e.value).startswith(f"the --side-by-side {os.path.realpath(out)} and the --out {os.path.realpath(out)} "
                                   "are the same path")
    with pytest.raises(UserError) as e:
        render_video(enc, g, flow, out, side_by_side=enc_path, aligned=frames, overwrite=True, inputs=[enc_path])
    assert "refusing to write the --side-by-side" in str(e.value) and "it is or contains the input" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["sbs.mp4"] and (tmp_path / "sbs.mp4").read_bytes() == b"someone's video"
    assert os.path.getsize(enc_path) > 0 and load(enc_path)[0].num_frames == 2


def test_out_never_replaces_the_encoding(small):
    (enc, g, flow), enc_path = small
    before = open(enc_path, "rb").read()
    with pytest.raises(UserError) as e:
        render_video(enc, g, flow, enc_path, overwrite=True, inputs=[enc_path])
    assert "refusing to write the --out" in str(e.value)
    assert open(enc_path, "rb").read() == before


# ------------------------------------------------------------------------------------------------ paste-back

@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A 64x64, 2-frame video to paste into."""
    path = str(tmp_path_factory.mktemp("orig") / "orig.mp4")
    write_video(path, [np.full((64, 64, 3), v, np.uint8) for v in (60, 90)], fps=25.0)
    return path


QUAD = np.array([[16, 16], [16, 48], [48, 48], [48, 16]], np.float32) - 0.5


def test_paste_back_errors(tmp_path, original):
    cases = [
        (dict(frames=2), "this encoding has no alignment transforms: paste-back needs an encoding made from a video "
                         "with `python -m stylejax.encode --video`"),
        (dict(frames=2, quad=np.stack([QUAD] * 2), frame_size=(80, 64)),
         f"--paste-back {original} is 64x64 but the encoding was made from a 80x64 video"),
        (dict(frames=3, quad=np.stack([QUAD] * 3), frame_size=(64, 64)),
         f"--paste-back {original} has fewer frames (2) than the encoding (3)"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        d = tmp_path / str(i)
        d.mkdir()
        enc, g, flow = load(make_encoding(str(d / "x.enc"), **kwargs))
        out = d / "pasted.mp4"
        with pytest.raises(VideoError) as e:
            render_video(enc, g, flow, str(out), paste_back=original, side_by_side=str(d / "sbs.mp4"),
                         aligned=np.zeros((kwargs["frames"], SIZE, SIZE, 3), np.uint8))
        assert str(e.value) == message
        assert os.listdir(d) == ["x.enc"]  # no output, not even a partial one
    # the last encoding pastes into a video as long as itself
    long = str(tmp_path / "orig3.mp4")
    write_video(long, [np.full((64, 64, 3), v, np.uint8) for v in (60, 90, 120)], fps=25.0)
    assert render_video(enc, g, flow, str(tmp_path / "ok.mp4"), paste_back=long) == 3
    pasted = read(str(tmp_path / "ok.mp4")).astype(int)
    assert np.abs(pasted[:, :8, :8] - np.array([60, 90, 120])[:, None, None, None]).max() <= 3  # outside the face


# ------------------------------------------------------------------------------------------------ networks

def test_render_refuses_another_styleflow(tmp_path):
    import jax

    from stylejax.io import checkpoint
    from stylejax.pipeline import fingerprint
    from stylejax.render import load_for_render

    (tmp_path / "nets").mkdir()
    nets = tiny_encoder.save_networks(str(tmp_path / "nets"))
    _, _, flow, _ = tiny_encoder.networks()
    other = type(flow)(flow.config, jax.tree_util.tree_map(lambda a: np.asarray(a) * 0.9, flow.params))
    checkpoint.save_network(other, str(tmp_path / "other"))
    path = make_encoding(str(tmp_path / "x.enc"), 2)
    enc, _, _ = load_for_render(path, nets["generator"], nets["styleflow"])  # the one it was made with
    assert enc.num_frames == 2
    with pytest.raises(UserError) as e:
        load_for_render(path, nets["generator"], str(tmp_path / "other"))
    assert str(e.value) == (f"encoding {path} was made with StyleFlow {fingerprint(flow)}, {tmp_path / 'other'} is "
                            f"{fingerprint(other)}: render with the StyleFlow used to encode")
