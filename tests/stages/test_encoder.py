"""The encoder (invert, select_id, head_pose, attributes) on the synthetic clip of `stylejax.demo`, whose answer
is known: closed-loop recovery from the saved encoding; runs that must agree (chunk sizes, 1 vs 4 devices on
another CPU's numerics, runs resumed after a stage or inside a chunk); the encoding's round trip; non-finite
losses.

Cost on 2 CPU cores, about 3 min: the networks ~20 s, the closed loop ~55 s; every other encode runs a few
optimiser steps, so its time is compilation (~10 s a stage): the comparison runs share three module-scoped
encodes, and the 4-device run compiles in a background process meanwhile.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import numerics
import tiny_encoder
from conftest import REPO
from stylejax import demo, optimize, pipeline
from stylejax.io.encoding import load_encoding
from stylejax.optimize import NonFiniteLossError, Optimiser

# the video writer forks ffmpeg after JAX started; harmless here (nothing of JAX runs in the child)
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")

CLOSED_LOOP_FRAMES = 8  # one period of the demo's pose and offset curves
FRAMES = 10  # comparison runs: chunks of 4 are 4, 4 and a padded 2
STAGES = ("invert", "select_id", "head_pose", "attributes")


def quiet(msg):
    pass


def truth_and_frames(num_frames, rk4_steps=8):
    g, _, flow, _ = tiny_encoder.networks()
    truth = demo.ground_truth(g, flow, num_frames)
    return truth, demo.synthesise(g, flow, *truth, rk4_steps)


class Recorder:
    """Wraps the optimiser: records the stage of each optimised chunk and counts the traces of the optimiser
    steps (each trace is one compilation); optionally raises KeyboardInterrupt (Ctrl-C) right after the n-th
    chunk of a stage was optimised, before its results are written or the chunk is marked."""

    last = None  # the latest instance (a run that raised leaves no other handle on it)

    def __init__(self, monkeypatch, interrupt=None):
        self.stages, self.traces = [], 0
        Recorder.last = self
        run, make_step = Optimiser.run, optimize.make_step

        def recording_run(opt, *args, **kwargs):
            out = run(opt, *args, **kwargs)
            stage = kwargs.get("stage")
            self.stages.append(stage)
            if interrupt == (stage, self.stages.count(stage)):
                raise KeyboardInterrupt
            return out

        def counting_make_step(*args, **kwargs):
            step = make_step(*args, **kwargs)

            def traced(*a):
                self.traces += 1  # Python runs only while jax traces the step
                return step(*a)
            return traced

        monkeypatch.setattr(Optimiser, "run", recording_run)
        monkeypatch.setattr(optimize, "make_step", counting_make_step)


def float16_ulps(a, b):
    """|a - b| in units of the float16 spacing at the larger magnitude (encodings store frames as float16)."""
    scale = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
    return np.abs(a - b) / scale


STAGE_ARRAYS = (("invert", "ws.npy"), ("select_id", "id_latent.npy"), ("head_pose", "cond_src.npy"),
                ("head_pose", "pose.npy"), ("head_pose", "ws_pose.npy"), ("attributes", "pose.npy"),
                ("attributes", "offsets.npy"))


def assert_identical_runs(a, b):
    """The same programs on the same inputs (a resumed run, same chunk size and device count): every stage
    output of the work directories and the saved encodings are equal to the bit."""
    for stage, name in STAGE_ARRAYS:
        x, y = (np.load(os.path.join(r["workdir"], stage, name)) for r in (a, b))
        np.testing.assert_array_equal(x, y, err_msg=f"{stage}/{name}")
    ea, eb = load_encoding(a["path"]), load_encoding(b["path"])
    assert ea.channels == eb.channels and ea.num_frames == eb.num_frames == FRAMES
    for field in ("id_latent", "cond_src", "offset_scale", "pose_deg", "offsets", "quad"):
        np.testing.assert_array_equal(getattr(ea, field), getattr(eb, field), err_msg=field)


# Runs of another chunk size, device count or CPU run other kernels (XLA picks them by shape and instruction
# set), which round float32 differently. Adam amplifies that where a frame's loss is flat: it divides the
# gradient by its running RMS, so where the gradient is near zero its rounding picks the direction of a step of
# about lr. Under another CPU's numerics (tests/numerics.py) the inversion of frame 0, whose target is exactly
# reachable, moved 1.7e-4 (the other frames' <= 3e-6), the refined yaw/pitch up to 0.38° (attributes.pose_lr 0.2
# over 8 steps) and the offsets up to 0.064 std (159 and 3394 float16 steps), while no frame's re-synthesis moved
# more than 0.21 of an 8-bit level RMS. A drift along a flat direction of an image loss is one the image hardly
# shows: a bound on the parameters is either loose enough to be useless (Adam's bound, 2 lr per step) or tuned
# on one CPU (1e-4°, which a user's CPU exceeded with 1.39e-4°); a bound on the image is neither. So, for such
# runs (`assert_same_encoding`):
RMS_LEVELS = 1.0  # the two runs' re-syntheses differ by < 1 8-bit level RMS in every frame: below the
#                   quantisation of the video a user watches (measured <= 0.21 level)
PSNR_DB = 0.05  # the PSNR encode reports (mean over frames) differs by < 0.05 dB, below the 0.1 dB codec
#                 comparisons resolve (measured <= 0.0012 dB)
# and what no optimisation touches is equal: the channels ("auto": a margin on this clip, tested below), the
# identity frame (frame 0 is the only near-frontal one), the roll (alignment bookkeeping) and the crop quads.
# `python scripts/encode_numerics.py` measures every number above for chunk sizes, device counts and flags.


def rendered(run):
    """The run's saved encoding re-synthesised, in [-1, 1] (one program for every run: the renders differ only
    by the encodings)."""
    from stylejax.decoder import iter_renders

    if "images" not in run:
        g, _, flow, _ = tiny_encoder.networks()
        run["images"] = np.concatenate([img for _, _, img in
                                        iter_renders(load_encoding(run["path"]), g, flow, chunk=FRAMES)])
    return run["images"]


def rms_levels(a, b):
    """Per-frame RMS difference of images in [-1, 1], in 8-bit levels (1 / 127.5)."""
    return np.sqrt(np.mean((a.astype(np.float64) - b) ** 2, axis=(1, 2, 3))) * 127.5


def assert_same_encoding(a, b):
    """Two encodes of one clip with other chunk sizes, device counts or numerics: the same to the eye."""
    ea, eb = load_encoding(a["path"]), load_encoding(b["path"])
    assert ea.num_frames == eb.num_frames == FRAMES
    assert ea.channels == eb.channels
    assert a["summary"]["id_frame"] == b["summary"]["id_frame"] == ea.settings["id_frame"] == eb.settings["id_frame"]
    np.testing.assert_array_equal(ea.pose_deg[:, 2], eb.pose_deg[:, 2], err_msg="roll")
    np.testing.assert_array_equal(ea.quad, eb.quad)
    rms = rms_levels(rendered(a), rendered(b))
    assert rms.max() < RMS_LEVELS, rms
    assert abs(a["summary"]["psnr_db"] - b["summary"]["psnr_db"]) < PSNR_DB, (a["summary"], b["summary"])


def stage_markers(workdir_path):
    return {s: open(os.path.join(workdir_path, s, "done.json")).read() for s in STAGES
            if os.path.isfile(os.path.join(workdir_path, s, "done.json"))}


# ------------------------------------------------------------------------------------------------ closed loop

@pytest.fixture(scope="module")
def closed_loop(tmp_path_factory):
    """The demo's closed loop with configs/encode_tiny.py, encoded once: frames synthesised from a known
    identity, pose and offsets through the encoder's own model, then encoded and saved."""
    d = tmp_path_factory.mktemp("closed_loop")
    config = demo.load_config(demo.TINY_CONFIG)
    config.chunk_size = CLOSED_LOOP_FRAMES  # one chunk without padding (the chunk size changes nothing: below)
    truth, frames = truth_and_frames(CLOSED_LOOP_FRAMES, int(config.head_pose.rk4_steps))
    channels_file = d / "channels.json"
    channels_file.write_text(json.dumps({"channels": truth[3]}))
    config.attributes.channels = str(channels_file)
    workdir = demo.synthetic_workdir(str(d / "workdir"), frames, truth[1])
    _, summary = pipeline.encode(workdir, tiny_encoder.nets(), config, out=str(d / "clip.enc"), log=quiet)
    return {"truth": truth, "frames": frames, "summary": summary, "path": str(d / "clip.enc")}


