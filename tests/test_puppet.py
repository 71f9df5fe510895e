"""`python -m stylejax.puppet` (docs/puppet.md): the transfer against references computed here from the model's
parts (the generator, StyleFlow's own edit, StyleSpace's channel edit), `render` agreeing with a face driven by
its own encoding, and one-line errors. Tiny random networks (tests/tiny_encoder.py), CPU.

Numbers: the driven frames and the references are float32 images about [-1, 1] computed by different programs
(batch shapes, jit boundaries), which round differently by ~1e-6; the smallest change a transfer bug makes
here (B rendered with A's source condition instead of B's) is 0.02. The tolerance is 1e-4.
"""
import json
import os

import numpy as np
import pytest

import tiny_encoder
from conftest import FIXTURES, REPO

pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")

T = 6
ATOL = 1e-4  # see the module docstring
TINY_CONFIG = os.path.join(REPO, "configs", "encode_tiny.py")


def make_encoding(g, flow, paths, seed, with_video_geometry=False):
    """An encoding of the tiny generator with a known identity (latent, source condition) and smooth motion."""
    import jax.numpy as jnp

    from stylejax import demo
    from stylejax.align.geometry import quad_from_frame
    from stylejax.io.encoding import Encoding
    from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX
    from stylejax.nets.stylespace import flat_index_to_channel
    from stylejax.stages.attributes import channel_pool
    from stylejax.stages.base import fingerprint

    rng = np.random.default_rng(seed)
    id_latent = np.asarray(g.mapping(jnp.asarray(rng.standard_normal((1, g.config.z_dim)), jnp.float32), 0.7))[0]
    cond = np.zeros(17, np.float32)
    cond[:9] = rng.normal(0, 0.5, 9)
    cond[YAW_INDEX], cond[PITCH_INDEX] = rng.uniform(-10, 10), rng.uniform(-5, 5)
    t = np.arange(T) / T
    pose = np.stack([10 * np.sin(2 * np.pi * t + seed), 5 * np.cos(2 * np.pi * t), 4 * np.sin(2 * np.pi * t)], 1)
    channels = [flat_index_to_channel(int(i), g.config)
                for i in np.sort(rng.choice(channel_pool(g.config), 32, replace=False))]
    offsets = 0.7 * np.sin(2 * np.pi * t[:, None] * rng.choice([1, 2], 32) + rng.uniform(0, 6, 32))
    geometry = {}
    if with_video_geometry:  # B's head in an 80x64 video: a 40 px crop that drifts and rolls with the pose
        roll_abs = np.radians(pose[:, 2] + 3.0)
        c = np.stack([38 + 2 * np.arange(T), 30 + np.arange(T)], 1).astype(np.float64)
        x = 20 * np.stack([np.cos(roll_abs), np.sin(roll_abs)], 1)
        geometry = {"quad": quad_from_frame(c, x), "frame_size": (80, 64)}
    return Encoding(id_latent=id_latent, pose_deg=pose, offsets=offsets, channels=tuple(channels),
                    offset_scale=demo.truth_scale(g, channels, samples=2000), fps=25.0,
                    resolution=g.config.resolution, generator_fingerprint=fingerprint(g), pose_model="styleflow-rk4-8",
                    cond_src=cond, styleflow_fingerprint=fingerprint(flow), settings={"networks": paths}, **geometry)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Driver A and identity B (different latents, source conditions, channels and motion), saved; B has a
    video of its own for paste-back."""
    from stylejax.io.encoding import load_encoding, save_encoding
    from stylejax.io.video import write_video

    d = tmp_path_factory.mktemp("puppet")
    os.makedirs(d / "nets")
    paths = tiny_encoder.save_networks(str(d / "nets"))
    g, _, flow, _ = tiny_encoder.networks()
    files = {}
    for name, seed, video in (("A", 1, False), ("B", 2, True)):
        files[f"{name}.enc"] = str(d / f"{name}.enc")
        save_encoding(files[f"{name}.enc"], make_encoding(g, flow, paths, seed, video))
    rng = np.random.RandomState(0)
    files["B.mp4"] = str(d / "B.mp4")
    yy, xx = np.mgrid[0:64, 0:80]
    write_video(files["B.mp4"], (np.clip(np.stack([xx * 3, yy * 4, (xx + yy + 20 * t) % 256], -1)
                                         + rng.randint(0, 20, (64, 80, 3)), 0, 255).astype(np.uint8)
                                 for t in range(T + 2)), fps=25.0)
    return dict(files, dir=d, nets=paths, g=g, flow=flow, A=load_encoding(files["A.enc"]), B=load_encoding(files["B.enc"]))


def run_cli(module, argv, capsys):
    """A command's main in this process: (exit status, stdout, stderr). sys.argv holds the arguments too:
    ml_collections finds `--config.x=...` overrides there."""
    import sys

    capsys.readouterr()
    argv, saved = [str(a) for a in argv], sys.argv
    sys.argv = [module.__name__] + argv
    try:
        status = module.main(argv)
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return status, out, err


def decoded(path):
    from stylejax.io.video import iter_frames

    return np.stack(list(iter_frames(path)))


def driven_images(driver, identity, g, flow):
    from stylejax import puppet
    from stylejax.decoder import iter_renders

    driven = puppet.drive(driver, identity.identity())
    return np.concatenate([img for _, _, img in iter_renders(driven, g, flow)])


def with_motion(enc, pose=None, offsets=None):
    import dataclasses

    return dataclasses.replace(enc, pose_deg=np.zeros_like(enc.pose_deg) if pose is None else pose,
                               offsets=np.zeros_like(enc.offsets) if offsets is None else offsets)


# ------------------------------------------------------------------------------------------------ the transfer

@pytest.mark.parametrize("paste", [False, True], ids=["level", "paste-back"])
def test_driving_b_with_its_own_encoding_renders_what_render_renders(pair, capsys, paste):
    from stylejax import puppet, render

    d, extra = pair["dir"], ["--paste-back", pair["B.mp4"]] if paste else []
    tag = "paste" if paste else "level"
    status, _, err = run_cli(render, [pair["B.enc"], "--out", d / f"render-{tag}.mp4", *extra], capsys)
    assert status == 0, err
    status, _, err = run_cli(puppet, ["--driver", pair["B.enc"], "--identity", pair["B.enc"], "--out", d / f"puppet-{tag}.mp4",
                                      *extra], capsys)
    assert status == 0, err
    a, b = decoded(d / f"render-{tag}.mp4"), decoded(d / f"puppet-{tag}.mp4")
    assert a.shape == b.shape == ((T, 64, 80, 3) if paste else (T, 32, 32, 3))
    np.testing.assert_array_equal(a, b)  # the same frames through the same encoder: the same bytes decoded


def test_a_still_driver_renders_b_identity_frame_in_every_frame(pair):
    import jax.numpy as jnp

    g, flow, B = pair["g"], pair["flow"], pair["B"]
    still = with_motion(pair["A"])  # A's identity frame in every frame: motion 0
    images = driven_images(still, B, g, flow)
    identity_frame = np.asarray(g.synthesize(jnp.asarray(B.id_latent)[None]))[0]  # B's latent, no edit
    assert images.shape == (T,) + identity_frame.shape
    np.testing.assert_allclose(images, np.broadcast_to(identity_frame, images.shape), rtol=0, atol=ATOL)


def test_a_yaw_only_driver_renders_b_own_styleflow_pose_edit(pair):
    import jax.numpy as jnp

    from stylejax.decoder import POSE_ROWS
    from stylejax.nets.styleflow import YAW_INDEX

    g, flow, A, B = pair["g"], pair["flow"], pair["A"], pair["B"]
    yaw = np.array([-15, -5, 0, 7, 15, 3], np.float32)
    pose = np.zeros_like(A.pose_deg)
    pose[:, 0] = yaw
    images = driven_images(with_motion(A, pose=pose), B, g, flow)
    # StyleFlow's own edit of B's identity, written out here: rows 0-3 of B's latent through the flow from B's
    # source condition to the same condition with its yaw moved, R(F(w, c_B), c_B + yaw e_yaw), RK4 as B's
    # pose model says (8 steps); the decoder's round-trip-exact form differs from it by the RK4 round trip,
    # measured 7e-7 in the latents and 5e-7 in the images
    steps = B.rk4_steps
    rows = jnp.broadcast_to(jnp.asarray(B.id_latent)[POSE_ROWS], (T,) + B.id_latent[POSE_ROWS].shape)
    c = jnp.broadcast_to(jnp.asarray(B.cond_src), (T, 17))
    edited = flow.reverse(flow.forward(rows, c, solver="rk4", steps=steps), c.at[:, YAW_INDEX].add(yaw),
                          solver="rk4", steps=steps)
    ws = jnp.broadcast_to(jnp.asarray(B.id_latent), (T,) + B.id_latent.shape).at[:, POSE_ROWS].set(edited)
    expected = np.asarray(g.synthesize(ws))
    np.testing.assert_allclose(images, expected, rtol=0, atol=ATOL)
    assert np.abs(expected - expected[2:3]).max() > 0.1  # the yaw edits change the image (frame 2 is 0°)


def test_driver_offsets_go_to_driver_channels_of_b_styles(pair):
    import jax.numpy as jnp

    from stylejax.nets.stylespace import edit_channels

    g, flow, A, B = pair["g"], pair["flow"], pair["A"], pair["B"]
    assert set(A.channels) != set(B.channels)
    images = driven_images(with_motion(A, offsets=A.offsets), B, g, flow)
    # StyleSpace's channel edit (stylespace.edit_channels) of B's identity styles by A's offsets in style units
    styles = g.styles_from_ws(jnp.broadcast_to(jnp.asarray(B.id_latent), (T,) + B.id_latent.shape))
    expected = np.asarray(g.synthesize_from_styles(edit_channels(styles, A.channels, A.offsets * A.offset_scale,
                                                                 g.config)))
    np.testing.assert_allclose(images, expected, rtol=0, atol=ATOL)


# ------------------------------------------------------------------------------------------------ errors

def assert_one_line_error(status, err, *words):
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


def test_a_driver_of_another_generator_is_refused(pair, capsys):
    import dataclasses

    from stylejax import puppet
    from stylejax.io.encoding import save_encoding

    other = str(pair["dir"] / "other.enc")
    save_encoding(other, dataclasses.replace(pair["A"], generator_fingerprint="f" * 16))
    out = pair["dir"] / "never.mp4"
    status, _, err = run_cli(puppet, ["--driver", other, "--identity", pair["B.enc"], "--out", out], capsys)
    assert_one_line_error(status, err, f"the driver {other} was encoded with generator {'f' * 16}",
                          f"the identity {pair['B.enc']} with generator {pair['B'].generator_fingerprint}")
    assert not out.exists()


def test_a_corrupt_driver_is_refused(pair, capsys):
    from stylejax import puppet

    bad = pair["dir"] / "corrupt.enc"
    data = open(pair["A.enc"], "rb").read()
    bad.write_bytes(data[:len(data) // 2])
    status, _, err = run_cli(puppet, ["--driver", bad, "--identity", pair["B.enc"], "--out", pair["dir"] / "x.mp4"],
                             capsys)
    assert_one_line_error(status, err, f"cannot read encoding {bad}: truncated")


def test_an_image_without_a_face_is_refused(pair, capsys, tmp_path):
    import cv2

    from stylejax import puppet

    image = str(tmp_path / "wall.png")
    cv2.imwrite(image, np.full((256, 256, 3), 128, np.uint8))
    argv = ["--driver", pair["A.enc"], "--identity", image, "--out", tmp_path / "x.mp4"]
    status, _, err = run_cli(puppet, argv, capsys)
    assert_one_line_error(status, err, f"--identity {image} is an image", "pass --workdir DIR")
    status, _, err = run_cli(puppet, argv + ["--workdir", tmp_path / "work"], capsys)
    assert_one_line_error(status, err, f"no face found in {image}")
    assert not (tmp_path / "x.mp4").exists()


# ------------------------------------------------------------------------------------------------ a real face

def test_a_real_face_image_is_driven(pair, capsys, tmp_path, fixtures_dir):
    """A face image is aligned, inverted and given its landmark pose as its identity pose; the run resumes."""
    import cv2

    from stylejax import puppet
    from stylejax.io.encoding import load_encoding
    from stylejax.io.video import iter_frames
    from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX

    frames = iter_frames(os.path.join(fixtures_dir, "8775004_aligned.mp4"))
    face = cv2.resize(next(frames), (256, 256), interpolation=cv2.INTER_AREA)
    frames.close()
    image = str(tmp_path / "face.png")
    cv2.imwrite(image, face[..., ::-1])
    work = tmp_path / "work"
    argv = ["--driver", pair["A.enc"], "--identity", image, "--workdir", work, "--out", tmp_path / "driven.mp4",
            "--side-by-side", tmp_path / "sbs.mp4", "--config", TINY_CONFIG, "--config.invert.steps=4",
            "--config.head_pose.condition=zeros", "--json"]
    status, out, err = run_cli(puppet, argv, capsys)
    assert status == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["identity_kind"] == "image" and summary["frames"] == T
    assert decoded(tmp_path / "driven.mp4").shape == (T, 32, 32, 3)
    assert decoded(tmp_path / "sbs.mp4").shape == (T, 32, 64, 3)  # A's re-synthesis | driven (no aligned input)
    ident = json.load(open(work / "select_id" / "id.json"))
    calibration = json.load(open(work / "head_pose" / "pose_calibration.json"))
    enc = load_encoding(str(work / puppet.IDENTITY_ENCODING))
    assert enc.num_frames == 1 and ident["frame"] == 0
    # the identity pose: the image's landmark pose, mapped by the recorded landmark -> StyleFlow factors (the
    # random tiny generator shows no face, so they fall back to +1)
    assert calibration["method"] == "fallback" and calibration["yaw_factor"] == calibration["pitch_factor"] == 1.0
    lm_yaw, lm_pitch = ident["landmark_pose_deg"][:2]
    assert abs(lm_yaw) < 20 and abs(lm_pitch) < 20  # a real, near-frontal face was measured
    assert enc.cond_src[YAW_INDEX] == pytest.approx(lm_yaw, abs=1e-4)
    assert enc.cond_src[PITCH_INDEX] == pytest.approx(lm_pitch, abs=1e-4)
    markers = {s: os.stat(work / s / "done.json").st_mtime_ns for s in ("align", "invert", "select_id", "head_pose")}
    status, _, err = run_cli(puppet, argv + ["--overwrite"], capsys)  # resumes: no stage runs again
    assert status == 0, err
    assert {s: os.stat(work / s / "done.json").st_mtime_ns for s in markers} == markers
