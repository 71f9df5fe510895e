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
             "--config.invert.steps=8", "--config.head_pose.steps=4", "--config.attributes.steps=8",
             "--config.render.face_metrics=False"]  # dlib on 32 px crops: tests/test_quality_metrics.py does faces


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
    assert (summary["frames"], summary["devices"], summary["chunk_size"], summary["motion_coding"]) == \
        (FRAMES, 1, FRAMES, "delta-zstd")
    assert 0 < summary["bytes_per_frame"] < 70  # the compact coding, side information included
    assert set(summary["stage_seconds"]) == {"align", "invert", "select_id", "head_pose", "attributes", "quantise",
                                             "evaluate"}
    # the report: one row a frame, and a page that inlines its images
    report = os.path.join(encoded["workdir"], "report")
    assert summary["report"] == os.path.join(os.path.realpath(report), "report.html")
    assert sorted(os.listdir(report)) == ["metrics.csv", "metrics.json", "metrics.png", "report.html",
                                          "side_by_side.mp4", "trajectories.png"]
    assert len(open(os.path.join(report, "metrics.csv")).read().splitlines()) == FRAMES + 1
    assert summary["out"] == os.path.realpath(encoded["out"]) and len(summary["channels"]) == 32
    # a random 32 px generator and a real face: a finite PSNR far from a reconstruction (measured 13.6 dB)
    assert math.isfinite(summary["psnr_db"]) and 5.0 < summary["psnr_db"] < 30.0
    assert summary["message"].startswith(f"encoded {FRAMES} frames into ")
    # the chunk size and why, per loop (here the user's --config.chunk_size for every loop)
    attributes = summary["chunks"]["attributes"]
    assert attributes["frames"] == FRAMES and attributes["why"].startswith(f"--config.chunk_size {FRAMES}")
    assert f"attributes {FRAMES} frames (--config.chunk_size {FRAMES}" in summary["message"]
    enc = load_encoding(encoded["out"])
    assert (enc.num_frames, enc.resolution, enc.fps, enc.frame_size) == (FRAMES, 32, 30.0, (1280, 720))
    assert enc.quad.shape == (FRAMES, 4, 2)
    assert 0 <= summary["id_frame"] < FRAMES and enc.settings["id_frame"] == summary["id_frame"]
    assert np.load(os.path.join(encoded["workdir"], "align", "frames.npy"), mmap_mode="r").shape == (FRAMES, 32, 32, 3)