def test_closed_loop_recovers_the_clip(closed_loop):
    import jax.numpy as jnp

    from stylejax import metrics
    from stylejax.pipeline import fingerprint
    from stylejax.decoder import iter_renders

    g, _, flow, _ = tiny_encoder.networks()
    id_true, pose_true, off_true, channels = closed_loop["truth"]
    enc = load_encoding(closed_loop["path"], expected_fingerprint=fingerprint(g))
    assert enc.channels == tuple(channels) and enc.num_frames == CLOSED_LOOP_FRAMES and enc.bytes_per_frame == 70
    # frame 0 is the true identity (pose and offsets 0) and the only frame within the tiny config's 2° of frontal
    assert closed_loop["summary"]["id_frame"] == 0

    # re-synthesis from the saved (float16) file, rendered here, against the synthetic frames
    target = closed_loop["frames"].astype(np.float32) / 127.5 - 1.0
    images = np.concatenate([img for _, _, img in iter_renders(enc, g, flow, chunk=8)])
    psnr = np.asarray(metrics.psnr(jnp.asarray(images), jnp.asarray(target)))
    # measured 57.9-58.5 dB per frame (uint8 quantisation of the target alone caps it near 59 dB); 45 dB is the
    # issue's bound, 13 dB of margin
    assert psnr.min() >= 45.0, psnr
    assert closed_loop["summary"]["psnr_db"] == pytest.approx(float(psnr.mean()), abs=0.01)

    err = np.abs(enc.pose_deg - pose_true)  # truth relative to frame 0, which is all zero
    # yaw and pitch (ranges ±10° and 0..6°): measured max errors 0.17° and 0.19° (0.34° and 0.19° on 12 frames);
    # bound 1°, 3x the worst seen
    assert err[:, 0].max() < 1.0 and err[:, 1].max() < 1.0, err
    # roll is bookkeeping: the alignment's roll relative to the identity frame, stored as float16 (half a
    # float16 step at 4-8° is 0.002°); measured 0.0013°
    assert err[:, 2].max() < 0.01, err
    # offsets: each channel's max error relative to its amplitude; measured median 0.12 (the weakest channels of
    # a random 32 px generator are poorly identifiable, max ~0.8); bound 0.3 on the median
    rel = np.abs(enc.offsets - off_true).max(axis=0) / np.abs(off_true).max(axis=0)
    assert np.median(rel) < 0.3, rel


