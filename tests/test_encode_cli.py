"""`python -m stylejax.encode` and `python -m stylejax.render` in subprocesses: --help, an end-to-end run on
12 frames of a real video (alignment, the four stages with a few steps each, --json, resume, paste-back), and
one-line errors (exit status 2, `error: ...`, no traceback) for what a user can get wrong.

The networks are the tiny random ones of `stylejax.demo` (tests/tiny_encoder.py): a random generator cannot
reproduce a real face, so the end-to-end run checks the plumbing, not the quality (tests/stages/test_encoder.py
checks that on a clip the generator can make).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import tiny_encoder
from conftest import FIXTURES, REPO

pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")

VIDEO = os.path.join(FIXTURES, "4491301_unaligned.mp4")  # a real face in a 1280x720 frame, 30 fps
FRAMES = 12
FEW_STEPS = ["--config", os.path.join(REPO, "configs", "encode_tiny.py"), f"--config.chunk_size={FRAMES}",
             "--config.invert.steps=8", "--config.head_pose.steps=4", "--config.attributes.steps=8"]


def cli(module, *args, cwd=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr[-2000:]
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.fixture(scope="module")
def nets_dir(tmp_path_factory):
    return tiny_encoder.save_networks(str(tmp_path_factory.mktemp("nets")))


@pytest.fixture(scope="module")
def noise_video(tmp_path_factory):
    """10 frames of 128x128 noise: a readable video without a face."""
    from stylejax.io.video import write_video

    path = str(tmp_path_factory.mktemp("noise") / "noise.mp4")
    rng = np.random.RandomState(0)
    write_video(path, (rng.randint(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(10)), fps=25.0)
    return path


def encode_args(nets, video, workdir, out):
    return ["--video", video, "--out", out, "--workdir", workdir, "--generator", nets["generator"],
            "--e4e", nets["e4e"], "--styleflow", nets["styleflow"], "--lpips", nets["lpips"]]


def test_help():
    for module, words in (("stylejax.encode", ["usage: python -m stylejax.encode", "--workdir", "--id-frame",
                                               "--config"]),
                          ("stylejax.render", ["usage: python -m stylejax.render", "--paste-back", "--side-by-side"])):
        r = cli(module, "--help")
        assert r.returncode == 0 and r.stderr == "", r.stderr
        for w in words:
            assert w in r.stdout


# ------------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    """The first FRAMES frames of the real 1280x720 fixture."""
    import itertools

    if not os.path.isfile(VIDEO):
        pytest.skip(f"{VIDEO} is absent")

    from stylejax.io.video import iter_frames, probe, write_video

    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    info = probe(VIDEO)
    frames = iter_frames(VIDEO, info)
    try:
        write_video(path, itertools.islice(frames, FRAMES), fps=info.fps)
    finally:
        frames.close()
    return path


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, short_video, nets_dir):
    pytest.importorskip("dlib")
    d = tmp_path_factory.mktemp("encode")
    out, workdir = str(d / "clip.enc"), str(d / "workdir")
    r = cli("stylejax.encode", *encode_args(nets_dir, short_video, workdir, out), *FEW_STEPS, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"out": out, "workdir": workdir, "stdout": r.stdout, "dir": d}


def test_encode_end_to_end(encoded):
    from stylejax.io.encoding import load_encoding

    summary = json.loads(encoded["stdout"].strip().splitlines()[-1])
    assert isinstance(summary, dict)
    assert (summary["frames"], summary["bytes_per_frame"], summary["devices"], summary["chunk_size"]) == \
        (FRAMES, 70, 1, FRAMES)
    assert set(summary["stage_seconds"]) == {"align", "invert", "select_id", "head_pose", "attributes", "evaluate"}
    assert summary["out"] == os.path.realpath(encoded["out"]) and len(summary["channels"]) == 32
    # a random 32 px generator and a real face: a finite PSNR far from a reconstruction (measured 13.6 dB)
    assert math.isfinite(summary["psnr_db"]) and 5.0 < summary["psnr_db"] < 30.0
    assert summary["message"].startswith(f"encoded {FRAMES} frames into ")
    enc = load_encoding(encoded["out"])
    assert (enc.num_frames, enc.resolution, enc.fps, enc.frame_size) == (FRAMES, 32, 30.0, (1280, 720))
    assert enc.quad.shape == (FRAMES, 4, 2)
    assert 0 <= summary["id_frame"] < FRAMES and enc.settings["id_frame"] == summary["id_frame"]
    assert np.load(os.path.join(encoded["workdir"], "align", "frames.npy"), mmap_mode="r").shape == (FRAMES, 32, 32, 3)


def file_contents(path):
    """(tensors, metadata) of a safetensors file (its bytes vary: the metadata's order is not fixed)."""
    import safetensors

    with safetensors.safe_open(path, "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_encode_rerun_resumes_and_keeps_the_output(encoded, short_video, nets_dir):
    args = encode_args(nets_dir, short_video, encoded["workdir"], encoded["out"])
    r = cli("stylejax.encode", *args, *FEW_STEPS)
    assert_one_line_error(r, "already exists; choose another path or pass --overwrite")
    before = file_contents(encoded["out"])
    r = cli("stylejax.encode", *args, *FEW_STEPS, "--overwrite", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    seconds = json.loads(r.stdout.strip().splitlines()[-1])["stage_seconds"]
    # every stage was finished: nothing is aligned or optimised again, and the encoding is the same
    assert max(seconds[s] for s in ("align", "invert", "select_id", "head_pose", "attributes")) < 1.0, seconds
    after = file_contents(encoded["out"])
    assert after[1] == before[1] and after[0].keys() == before[0].keys()
    for name in before[0]:
        np.testing.assert_array_equal(after[0][name], before[0][name])


def test_render_paste_back(encoded, short_video, tmp_path):
    from stylejax.io.encoding import load_encoding
    from stylejax.io.video import iter_frames, probe

    out = str(tmp_path / "pasted.mp4")
    r = cli("stylejax.render", encoded["out"], "--out", out, "--paste-back", short_video, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["frames"] == FRAMES
    info = probe(out)
    assert info.frame_size == (1280, 720) and info.fps == 30.0
    pasted, original = list(iter_frames(out, info)), list(iter_frames(short_video))
    assert len(pasted) == FRAMES
    quad = load_encoding(encoded["out"]).quad
    for t in (0, FRAMES - 1):
        diff = np.abs(pasted[t].astype(int) - original[t].astype(int))
        # outside the face the original frame is kept, up to H.264 re-encoding (measured 1.0 level)
        assert diff[:100, :100].mean() < 3.0
        # the face (around its crop's centre) is the random generator's rendering (measured ~60 levels off)
        x, y = np.round(quad[t].mean(axis=0)).astype(int)
        assert diff[y - 20:y + 20, x - 20:x + 20].mean() > 20.0


# ------------------------------------------------------------------------------------------------ errors

def test_missing_generator(nets_dir, noise_video, tmp_path):
    nets = dict(nets_dir, generator=str(tmp_path / "no-generator"))
    r = cli("stylejax.encode", *encode_args(nets, noise_video, str(tmp_path / "wd"), str(tmp_path / "x.enc")))
    assert_one_line_error(r, "no-generator: no such checkpoint directory", "python -m convert stylegan2")
    assert os.listdir(tmp_path) == []


def test_e4e_for_another_generator(nets_dir, noise_video, tmp_path):
    """An e4e built for a 64 px generator (10 W+ rows) with the 32 px one (8 rows)."""
    import dataclasses

    import jax

    from stylejax.io import checkpoint
    from stylejax.nets.e4e import E4E

    _, e4e, _, _ = tiny_encoder.networks()
    config = dataclasses.replace(e4e.config, n_styles=10)
    shapes = jax.eval_shape(lambda: E4E.init(config, jax.random.PRNGKey(0)))
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    checkpoint.save_network(E4E(config, zeros["params"]), str(tmp_path / "e4e64"))
    nets = dict(nets_dir, e4e=str(tmp_path / "e4e64"))
    r = cli("stylejax.encode", *encode_args(nets, noise_video, str(tmp_path / "wd"), str(tmp_path / "x.enc")))
    assert_one_line_error(r, "the e4e encoder makes W+ [10, 32] but the generator takes [8, 32] (32px): convert "
                             "the e4e built for this generator")
    assert sorted(os.listdir(tmp_path)) == ["e4e64"]


def test_video_without_a_face(nets_dir, noise_video, tmp_path):
    pytest.importorskip("dlib")
    r = cli("stylejax.encode", *encode_args(nets_dir, noise_video, str(tmp_path / "wd"), str(tmp_path / "x.enc")))
    assert_one_line_error(r, f"no face found in {os.path.abspath(noise_video)}", "(in any of its 10 frames)")
    assert not os.path.exists(tmp_path / "x.enc")


@pytest.fixture(scope="module")
def small_encoding(tmp_path_factory, nets_dir):
    """A valid 3-frame encoding made with the tiny generator (written directly: no encoder run needed)."""
    from stylejax.io.encoding import Encoding, save_encoding
    from stylejax.pipeline import fingerprint

    g, _, flow, _ = tiny_encoder.networks()
    path = str(tmp_path_factory.mktemp("encoding") / "small.enc")
    save_encoding(path, Encoding(
        id_latent=np.zeros((8, 32), np.float32), pose_deg=np.zeros((3, 3)), offsets=np.zeros((3, 1)),
        channels=("3_0",), fps=25.0, resolution=32, generator_fingerprint=fingerprint(g), pose_model="styleflow-rk4-8",
        cond_src=np.zeros(17, np.float32), styleflow_fingerprint=fingerprint(flow),
        settings={"networks": {"generator": nets_dir["generator"], "styleflow": nets_dir["styleflow"]}}))
    return path


def test_render_small_encoding(small_encoding, tmp_path):
    """The hand-made encoding renders (so the errors below are about what was changed)."""
    from stylejax.io.video import iter_frames

    r = cli("stylejax.render", small_encoding, "--out", str(tmp_path / "x.mp4"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(iter_frames(str(tmp_path / "x.mp4")))) == 3


def test_render_with_another_generator(small_encoding, nets_dir, tmp_path):
    import jax

    from stylejax.io import checkpoint
    from stylejax.pipeline import fingerprint

    g, _, _, _ = tiny_encoder.networks()
    other = type(g)(g.config, jax.tree_util.tree_map(lambda a: np.asarray(a) * 0.5, g.params), g.buffers)
    checkpoint.save_network(other, str(tmp_path / "other"))
    r = cli("stylejax.render", small_encoding, "--out", str(tmp_path / "x.mp4"), "--generator", tmp_path / "other")
    assert_one_line_error(r, f"was encoded with generator {fingerprint(g)}, this generator is {fingerprint(other)}: "
                             "render with the generator used to encode")
    assert not os.path.exists(tmp_path / "x.mp4")


def test_render_corrupt_encoding(tmp_path):
    path = tmp_path / "broken.enc"
    path.write_bytes(b"\x00" * 7 + b"this is not an encoding")
    r = cli("stylejax.render", path, "--out", str(tmp_path / "x.mp4"))
    assert_one_line_error(r, f"cannot read encoding {path}: not a safetensors file")
    assert not os.path.exists(tmp_path / "x.mp4")


def test_render_unsupported_format_version(small_encoding, tmp_path):
    import safetensors.numpy

    tensors, meta = file_contents(small_encoding)
    path = str(tmp_path / "future.enc")
    safetensors.numpy.save_file(tensors, path, metadata={**meta, "format_version": "3"})
    r = cli("stylejax.render", path, "--out", str(tmp_path / "x.mp4"))
    assert_one_line_error(r, "format version '3' is not supported: this stylejax reads version(s) 1, 2; upgrade "
                             "stylejax to read it")