def file_contents(path):
    """(tensors, metadata) of a safetensors file."""
    import safetensors

    with safetensors.safe_open(path, "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def tree_mtimes(path):
    """{relative path: modification time in ns} of every file under `path` but the report (which every encode
    writes anew from the saved encoding)."""
    return {rel: os.stat(os.path.join(path, rel)).st_mtime_ns
            for d, _, files in os.walk(path) for f in files
            if not (rel := os.path.relpath(os.path.join(d, f), path)).startswith("report" + os.sep)}


def test_encode_rerun_resumes_and_keeps_the_output(encoded, short_video, nets_dir):
    args = encode_args(nets_dir, short_video, encoded["workdir"], encoded["out"])
    r = cli("stylejax.encode", *args, *FEW_STEPS)
    assert_one_line_error(r, "already exists; choose another path or pass --overwrite")
    before = file_contents(encoded["out"])
    before_bytes = open(encoded["out"], "rb").read()
    written = tree_mtimes(encoded["workdir"])
    r = cli("stylejax.encode", *args, *FEW_STEPS, "--overwrite", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    # every stage was finished: nothing is aligned or optimised again (no stage file of the work directory
    # is written, created or removed), and the encoding is the same
    assert tree_mtimes(encoded["workdir"]) == written
    after = file_contents(encoded["out"])
    assert after[1] == before[1] and after[0].keys() == before[0].keys()
    for name in before[0]:
        np.testing.assert_array_equal(after[0][name], before[0][name])
    assert open(encoded["out"], "rb").read() == before_bytes  # metadata in a fixed order: the same file


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


# ------------------------------------------------------------------------------------------------ evaluate

def test_evaluate_with_paste_back_and_a_delta(encoded, short_video, tmp_path):
    import csv

    delta = tmp_path / "delta.bin"
    delta.write_bytes(b"\0" * 1200)
    out = tmp_path / "report"
    r = cli("stylejax.evaluate", encoded["out"], "--video", short_video, "--paste-back", "--delta", delta,
            "--out", out, "--no-faces", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["frames"] == FRAMES and summary["report"] == str(out / "report.html")
    # the aligned input cropped from the video through the encoding's quads is what encode measured against
    encode_summary = json.load(open(os.path.join(encoded["workdir"], "report", "metrics.json")))["summary"]
    # both crop the same frames through the same quads with the same resampler: the same PSNR to rounding
    assert summary["psnr_db"] == pytest.approx(encode_summary["psnr_db"], abs=0.05)
    assert summary["delta_bytes"] == 1200 and summary["delta_bytes_per_frame"] == pytest.approx(100.0)
    assert summary["bytes_per_frame"] == pytest.approx(encode_summary["bytes_per_frame"])
    # pasted into the 1280x720 frames: most of the frame is the original, so far closer than the face alone
    assert summary["paste_back"]["frame_psnr_db"] > summary["psnr_db"] + 5
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == FRAMES and {"paste_psnr_db", "paste_frame_psnr_db", "tlp"} <= set(rows[0])
    # a second run refuses to replace the report before measuring anything (encode's rerun replaces its own)
    again = cli("stylejax.evaluate", encoded["out"], "--video", short_video, "--out", out, "--no-faces")
    assert_one_line_error(again, "already exists; choose another path or pass --overwrite")


@pytest.mark.parametrize("args, words", [
    ([], ["give the input as --video IN.mp4"]),
    (["--aligned", "x.npy", "--video", "y.mp4"], ["give the input as --video IN.mp4"]),
    (["--aligned", "x.npy", "--paste-back"], ["--paste-back needs --video"]),
    (["--aligned", "x.npy", "--delta", "/nonexistent/delta"], ["--delta /nonexistent/delta: no such file"]),
])
def test_evaluate_errors(encoded, args, words):
    assert_one_line_error(cli("stylejax.evaluate", encoded["out"], *args), *words)


# ------------------------------------------------------------------------------------------------ outputs

def listing(d):
    """{name: bytes or link target} of a folder's entries (hidden ones too)."""
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        out[name] = ("link -> " + os.readlink(p)) if os.path.islink(p) else \
            (open(p, "rb").read() if os.path.isfile(p) else "dir")
    return out


def test_render_never_writes_onto_an_input(small_encoding, nets_dir, tmp_path):
    import shutil

    enc = str(tmp_path / "clip.enc")
    shutil.copy(small_encoding, enc)
    (tmp_path / "orig.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom")  # an mp4 input (its first bytes)
    before = listing(tmp_path)
    for args, what in (([enc, "--out", enc, "--overwrite"], "--out"),
                       ([enc, "--out", str(tmp_path / "x.mp4"), "--side-by-side", enc, "--overwrite"],
                        "--side-by-side"),
                       ([enc, "--out", str(tmp_path / "orig.mp4"), "--paste-back", str(tmp_path / "orig.mp4"),
                         "--overwrite"], "--out")):
        r = cli("stylejax.render", *args)
        assert_one_line_error(r, f"refusing to write the {what} ", "it is or contains the input")
        assert listing(tmp_path) == before  # the encoding is intact, nothing was created
    r = cli("stylejax.render", enc, "--out", str(tmp_path / "x.mp4"), "--side-by-side", str(tmp_path / "x.mp4"))
    assert_one_line_error(r, "are the same path or one holds the other; give each output its own path")
    r = cli("stylejax.render", enc, "--out", os.path.join(nets_dir["generator"], "x.mp4"))
    assert_one_line_error(r, "inside the input folder")
    assert listing(tmp_path) == before


def test_render_overwrite_replaces_only_a_video_and_never_through_a_link(small_encoding, tmp_path):
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("three years of work")
    os.symlink("thesis.txt", tmp_path / "out.mp4")
    before = listing(tmp_path)
    r = cli("stylejax.render", small_encoding, "--out", tmp_path / "out.mp4", "--overwrite")
    assert_one_line_error(r, f"the --out {tmp_path / 'out.mp4'} is a symbolic link (to thesis.txt); refusing to "
                             "write through it")
    r = cli("stylejax.render", small_encoding, "--out", thesis, "--overwrite")
    assert_one_line_error(r, f"refusing to replace {thesis}: it is not an mp4 video (--overwrite replaces only a "
                             "file of the kind this command writes)")
    assert listing(tmp_path) == before
    # an earlier video is replaced, as --overwrite says
    (tmp_path / "out.mp4").unlink()
    for _ in range(2):
        r = cli("stylejax.render", small_encoding, "--out", tmp_path / "out.mp4", "--overwrite")
        assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["out.mp4", "thesis.txt"]


def test_encode_checks_every_output_before_creating_anything(nets_dir, noise_video, tmp_path):
    import shutil

    video = str(tmp_path / "in.mp4")
    shutil.copy(noise_video, video)
    (tmp_path / "notes.txt").write_text("not an encoding")
    os.symlink("notes.txt", tmp_path / "link.enc")
    wd = str(tmp_path / "wd")
    before = listing(tmp_path)
    cases = [(video, [], "it is or contains the input"),  # the issue: refused, but wd had been created
             (str(tmp_path / "notes.txt"), ["--overwrite"], "it is not a stylejax encoding"),
             (str(tmp_path / "link.enc"), ["--overwrite"], "is a symbolic link (to notes.txt)"),
             (str(tmp_path / "nodir" / "x.enc"), [], "does not exist")]
    if os.path.isdir("/proc"):  # a place nobody can write, even root: refused before any work
        cases.append(("/proc/stylejax-test.enc", [], "cannot write the --out /proc/stylejax-test.enc"))
    for out, extra, words in cases:
        r = cli("stylejax.encode", *encode_args(nets_dir, video, wd, out), *extra)
        assert_one_line_error(r, words)
        assert listing(tmp_path) == before, out
    r = cli("stylejax.encode", *encode_args(nets_dir, video, str(tmp_path / "notes.txt"), str(tmp_path / "x.enc")))
    assert_one_line_error(r, "exists and is not a stylejax work directory")
    r = cli("stylejax.encode", *encode_args(nets_dir, video, nets_dir["generator"], str(tmp_path / "x.enc")))
    assert_one_line_error(r, "it is or contains the input")
    assert listing(tmp_path) == before


# ------------------------------------------------------------------------------------------------ decoding

def edited_copy(small_encoding, path, settings=None, drop=(), **meta):
    """A version-1 copy of the small encoding (its flat metadata holds every field, and its settings the
    identity's StyleFlow condition and RK4 steps) with metadata fields / settings changed, written with the
    safetensors library past save_encoding's checks, as a hand-edited or hostile file would be."""
    import safetensors.numpy

    from stylejax.io.encoding import load_encoding, save_encoding

    v1 = str(path) + ".v1"
    save_encoding(v1, load_encoding(small_encoding), version="1")
    tensors, old = file_contents(v1)
    os.remove(v1)
    new = {**old, **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}}
    s = {k: v for k, v in json.loads(old["settings"]).items() if k not in drop}
    new["settings"] = json.dumps({**s, **(settings or {})})
    if "id_latent_rows" in meta:
        del new["id_latent_rows"]
        tensors["id_latent"] = tensors["id_latent"][:meta["id_latent_rows"]]
    if "channels" in meta:
        tensors["frames"] = np.zeros((3, 3 + len(meta["channels"])), np.float16)
    safetensors.numpy.save_file(tensors, str(path), metadata=new)
    return str(path)


BAD_ENCODINGS = {
    # does not fit the networks (stylejax.decoder.check_fits)
    "no-such-layer": (dict(channels=["99_0"]), "does not fit the networks: channel '99_0' names StyleSpace layer 99, "
                                               "the generator has layers 0-"),
    "no-such-channel": (dict(channels=["3_4000"]), "channel '3_4000' names channel 4000 of StyleSpace layer 3, which "
                                                   "has "),
    "no-cond-src": (dict(drop=["cond_src"]), "does not fit the networks: it has no 'cond_src'"),
    "short-cond-src": (dict(settings={"cond_src": [0.0] * 5}), "cond_src must be 17 finite values (StyleFlow's "
                                                               "condition), got shape [5]"),
    "fewer-rows": (dict(id_latent_rows=7), "its identity latent has 7 W+ rows of 32, the generator takes 8 of 32"),
    # settings out of bounds or contradicting the pose model (stylejax.io.encoding)
    "rk4-1e9": (dict(settings={"rk4_steps": 1e9}), "settings 'rk4_steps' = 1000000000.0 is not a whole number of RK4 "
                                                   "steps in [1, 64]"),
    "rk4-1e8": (dict(settings={"rk4_steps": 10 ** 8}), "settings 'rk4_steps' = 100000000 is not a whole number"),
    "rk4-negative": (dict(settings={"rk4_steps": -1}), "settings 'rk4_steps' = -1 is not a whole number"),
    "rk4-contradicts": (dict(settings={"rk4_steps": 16}), "settings 'rk4_steps' = 16 contradicts pose_model "
                                                          "'styleflow-rk4-8'"),
    "pose-model-1e8": (dict(pose_model="styleflow-rk4-100000000", drop=["rk4_steps"]),
                       "pose_model 'styleflow-rk4-100000000' asks for 100000000 RK4 steps, outside [1, 64]"),
    "pose-model-other": (dict(pose_model="stylegan-ada-pose"), "pose_model 'stylegan-ada-pose' is not "
                                                                "'styleflow-rk4-N'"),
    "noise-mode": (dict(settings={"noise_mode": "loud"}), "settings 'noise_mode' = 'loud' is not one of const, "
                                                          "random, none"),
    "networks": (dict(settings={"networks": {"generator": 5, "styleflow": "sf"}}),
                 "settings 'networks' is not a dict of checkpoint paths"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENCODINGS))
def test_render_refuses_an_encoding_that_does_not_fit(small_encoding, tmp_path, case):
    """Each was a valid file that ended in a traceback (or, for rk4_steps, ran for hours, or rendered without
    the pose edit): now one line, before anything is written."""
    edit, words = BAD_ENCODINGS[case]
    path = edited_copy(small_encoding, tmp_path / "bad.enc", **edit)
    r = cli("stylejax.render", path, "--out", tmp_path / "x.mp4")
    assert_one_line_error(r, words)
    assert os.listdir(tmp_path) == ["bad.enc"]


def test_check_fits_is_what_every_decoder_runs(small_encoding, tmp_path):
    """iter_renders (render, the encode metrics, the demo) refuses a misfit before computing anything."""
    from stylejax.decoder import DecodeError, iter_renders
    from stylejax.io.encoding import load_encoding

    g, _, flow, _ = tiny_encoder.networks()
    enc = load_encoding(edited_copy(small_encoding, tmp_path / "bad.enc", channels=["99_0"]))
    with pytest.raises(DecodeError, match="this encoding does not fit the networks: channel '99_0'"):
        next(iter_renders(enc, g, flow))


def test_encode_refuses_unbounded_rk4_steps(nets_dir, noise_video, tmp_path):
    """The encoding records the pose edit's RK4 steps for rendering: a value no encoding may carry is refused
    before any work, not after it (when the encoding is assembled)."""
    r = cli("stylejax.encode", *encode_args(nets_dir, noise_video, str(tmp_path / "wd"), str(tmp_path / "x.enc")),
            "--config.head_pose.rk4_steps=100000000")
    assert_one_line_error(r, "--config.head_pose.rk4_steps must be a whole number in [1, 64], got 100000000")
    assert os.listdir(tmp_path) == []