# ------------------------------------------------------------------------------------------------ comparisons

@pytest.fixture(scope="module")
def clip():
    return truth_and_frames(FRAMES)


@pytest.fixture(scope="module")
def nets_dir(tmp_path_factory):
    return tiny_encoder.save_networks(str(tmp_path_factory.mktemp("nets")))


def encode_clip(directory, clip, chunk, interrupt=None):
    """Encodes the clip in `directory`/workdir with the few-step config; returns the run's record."""
    truth, frames = clip
    workdir = demo.synthetic_workdir(os.path.join(directory, "workdir"), frames, truth[1])
    out = os.path.join(directory, "clip.enc")
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp, interrupt)
        _, summary = pipeline.encode(workdir, tiny_encoder.nets(), tiny_encoder.few_steps_config(chunk), out=out,
                                     log=quiet)
    return {"workdir": workdir.path, "path": out, "summary": summary, "stages": rec.stages, "traces": rec.traces}


DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
import jax
import tiny_encoder
from stylejax import pipeline
from stylejax import load

nets = pipeline.Nets(**{{k: load(v) for k, v in {nets!r}.items()}}).check()
enc, summary = pipeline.encode(pipeline.Workdir({workdir!r}), nets, tiny_encoder.few_steps_config(4), out={out!r},
                               log=lambda msg: None)
print(json.dumps({{"summary": summary, "jax": jax.device_count()}}))
"""


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory, clip, nets_dir):
    """Chunks of 4 frames split over 4 forced CPU devices, with the other numerics than this process's
    (tests/numerics.py: as on another CPU), in a background process started as early as the module allows: its
    compilation (one core) overlaps with this process's encodes."""
    d = str(tmp_path_factory.mktemp("four_devices"))
    truth, frames = clip
    workdir = demo.synthetic_workdir(os.path.join(d, "workdir"), frames, truth[1])
    out = os.path.join(d, "clip.enc")
    flags = numerics.with_flags(numerics.subprocess_xla_flags(), ["--xla_force_host_platform_device_count=4"])
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS=flags)
    code = DRIVER.format(tests=os.path.join(REPO, "tests"), nets=nets_dir, workdir=workdir.path, out=out)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    yield {"proc": proc, "workdir": workdir.path, "path": out, "xla_flags": flags}
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def start_four_devices_early(request):
    if any(item.name == "test_four_devices_give_the_encoding_of_one" for item in request.session.items):
        request.getfixturevalue("four_devices")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clip):
    """All FRAMES frames in one chunk on one device, uninterrupted."""
    run = encode_clip(str(tmp_path_factory.mktemp("reference")), clip, FRAMES)
    assert run["summary"]["chunk_size"] == FRAMES and run["summary"]["devices"] == 1
    assert run["stages"] == ["invert", "head_pose", "attributes"]
    return run


