"""`python -m stylejax.batch`: the bookkeeping (video ids, the frame-balanced split, locks, the commit) on plain
files, and whole runs in subprocesses on short synthetic face clips with the demo's tiny networks: one process,
two processes on jax.distributed (2 forced CPU devices each), a process killed with `kill -9` and the batch
finished by a rerun with another process count, a corrupt file and a faceless clip.

The clips are scikit-image's astronaut photograph moved by small rotations, shifts and zooms (`demo.face_clip`:
dlib finds the face in every frame); the networks are random, so the encodings are what they are, but they are deterministic,
which is what the comparisons need. All runs share one JAX compilation cache: the stages compile once.
Cost on 2 CPU cores: about 3 minutes, mostly each encode re-tracing its jitted steps.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from stylejax.batchdir import BatchDir, BatchError, VideoLock, list_videos, publish, split_by_frames
from stylejax.io.atomic import OutputError

FACE_CLIPS = {"talk/a": 4, "b": 3}  # id -> frames: one chunk of 4 each (the programs compile once)
STEPS = ["--config", os.path.join(REPO, "configs", "encode_tiny.py"), "--config.chunk_size=4",
         "--config.invert.steps=1", "--config.head_pose.steps=1", "--config.attributes.steps=1"]
TIMEOUT_S = 600


# ------------------------------------------------------------------------------------------------ plain files

def test_video_ids_from_a_folder_a_pattern_and_a_list(tmp_path):
    for name in ("x/a.mp4", "x/sub/b.MOV", "x/notes.txt", "x/.hidden.mp4", "y/c.mkv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    ids = lambda spec: [(v.id, os.path.relpath(v.path, tmp_path)) for v in list_videos(spec)]
    assert ids(str(tmp_path / "x")) == [("a", "x/a.mp4"), ("sub/b", "x/sub/b.MOV")]
    assert ids(str(tmp_path / "x" / "**" / "*.*")) == [("a", "x/a.mp4"), ("notes", "x/notes.txt"),
                                                       ("sub/b", "x/sub/b.MOV")]
    listing = tmp_path / "list.txt"
    listing.write_text("# my videos\ny/c.mkv\n\nx/a.mp4\n")  # relative to the list's folder, list order kept
    assert ids(str(listing)) == [("y/c", "y/c.mkv"), ("x/a", "x/a.mp4")]
    (tmp_path / "x" / "a.mov").write_bytes(b"")
    with pytest.raises(BatchError, match=r"lists .*a\.mov and .*a\.mp4, which would both be encoded as "
                                         r"encodings/a\.enc"):
        list_videos(str(tmp_path / "x"))
    with pytest.raises(BatchError, match="no videos in the pattern"):
        list_videos(str(tmp_path / "nothing" / "*.mp4"))


def test_split_balances_frames_and_is_deterministic():
    class V:
        def __init__(self, i):
            self.id = f"v{i}"

    videos = [V(i) for i in range(10)]
    frames = {"v0": 90, **{f"v{i}": 10 for i in range(1, 10)}}
    shares = split_by_frames(videos, frames, 2)
    loads = sorted(sum(frames[v.id] for v in s) for s in shares)
    assert loads == [90, 90]  # 5 files each would be 130 vs 50 frames
    assert [[v.id for v in s] for s in shares] == [["v0"], [f"v{i}" for i in range(1, 10)]]
    again = split_by_frames(list(reversed(videos)), dict(frames), 2)  # same list in another order: same shares
    assert [[v.id for v in s] for s in again] == [[v.id for v in s] for s in shares]
    assert sorted(v.id for s in split_by_frames(videos, frames, 3) for v in s) == sorted(frames)


HOLD_LOCK = """
import sys, time
sys.path.insert(0, {repo!r})
from stylejax.batchdir import VideoLock
assert VideoLock({path!r}).acquire({{"host": "h", "pid": 1234}})
print("held", flush=True)
time.sleep(600)
"""


def test_lock_is_exclusive_and_freed_when_its_holder_is_killed(tmp_path):
    path = str(tmp_path / "v.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(repo=REPO, path=path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = VideoLock(path)
        assert not lock.acquire({"pid": os.getpid()})
        assert lock.holder() == "h pid 1234"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert lock.acquire({"pid": os.getpid()})  # the kernel released the dead holder's lock
        assert not VideoLock(path).acquire({})  # and this process never takes it twice
        lock.release()
        assert not os.path.exists(path)
    finally:
        holder.kill()
        holder.wait()


def test_commit_never_replaces_an_encoding(tmp_path):
    bd = BatchDir(str(tmp_path / "out"), {"config": "x"})
    video = list_videos(str(_touch(tmp_path / "in" / "a.mp4")))[0]
    os.makedirs(bd.work(video))
    staged = os.path.join(bd.work(video), "encoding.enc")
    open(staged, "wb").write(b"new")
    assert bd.finish(video, staged, {"status": "encoded"})
    assert open(bd.encoding(video), "rb").read() == b"new" and bd.result(video) == {"status": "encoded"}
    assert not os.path.exists(bd.work(video))
    other = tmp_path / "other.enc"
    other.write_bytes(b"other")
    assert not publish(str(other), bd.encoding(video))
    assert open(bd.encoding(video), "rb").read() == b"new" and other.exists()
    # another batch's settings, or a folder that is not a batch output: refused with one line
    with pytest.raises(BatchError, match=r"holds encodings made with other settings \(config differ\); use a new "
                                         r"--out"):
        BatchDir(str(tmp_path / "out"), {"config": "y"})
    with pytest.raises(OutputError, match=r"exists and is not a batch output \(a folder holding batch.json\); "
                                          "give a new or empty directory"):
        BatchDir(str(tmp_path / "in"), {"config": "x"})


def test_a_folder_left_by_a_killed_start_is_resumed_and_its_temporary_removed(tmp_path):
    from stylejax.io import atomic

    # what a kill -9 while writing the marker leaves: the claimed temporary, its lock file free
    out = tmp_path / "out"
    (out / "compile-cache").mkdir(parents=True)
    (out / ".batch.json.partial-123-0123abcd").write_text('{"stylejax_batch": 1')
    (out / ".batch.json.partial-123-0123abcd.lock").write_bytes(atomic._CLAIM)
    BatchDir(str(out), {"config": "x"})
    assert sorted(os.listdir(out)) == ["batch.json", "compile-cache", "encodings", "processes", "results", "work"]
    assert atomic.read_json(str(out / "batch.json")) == {"stylejax_batch": 1, "settings": {"config": "x"}}


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_claims_take_the_ends_of_the_fullest_shares(tmp_path):
    from stylejax.batch import _claims
    from stylejax.batchdir import host_info

    for name in ("a", "b", "c", "d", "e", "f"):
        _touch(tmp_path / "in" / f"{name}.mp4")
    videos = {v.id: v for v in list_videos(str(tmp_path / "in"))}
    bd = BatchDir(str(tmp_path / "out"), {"config": "x"})
    frames = {"a": 1, "b": 1, "c": 5, "d": 4, "e": 3, "f": 2}
    shares = [[videos["a"], videos["b"]], [videos["c"], videos["d"]], [videos["e"], videos["f"]]]
    _touch(tmp_path / "out" / "encodings" / "b.enc")  # finished
    held = bd.lock(videos["d"])  # held by "another process": this process's registry refuses it like fcntl would
    assert held.acquire({})
    stats = {"already_done": 0, "busy": 0, "taken_from_others": 0}
    order = []
    for video, lock in _claims(bd, shares, 0, frames, host_info(), False, True, stats):
        order.append(video.id)
        lock.release()
    # own share first (b is done), then from the ends of the shares with the most frames left: share 1 (9
    # frames: d is held, then c), share 2 (5: f, then e)
    assert order == ["a", "c", "f", "e"]
    assert stats == {"already_done": 1, "busy": 0, "taken_from_others": 3}
    held.release()


def _cli_error(argv, capsys):
    from stylejax import batch

    status = batch.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: "), (status, err)
    return err[0]


def test_bad_commands_are_one_line_errors(tmp_path, capsys):
    _touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    nets = ["--generator", "g", "--e4e", "e", "--styleflow", "f"]
    videos = ["--videos", str(tmp_path / "v")]
    out = ["--out", str(tmp_path / "out")]
    before = sorted(os.listdir(tmp_path))
    assert _cli_error(nets + out, capsys) == "error: --videos is required (see --help)"
    assert _cli_error(nets + out + ["--videos", str(tmp_path / "nope")], capsys) == (
        f"error: --videos {tmp_path / 'nope'}: no such file or folder; give a list file, a directory or a quoted "
        "glob pattern")
    assert _cli_error(nets + out + videos + ["--num-processes", "2", "--process-id", "2"], capsys) == (
        "error: --process-id must be in 0..1 for --num-processes 2, got 2")
    assert _cli_error(nets + out + videos + ["--process-id", "0"], capsys) == (
        "error: --num-processes and --process-id go together")
    assert _cli_error(nets + out + videos + ["--prefetch", "-1"], capsys) == (
        "error: --prefetch must be a finite number >= 0, got -1")
    msg = _cli_error(nets + videos + ["--out", str(tmp_path / "foreign")], capsys)
    assert "exists and is not a batch output (a folder holding batch.json); give a new or empty directory" in msg
    msg = _cli_error(nets + videos + ["--out", str(tmp_path / "v" / "out")], capsys)
    assert "inside the input folder" in msg
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "foreign" / "keep.txt").read_text() == "mine"
    assert os.listdir(tmp_path / "foreign") == ["keep.txt"] and os.listdir(tmp_path / "v") == ["a.mp4"]


# ------------------------------------------------------------------------------------------------ whole runs

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Face clips, a truncated (corrupt) copy of one and a random-noise clip (no face), and a list of them."""
    pytest.importorskip("dlib")
    pytest.importorskip("skimage.data")
    import tiny_encoder
    from stylejax.demo import face_clip
    from stylejax.io.video import write_video

    d = tmp_path_factory.mktemp("dataset")
    for i, (vid, n) in enumerate(FACE_CLIPS.items()):
        (d / "videos" / vid).parent.mkdir(parents=True, exist_ok=True)
        write_video(str(d / "videos" / f"{vid}.mp4"), face_clip(n, i), 25.0)
    data = (d / "videos" / "b.mp4").read_bytes()
    (d / "videos" / "corrupt.mp4").write_bytes(data[: len(data) // 2])
    write_video(str(d / "videos" / "noise.mp4"), list(np.random.RandomState(0).randint(0, 256, (5, 160, 160, 3),
                                                                                         dtype=np.uint8)), 25.0)
    names = [f"{vid}.mp4" for vid in FACE_CLIPS]
    (d / "videos" / "all.txt").write_text("\n".join(names + ["corrupt.mp4", "noise.mp4"]) + "\n")
    (d / "videos" / "faces.txt").write_text("\n".join(names) + "\n")
    os.makedirs(d / "nets")
    nets = tiny_encoder.save_networks(str(d / "nets"))
    return {"dir": d, "nets": nets, "cache": str(d / "jax-cache")}


def batch_command(dataset, videos, out, *extra):
    nets = dataset["nets"]
    return [sys.executable, "-m", "stylejax.batch", "--videos", str(dataset["dir"] / "videos" / videos), "--out", out,
            "--generator", nets["generator"], "--e4e", nets["e4e"], "--styleflow", nets["styleflow"],
            "--lpips", nets["lpips"], "--align-workers", "0", "--json", *STEPS, *extra]


def batch_env(dataset):
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=dataset["cache"],
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip())


def start(dataset, videos, out, *extra):
    return subprocess.Popen(batch_command(dataset, videos, out, *extra), cwd=REPO, env=batch_env(dataset),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    lines = stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else None, stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed(port, index, count=2):
    return ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(index),
            "--heartbeat-timeout", "5"]


def encodings(out):
    """{id: Encoding} of everything under out/encodings, which must hold finished encodings only."""
    from stylejax.io.encoding import load_encoding

    found = {}
    for root, _, files in os.walk(os.path.join(out, "encodings")):
        for f in files:
            assert f.endswith(".enc") and not f.startswith("."), f"unexpected file {f} in encodings/"
            path = os.path.join(root, f)
            found[os.path.relpath(path, os.path.join(out, "encodings"))[:-4]] = load_encoding(path)
    return found


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return {row["id"]: row for row in json.load(f)["videos"]}


@pytest.fixture(scope="module")
def one_process(dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one") / "out")
    rc, result, stderr = finish(start(dataset, "all.txt", out))
    return {"out": out, "rc": rc, "result": result, "stderr": stderr}


@pytest.fixture(scope="module")
def two_processes(dataset, one_process, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("two") / "out")
    port = free_port()
    procs = [start(dataset, "all.txt", out, *distributed(port, k)) for k in range(2)]
    return {"out": out, "runs": [finish(p) for p in procs]}


def test_corrupt_and_faceless_are_reported_and_the_rest_encoded(one_process):
    rc, result = one_process["rc"], one_process["result"]
    assert result is not None, one_process["stderr"][-3000:]
    assert result["batch"] == {"encoded": 2, "failed": 2, "pending": 0}
    assert rc == 102  # 100 + the number of videos not encoded
    rows = summary(one_process["out"])
    assert {k: r["status"] for k, r in rows.items()} == {"talk/a": "encoded", "b": "encoded", "corrupt": "failed",
                                                         "noise": "failed"}
    corrupt, noise = rows["corrupt"]["reason"], rows["noise"]["reason"]
    assert corrupt.startswith("cannot read video ") and "not a video or corrupt" in corrupt and "\n" not in corrupt
    assert noise.startswith("no face found in ") and "\n" not in noise
    encs = encodings(one_process["out"])
    assert {k: e.num_frames for k, e in encs.items()} == FACE_CLIPS
    for vid, n in FACE_CLIPS.items():
        row = rows[vid]
        assert row["frames"] == n and row["bytes"] == os.path.getsize(
            os.path.join(one_process["out"], "encodings", vid + ".enc"))
        assert np.isfinite([row["psnr_db"], row["lpips"], row["seconds"]]).all()
    csv_lines = open(os.path.join(one_process["out"], "summary.csv")).read().splitlines()
    assert csv_lines[0].startswith("id,video,status,reason,frames,seconds,psnr_db,ssim,lpips,identity_similarity,bytes")
    assert len(csv_lines) == 5
    assert os.listdir(os.path.join(one_process["out"], "work")) == []  # work directories and locks are gone
    assert 0 < result["device_busy_fraction"] <= 1


def test_two_processes_give_the_encodings_of_one(one_process, two_processes):
    for rc, result, stderr in two_processes["runs"]:
        assert result is not None, stderr[-3000:]
        assert rc == 102 and result["batch"] == {"encoded": 2, "failed": 2, "pending": 0}
        assert result["processes_lost"] == []
    # each video was encoded by one process, and between them they did all of them
    attempted = [vid for _, result, _ in two_processes["runs"] for vid in result["attempted"]]
    assert sorted(attempted) == sorted(list(FACE_CLIPS) + ["corrupt", "noise"])
    one, two = encodings(one_process["out"]), encodings(two_processes["out"])
    assert sorted(one) == sorted(two) == sorted(FACE_CLIPS)
    for vid in FACE_CLIPS:
        # the same per-video programs on the same 2 local devices: the same bits, whichever process ran them
        for field in ("id_latent", "pose_deg", "offsets", "quad"):
            np.testing.assert_array_equal(getattr(one[vid], field), getattr(two[vid], field), err_msg=f"{vid} {field}")
    rows_one, rows_two = summary(one_process["out"]), summary(two_processes["out"])
    for vid in rows_one:
        for col in ("status", "reason", "frames", "psnr_db", "lpips", "bytes"):
            assert rows_one[vid][col] == rows_two[vid][col], (vid, col)


def _stage_markers(workdir):
    out = {}
    for stage in ("align", "invert", "select_id", "head_pose", "attributes"):
        p = os.path.join(workdir, stage, "done.json")
        if os.path.isfile(p):
            out[stage] = os.stat(p).st_mtime_ns
    return out


def test_kill_a_process_then_rerun_encodes_each_video_once(dataset, tmp_path):
    out = str(tmp_path / "out")
    port = free_port()
    common = ("faces.txt", out, "--keep-workdirs", "--nosteal")
    procs = [start(dataset, *common, *distributed(port, k)) for k in range(2)]
    work = os.path.join(out, "work")
    victim, markers, deadline = None, None, time.monotonic() + TIMEOUT_S
    while victim is None and time.monotonic() < deadline and procs[1].poll() is None:
        # process 1's video that is being optimised: its lock says process 1, and its inversion is done
        for name in os.listdir(work) if os.path.isdir(work) else []:
            if name.endswith(".lock"):
                try:
                    holder = json.loads(open(os.path.join(work, name)).read() or "{}")
                except (OSError, ValueError):
                    continue
                wd = os.path.join(work, name[:-5])
                if holder.get("process") == 1 and "invert" in _stage_markers(wd):
                    procs[1].send_signal(signal.SIGKILL)
                    victim, markers = name[:-5].replace("%2F", "/"), _stage_markers(wd)
                    break
        time.sleep(0.05)
    assert victim is not None, "process 1 never reached its second stage"
    rc0, result0, stderr0 = finish(procs[0])
    procs[1].wait(timeout=60)
    assert result0 is not None, stderr0[-3000:]
    assert result0["processes_lost"] == [1]
    left = result0["batch"]["pending"]
    assert left >= 1 and result0["batch"]["failed"] == 0 and rc0 == 100 + left
    assert summary(out)[victim]["status"] == "pending"
    # nothing partial is visible: encodings/ holds complete files only, and not the interrupted video's
    first = encodings(out)
    assert victim not in first and len(first) == len(FACE_CLIPS) - left
    records = {vid: open(os.path.join(out, "results", vid.replace("/", "%2F") + ".json")).read() for vid in first}

    # the same batch again with one process instead of two
    rc, result, stderr = finish(start(dataset, *common))
    assert result is not None, stderr[-3000:]
    assert rc == 0 and result["batch"] == {"encoded": len(FACE_CLIPS), "failed": 0, "pending": 0}
    assert result["already_done"] == len(FACE_CLIPS) - left and result["encoded"] == left  # only what was left
    assert victim in result["attempted"] and not set(result["attempted"]) & set(first)
    final = encodings(out)
    assert sorted(final) == sorted(FACE_CLIPS)
    for vid in first:  # finished videos were not encoded again
        assert open(os.path.join(out, "results", vid.replace("/", "%2F") + ".json")).read() == records[vid]
    # the interrupted video continued from its work directory: the stages it had finished were kept
    kept = _stage_markers(os.path.join(work, victim.replace("/", "%2F")))
    assert {s: kept[s] for s in markers} == markers
    assert set(kept) == {"align", "invert", "select_id", "head_pose", "attributes"}


def test_a_dead_alignment_process_fails_its_video_and_the_next_one_aligns(tmp_path):
    pytest.importorskip("dlib")
    pytest.importorskip("skimage.data")
    from stylejax.align.background import AlignRunner, align_signature
    from stylejax.demo import face_clip
    from stylejax.io.video import write_video
    from stylejax.workdir import Workdir

    video = str(tmp_path / "a.mp4")
    write_video(video, face_clip(4), 25.0)
    align = {"max_gap": 15, "stabiliser": "poly"}
    jobs = {}
    for name in ("x", "y"):
        wd = Workdir(str(tmp_path / name), video=video)
        jobs[name] = {"id": name, "video": video, "workdir": wd.path, "size": 32, "align": align,
                      "signature": align_signature(video, 32, align)}
    runner = AlignRunner(0)
    try:
        runner.submit(jobs["x"])
        runner.submit(jobs["y"])
        os.kill(runner.proc.pid, signal.SIGKILL)  # e.g. the kernel's out-of-memory killer, while it starts on x
        x = runner.wait("x")
        assert x["status"] == "failed" and not x["final"]  # not the video's fault: a rerun tries it again
        assert x["reason"].startswith("the alignment process died (exit code -9)")
        y = runner.wait("y")  # a new process took the rest
        assert y["status"] == "ok", y
        assert Workdir(jobs["y"]["workdir"]).is_done("align", jobs["y"]["signature"])
    finally:
        runner.close()