@pytest.fixture(scope="module")
def chunked(tmp_path_factory, clip):
    """Chunks of 4 (4, 4, 2: the last one padded), uninterrupted."""
    run = encode_clip(str(tmp_path_factory.mktemp("chunked")), clip, 4)
    assert run["summary"]["chunk_size"] == 4
    assert run["stages"] == ["invert"] * 3 + ["head_pose"] * 3 + ["attributes"] * 3
    return run


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, clip):
    """Chunks of 4: Ctrl-C right after the second attributes chunk was optimised, then the same call again on
    the same work directory."""
    d = str(tmp_path_factory.mktemp("interrupted"))
    with pytest.raises(KeyboardInterrupt):
        encode_clip(d, clip, 4, interrupt=("attributes", 2))
    workdir = os.path.join(d, "workdir")
    state = {"markers": stage_markers(workdir), "files": sorted(os.listdir(os.path.join(workdir, "attributes"))),
             "out": os.path.exists(os.path.join(d, "clip.enc"))}
    mtimes = {s: os.stat(os.path.join(workdir, s, "done.json")).st_mtime_ns for s in state["markers"]}
    first = Recorder.last
    run = encode_clip(d, clip, 4)
    run.update(first=first, after_interrupt=state, mtimes_before=mtimes,
               mtimes_after={s: os.stat(os.path.join(workdir, s, "done.json")).st_mtime_ns for s in mtimes})
    return run


def test_chunked_equals_unchunked(reference, chunked):
    """Every frame is its own problem (per-frame parameters, the sum of per-frame losses, element-wise Adam, no
    randomness): chunks of 4 reproduce one chunk of 10 up to float32 rounding, bounded where the user sees it
    (RMS_LEVELS, PSNR_DB and the reasoning above them)."""
    assert_same_encoding(chunked, reference)


def test_resume_inside_an_interrupted_chunk(interrupted, chunked):
    first, state = interrupted["first"], interrupted["after_interrupt"]
    assert first.stages == ["invert"] * 3 + ["head_pose"] * 3 + ["attributes"] * 2
    # Ctrl-C left the finished stages and the first attributes chunk marked, nothing of the interrupted chunk
    assert set(state["markers"]) == {"invert", "select_id", "head_pose"}
    assert "chunk-0000000.done" in state["files"] and "chunk-0000004.done" not in state["files"]
    assert not state["out"]
    # the rerun optimised only the interrupted chunk and the one after it, and left the finished stages alone
    assert interrupted["stages"] == ["attributes", "attributes"]
    assert interrupted["mtimes_after"] == interrupted["mtimes_before"]
    # the same programs on the same inputs as the uninterrupted run with the same chunk size: the same bits
    assert_identical_runs(interrupted, chunked)


def test_each_stage_compiles_its_step_once(interrupted):
    # one program serves every chunk of a stage, the padded last one included (the step was compiled twice when
    # the optimiser state's step counter changed placement after the first step)
    assert interrupted["first"].traces == 3  # invert, head_pose, attributes: 8 chunks


def test_resume_after_a_stage(reference, tmp_path):
    copy = dict(workdir=str(tmp_path / "workdir"), path=str(tmp_path / "clip.enc"))
    shutil.copytree(reference["workdir"], copy["workdir"])
    attributes = os.path.join(copy["workdir"], "attributes")
    for name in os.listdir(attributes):
        if name == "done.json" or name.startswith("chunk-"):
            os.remove(os.path.join(attributes, name))
    done = lambda: {s: os.stat(os.path.join(copy["workdir"], s, "done.json")).st_mtime_ns for s in STAGES[:3]}
    before = done()
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        pipeline.encode(pipeline.Workdir(copy["workdir"]), tiny_encoder.nets(), tiny_encoder.few_steps_config(FRAMES),
                        out=copy["path"], log=quiet)
    assert rec.stages == ["attributes"] and done() == before
    # the same program on the same inputs: the same bits (the earlier stages' arrays are compared too)
    assert_identical_runs(copy, reference)


def test_four_devices_give_the_encoding_of_one(four_devices, reference):
    """One frame per device and another CPU's numerics (tests/numerics.py): the same per-frame programs as
    on one device up to float32 rounding, bounded as for chunk sizes."""
    try:
        stdout, stderr = four_devices["proc"].communicate(timeout=600)
    except subprocess.TimeoutExpired:
        four_devices["proc"].kill()
        raise
    assert four_devices["proc"].returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert (out["summary"]["devices"], out["summary"]["chunk_size"], out["jax"]) == (4, 4, 4)
    assert_same_encoding(dict(four_devices, summary=out["summary"]), reference)


def test_auto_channels_have_a_margin(reference):
    """The runs compared above must choose the same "auto" channels. The choice ranks channel scores (spread
    over the video's inversions / spread over random samples), so a near-tie at the 32nd place could flip with
    rounding. On this clip the scores of the 32nd and 33rd channels are 0.17% apart, while another CPU's
    numerics move any score by at most 0.039% (scripts/encode_numerics.py): inversions with every element
    perturbed by 1e-4 (the largest difference between two runs' inversions is 1.7e-4, on frame 0; elsewhere
    <= 5e-6) choose the same channels in every draw. (1e-3 flips the 32nd channel in one draw of four.)"""
    from stylejax.stages.attributes import auto_channels

    g = tiny_encoder.networks()[0]
    config = tiny_encoder.few_steps_config(FRAMES).attributes
    ws = np.load(os.path.join(reference["workdir"], "invert", "ws.npy"))
    chosen = auto_channels(g, ws, int(config.num_channels), int(config.auto_samples))
    assert chosen == json.load(open(os.path.join(reference["workdir"], "attributes", "channels.json")))["channels"]
    rng = np.random.RandomState(0)
    for _ in range(4):
        noisy = ws + 1e-4 * rng.standard_normal(ws.shape).astype(np.float32)
        assert auto_channels(g, noisy, int(config.num_channels), int(config.auto_samples)) == chosen


# ------------------------------------------------------------------------------------------------ the file

def test_encoding_round_trip(reference, tmp_path):
    """What `encode` saved (float16 frames) is what the work directory holds (float32) to float16 rounding, and
    saving what was read gives the same file contents."""
    from stylejax.io.encoding import save_encoding

    config = tiny_encoder.few_steps_config(FRAMES)
    ctx = pipeline.make_context(pipeline.Workdir(reference["workdir"]), tiny_encoder.nets(), config, quiet)
    exact = pipeline.assemble(ctx)
    saved = load_encoding(reference["path"], expected_fingerprint=ctx.nets.fingerprint("generator"))
    assert float16_ulps(saved.pose_deg, exact.pose_deg).max() <= 0.5  # rounded to nearest
    assert float16_ulps(saved.offsets, exact.offsets).max() <= 0.5
    np.testing.assert_array_equal(saved.id_latent, exact.id_latent)
    np.testing.assert_array_equal(saved.cond_src, exact.cond_src)
    np.testing.assert_array_equal(saved.offset_scale, exact.offset_scale)  # float32 on disk: exact
    assert saved.styleflow_fingerprint == ctx.nets.fingerprint("styleflow")
    np.testing.assert_array_equal(saved.quad, exact.quad)
    assert (saved.channels, saved.fps, saved.resolution, saved.frame_size, saved.pose_model, saved.settings) == \
        (exact.channels, 25.0, 32, (256, 256), "styleflow-rk4-8", json.loads(json.dumps(exact.settings)))
    assert saved.settings["id_frame"] == reference["summary"]["id_frame"]
    save_encoding(str(tmp_path / "again.enc"), saved)
    again = load_encoding(str(tmp_path / "again.enc"))
    for field in ("id_latent", "pose_deg", "offsets", "quad", "cond_src", "offset_scale"):
        np.testing.assert_array_equal(getattr(again, field), getattr(saved, field))
    assert (again.channels, again.settings, again.generator_fingerprint) == \
        (saved.channels, saved.settings, saved.generator_fingerprint)


# ------------------------------------------------------------------------------------------------ failures

def test_non_finite_loss_stops_the_stage(clip, tmp_path):
    truth, frames = clip
    workdir = demo.synthetic_workdir(str(tmp_path / "workdir"), frames, truth[1])
    config = tiny_encoder.few_steps_config(FRAMES)
    config.invert.steps = 2
    config.invert.lr = 1e30  # Adam moves the latent by ~lr: the generator's demodulation overflows
    with pytest.raises(NonFiniteLossError) as e:
        pipeline.encode(workdir, tiny_encoder.nets(), config, out=str(tmp_path / "clip.enc"), log=quiet)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("invert: non-finite loss at ") and msg.endswith(
        "lower the stage's learning rate or check the networks")
    assert stage_markers(workdir.path) == {}
    assert not os.path.exists(os.path.join(workdir.path, "invert", "chunk-0000000.done"))
    assert not (tmp_path / "clip.enc").exists()
