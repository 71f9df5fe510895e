"""Output-path rules (stylejax.io.atomic): real folders, symlinks and hard links in tmp dirs; every refusal
checks that the user's files survive byte for byte and that no temporary file is left behind."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from stylejax.io import atomic, checkpoint
from stylejax.io.atomic import OutputError

# subprocess.run from a process that has imported JAX: fork+exec at once, nothing of JAX runs in the child
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")


def tree(root):
    """{relative path: sha1 of the content / 'dir' / 'link -> target'} of everything under root, hidden too."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link -> " + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha1(f.read()).hexdigest()
            else:
                out[rel] = "special"
    return out


def ours(path):
    return os.path.isfile(os.path.join(path, "OURS"))


@pytest.fixture
def place(tmp_path, monkeypatch):
    """tmp_path/work as the current directory and tmp_path/home as HOME; a user's folder `data` holding an
    input; a folder of ours `prev` (marked by OURS); links to both."""
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("home file")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "video.mp4").write_bytes(b"input video bytes")
    (data / "other.txt").write_text("a neighbour")
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "OURS").write_text("old output")
    os.symlink(data, tmp_path / "link_to_data")
    os.symlink(prev, tmp_path / "link_to_prev")
    return tmp_path


def write_into(path, overwrite=True, inputs=(), text="new output"):
    with atomic.output_dir(path, overwrite=overwrite, inputs=inputs, is_ours=ours) as tmp:
        with open(os.path.join(tmp, "OURS"), "w") as f:
            f.write(text)


# ------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("path,fragment", [
    ("", "path is empty"), ("   ", "path is empty"), (None, "path is empty"),
    ("/", "filesystem root"), ("~", "is your home directory"), ("~/", "is your home directory"),
    (".", "is the current directory"), ("..", "it holds (your home|the current) directory"),
    ("../work/.", "is the current directory"),
])
def test_empty_and_root_like_paths_are_refused(place, path, fragment):
    before = tree(place)
    with pytest.raises(OutputError, match=fragment):
        write_into(path, overwrite=True)
    with pytest.raises(OutputError, match=fragment):
        atomic.output_file(path, overwrite=True).__enter__()
    assert tree(place) == before


def test_link_to_the_folder_holding_the_input_is_refused(place):
    # the reported loss: --out LINK --overwrite, LINK -> the folder holding the input video
    before = tree(place)
    video = place / "data" / "video.mp4"
    for out in (place / "link_to_data", place / "data", place / "link_to_data" / "video.mp4"):
        with pytest.raises(OutputError, match="is or contains the input"):
            write_into(str(out), inputs=[str(video)])
    # the input named through a link, the output named directly: still the same folder
    with pytest.raises(OutputError, match="is or contains the input"):
        write_into(str(place / "data"), inputs=[str(place / "link_to_data" / "video.mp4")])
    assert tree(place) == before


def test_output_inside_an_input_folder_is_refused(place):
    before = tree(place)
    with pytest.raises(OutputError, match="inside the input folder"):
        write_into(str(place / "link_to_data" / "new"), inputs=[str(place / "data")])
    with pytest.raises(OutputError, match="inside the input folder"):
        atomic.check_output_file(str(place / "data" / "other.txt"), overwrite=True, inputs=[str(place / "data")])
    assert tree(place) == before


def test_hard_link_to_an_input_is_refused(place):
    os.link(place / "data" / "video.mp4", place / "hard.mp4")
    before = tree(place)
    with pytest.raises(OutputError, match="is or contains the input"):
        with atomic.output_file(str(place / "hard.mp4"), overwrite=True, inputs=[str(place / "data" / "video.mp4")]):
            pass
    assert tree(place) == before


def test_foreign_folder_is_never_replaced(place):
    before = tree(place)
    with pytest.raises(OutputError, match="already exists; choose another path or pass --overwrite"):
        write_into(str(place / "data"), overwrite=False)
    with pytest.raises(OutputError, match="replaces only an earlier output of this command"):
        write_into(str(place / "data"), overwrite=True)
    with pytest.raises(OutputError, match="replaces only an earlier output"):  # no is_ours at all
        with atomic.output_dir(str(place / "data"), overwrite=True):
            pass
    assert tree(place) == before


def test_our_folder_needs_overwrite_and_is_then_replaced_whole(place):
    before = tree(place)
    with pytest.raises(OutputError, match="pass --overwrite"):
        write_into(str(place / "prev"), overwrite=False)
    assert tree(place) == before
    write_into(str(place / "link_to_prev"), overwrite=True, text="second run")  # through a link: the target
    assert os.path.islink(place / "link_to_prev")
    assert (place / "prev" / "OURS").read_text() == "second run"
    after = tree(place)
    assert set(after) == set(before) and after["prev/OURS"] != before["prev/OURS"]
    assert oct(os.stat(place / "prev").st_mode & 0o777) == oct(0o777 & ~atomic._umask())


def test_empty_existing_folder_is_used_without_overwrite(place):
    (place / "empty").mkdir()
    write_into(str(place / "empty"), overwrite=False)
    assert os.listdir(place / "empty") == ["OURS"]


def test_missing_parent_file_in_the_way_and_unwritable_place(place):
    before = tree(place)
    with pytest.raises(OutputError, match="does not exist; create it first"):
        write_into(str(place / "nope" / "out"))
    with pytest.raises(OutputError, match="exists and is not a directory"):
        write_into(str(place / "data" / "other.txt"))
    if os.path.isdir("/proc"):  # not writable even as root: an OutputError, not an OSError traceback
        with pytest.raises(OutputError, match="cannot write"):
            write_into("/proc/stylejax-test-out")
        with pytest.raises(OutputError, match="cannot write"):
            with atomic.output_file("/proc/stylejax-test-out.mp4"):
                pass
    assert tree(place) == before


def test_output_file_rules(place):
    f = place / "result.txt"
    f.write_text("old result")
    os.mkfifo(place / "pipe")
    before = tree(place)
    with pytest.raises(OutputError, match="already exists"):
        with atomic.output_file(str(f)):
            pass
    with pytest.raises(OutputError, match="not a regular file"):  # a device or pipe is never replaced
        with atomic.output_file(str(place / "pipe"), overwrite=True):
            pass
    with pytest.raises(OutputError, match="is a directory"):
        with atomic.output_file(str(place / "data"), overwrite=True):
            pass
    with pytest.raises(RuntimeError, match="boom"):  # a failure leaves the old file as it was
        with atomic.output_file(str(f), overwrite=True) as tmp:
            with open(tmp, "w") as out:
                out.write("half")
            raise RuntimeError("boom")
    assert tree(place) == before
    with atomic.output_file(str(f), overwrite=True) as tmp:
        with open(tmp, "w") as out:
            out.write("new result")
    assert f.read_text() == "new result"
    assert set(tree(place)) == set(before)


# ------------------------------------------------------------------------------ failures and interrupts

@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("target", ["prev", "fresh"])
def test_failure_inside_leaves_old_output_and_no_temporaries(place, exc, target):
    before = tree(place)
    with pytest.raises(exc):
        with atomic.output_dir(str(place / target), overwrite=True, is_ours=ours) as tmp:
            with open(os.path.join(tmp, "OURS"), "w") as f:
                f.write("half-written")
            raise exc()
    assert tree(place) == before


def test_failed_final_rename_restores_old_output(place, monkeypatch):
    # without the atomic exchange, the old output is moved aside first: a failure must move it back
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if ".partial-" in os.path.basename(src):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    before = tree(place)
    with pytest.raises(OSError, match="No space left"):
        write_into(str(place / "prev"))
    assert tree(place) == before


def test_replacement_without_exchange_also_works(place, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    write_into(str(place / "prev"), text="via rename")
    assert (place / "prev" / "OURS").read_text() == "via rename"
    assert sorted(os.listdir(place)) == ["data", "home", "link_to_data", "link_to_prev", "prev", "work"]


def test_exchange_swaps_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    if not atomic._exchange(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert os.listdir(tmp_path / "b") == ["x"] and os.listdir(tmp_path / "a") == []


def test_folder_that_appears_during_the_run_is_rechecked(place):
    before = tree(place)
    late = place / "late"
    with pytest.raises(OutputError, match="replaces only an earlier output"):
        with atomic.output_dir(str(late), overwrite=True, is_ours=ours) as tmp:
            with open(os.path.join(tmp, "OURS"), "w") as f:
                f.write("new")
            late.mkdir()  # someone else's files land there while we work
            (late / "theirs.txt").write_text("keep me")
    assert (late / "theirs.txt").read_text() == "keep me"
    after = tree(place)
    assert {k: v for k, v in after.items() if not k.startswith("late")} == before


_SCRIPT = """
import os, signal, sys, time
from stylejax import cli
from stylejax.io import atomic
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
out, ready = sys.argv[1], sys.argv[2]

def main(args):
    with atomic.output_dir(out, overwrite=True, is_ours=lambda p: True) as tmp:
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("half")
        open(ready, "w").close()
        time.sleep(60)

sys.exit(cli.run("t", "", lambda fv: None, main, []))
"""


@pytest.mark.parametrize("sig,code,err", [(signal.SIGTERM, 143, ""), (signal.SIGINT, 130, "error: interrupted\n")])
def test_killed_cli_leaves_old_output_and_no_temporaries(tmp_path, sig, code, err):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old output")
    ready = tmp_path / "ready"
    script = tmp_path / "script.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(ready)], env=env, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "timed out"
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    assert proc.stderr.read() == err
    assert sorted(os.listdir(tmp_path)) == ["out", "ready", "script.py"]
    assert os.listdir(out) == ["old.txt"] and (out / "old.txt").read_text() == "old output"


# ----------------------------------------------------------------------------- what "ours" means

def _checkpoint_dir(path, kind="stylegan2", extra=None):
    (path / "params").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"kind": kind, "format_version": 1, "config": {}}))
    if extra:
        (path / extra).write_text("the user's")
    return str(path)


def test_is_checkpoint_needs_the_kind_and_nothing_foreign(tmp_path):
    assert checkpoint.is_checkpoint(_checkpoint_dir(tmp_path / "a"), "stylegan2")
    assert not checkpoint.is_checkpoint(_checkpoint_dir(tmp_path / "b"), "e4e")  # ours, wrong kind
    assert not checkpoint.is_checkpoint(_checkpoint_dir(tmp_path / "c", extra="notes.txt"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text('{"lr": 1}')  # someone's training config
    assert not checkpoint.is_checkpoint(str(tmp_path / "d"))


def test_checkpoint_save_refuses_wrong_kind_and_foreign_files(tmp_path):
    params = {"w": np.zeros(3, np.float32)}
    for name, kind, extra in (("e4e_ckpt", "e4e", None), ("with_notes", "stylegan2", "notes.txt")):
        d = _checkpoint_dir(tmp_path / name, kind, extra)
        before = tree(d)
        with pytest.raises(OutputError, match="replaces only an earlier output"):
            checkpoint.save(d, "stylegan2", {}, params, overwrite=True)
        assert tree(d) == before
    d = _checkpoint_dir(tmp_path / "same_kind")
    checkpoint.save(d, "stylegan2", {"a": 1}, params, overwrite=True)
    assert json.loads((tmp_path / "same_kind" / "config.json").read_text())["config"] == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["e4e_ckpt", "same_kind", "with_notes"]


def test_generated_folder_is_recognised_by_its_png_mark(tmp_path):
    from stylejax.generate import is_generated_dir, write_png

    img = np.zeros((4, 4, 3), np.uint8)
    (tmp_path / "ours").mkdir()
    write_png(str(tmp_path / "ours" / "seed0000.png"), img)
    (tmp_path / "ours" / "images.npy").write_bytes(b"")
    assert is_generated_dir(str(tmp_path / "ours"))
    (tmp_path / "theirs").mkdir()  # same name, written by another program (e.g. NVlabs generate.py)
    from PIL import Image
    Image.fromarray(img).save(tmp_path / "theirs" / "seed0000.png")
    assert not is_generated_dir(str(tmp_path / "theirs"))
    (tmp_path / "ours" / "notes.txt").write_text("x")
    assert not is_generated_dir(str(tmp_path / "ours"))


# ------------------------------------------------------------------------ temporaries after kill -9

_WRITER = """
import os, signal, sys, time
from stylejax.io import atomic
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # as stylejax.cli does: finally blocks run
out, ready, kind = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "file":
    with atomic.output_file(out, overwrite=True) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        open(ready, "w").close()
        time.sleep(60)
else:
    with atomic.output_dir(out, overwrite=True, is_ours=lambda p: True) as tmp:
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("half")
        open(ready, "w").close()
        time.sleep(60)
"""


def _start_writer(tmp_path, out, kind, tag):
    ready = tmp_path / f"ready-{tag}"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(ready), kind],
                            env=dict(os.environ, PYTHONPATH=REPO), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "timed out"
    ready.unlink()
    return proc


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_temporaries_of_a_killed_writer_are_removed_by_the_next(tmp_path, kind):
    home = tmp_path / "place"
    home.mkdir()
    out = home / "out"

    def write(text):
        if kind == "file":
            with atomic.output_file(str(out), overwrite=True) as tmp:
                with open(tmp, "w") as f:
                    f.write(text)
            assert out.read_text() == text
        else:
            write_into(str(out), text=text)
            assert (out / "OURS").read_text() == text

    killed = _start_writer(tmp_path, out, kind, "killed")
    killed.kill()  # kill -9: no finally block runs
    killed.wait(timeout=30)
    assert any(n.startswith(".out.partial-") for n in os.listdir(home)), "the killed writer left nothing to clean"
    # files that only look like temporaries are the user's: they stay
    lookalikes = [".out.partial-1-deadbeef", ".out.partial-2-deadbeef.lock"]
    (home / lookalikes[0]).write_text("the user's file")
    (home / lookalikes[1]).write_text("not a claim")
    write("complete")
    assert sorted(os.listdir(home)) == sorted(lookalikes + ["out"])
    # a living writer's temporary and claim stay too
    alive = _start_writer(tmp_path, out, kind, "alive")
    try:
        alive_claim = sorted(n for n in os.listdir(home) if n.startswith(f".out.partial-{alive.pid}-"))
        assert len(alive_claim) == 2  # its temporary and its lock file
        write("again")
        assert sorted(os.listdir(home)) == sorted(lookalikes + ["out"] + alive_claim)
    finally:
        alive.terminate()  # SIGTERM: its own finally removes its claim
        alive.wait(timeout=30)
    assert sorted(os.listdir(home)) == sorted(lookalikes + ["out"])


@pytest.mark.parametrize("writer", ["video", "encoding", "marker"])
def test_every_writer_removes_a_dead_writers_temporaries(tmp_path, writer):
    """What a killed writer leaves (its temporary and its unlocked claim, as `Temporary` makes them) beside
    the video, encoding or work-directory marker it was writing is removed by the next write of that file."""
    name = {"video": "out.mp4", "encoding": "clip.enc", "marker": "done.json"}[writer]
    stem = tmp_path / f".{name}.partial-99999-0123abcd"
    (tmp_path / f"{stem.name}.tmp").write_bytes(b"half an encoding")
    (tmp_path / f"{stem.name}.lock").write_bytes(atomic._CLAIM)
    (tmp_path / f".{stem.name}.partial-99999-4567cdef.mp4").write_bytes(b"a nested temporary")
    (tmp_path / f".{stem.name}.partial-99999-4567cdef.lock").write_bytes(atomic._CLAIM)
    path = str(tmp_path / name)
    if writer == "video":
        from stylejax.io.video import write_video

        write_video(path, [np.zeros((16, 16, 3), np.uint8)] * 2, fps=10)
    elif writer == "encoding":
        from stylejax.io.encoding import Encoding, save_encoding

        save_encoding(path, Encoding(id_latent=np.zeros((2, 4)), pose_deg=np.zeros((1, 3)), offsets=np.zeros((1, 0)),
                                     channels=(), fps=10.0, resolution=16, generator_fingerprint="0" * 16,
                                     pose_model="styleflow-rk4-8", cond_src=np.zeros(17)))
    else:
        atomic.write_json(path, {"signature": "x"})
    assert os.listdir(tmp_path) == [name]


def test_check_outputs_across_outputs(place):
    """Two outputs never share a path or hold one another, except a file kept in a work directory (resumed,
    never removed as a whole), even one still to be made; nothing is created by the checks."""
    before = tree(place)
    work = atomic.Output(str(place / "wd"), "--workdir", lambda p: os.path.isfile(os.path.join(p, "OURS")),
                         "a work directory", folder=True, resume=True)
    enc = atomic.Output(str(place / "wd" / "clip.enc"), "--out")
    assert atomic.check_outputs([enc, work]) == [str(place / "wd" / "clip.enc"), str(place / "wd")]
    with pytest.raises(OutputError, match="are the same path or one holds the other"):
        atomic.check_outputs([atomic.Output(str(place / "a.mp4"), "--out"),
                              atomic.Output(str(place / "a.mp4"), "--side-by-side")])
    with pytest.raises(OutputError, match="are the same path or one holds the other"):
        atomic.check_outputs([atomic.Output(str(place / "prev" / "x"), "--out"),
                              atomic.Output(str(place / "prev"), "--outdir", folder=True)])
    with pytest.raises(OutputError, match="it is or contains the input"):  # overwrite or not
        atomic.check_outputs([atomic.Output(str(place / "data" / "video.mp4"), "--out")],
                             inputs=[str(place / "data" / "video.mp4")], overwrite=True)
    assert tree(place) == before


_LONG_JIT = """
import os, signal, sys
import jax, jax.numpy as jnp, numpy as np
from stylejax import cli
from stylejax.io import atomic
from stylejax.io.video import VideoWriter
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
out, video, ready = sys.argv[1], sys.argv[2], sys.argv[3]


@jax.jit
def hours(x):  # one XLA call that does not return for hours: Python signal handlers cannot run meanwhile
    inner = lambda i, v: jax.lax.fori_loop(0, 1 << 30, lambda j, w: w * 1.0000001 + 1e-9, v)
    return jax.lax.fori_loop(0, 1 << 30, inner, x)


def main(args):
    with atomic.output_dir(out, overwrite=True, is_ours=lambda p: True) as tmp, \\
            atomic.output_file(video, overwrite=True) as tmp_video:
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("half")
        writer = VideoWriter(tmp_video, 10)  # an ffmpeg child writing its own temporary
        writer.write(np.zeros((16, 16, 3), np.uint8))
        hours.lower(jnp.ones(4)).compile()
        open(ready, "w").close()
        return {"x": float(hours(jnp.ones(4))[0])}

sys.exit(cli.run("t", "", lambda fv: None, main, []))
"""


@pytest.mark.parametrize("sig,code,err", [(signal.SIGTERM, 143, ""), (signal.SIGINT, 130, "error: interrupted\n")])
def test_signal_stops_a_long_jitted_computation_promptly(tmp_path, sig, code, err):
    """The issue: SIGTERM was ignored for as long as a jitted computation ran (the handler waited for it to
    return). Now the command ends within a few seconds (the grace is 1 s; the computation would run for
    hours), with the old outputs intact and no temporary left."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old output")
    (tmp_path / "clip.mp4").write_text("old video")
    ready = tmp_path / "ready"
    script = tmp_path / "script.py"
    script.write_text(_LONG_JIT)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(tmp_path / "clip.mp4"), str(ready)],
                            env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"), stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "timed out"
    time.sleep(0.5)  # inside the computation
    proc.send_signal(sig)
    try:
        assert proc.wait(timeout=15) == code
    finally:
        proc.kill()
    assert proc.stderr.read() == err
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "out", "ready", "script.py"]
    assert os.listdir(out) == ["old.txt"] and (out / "old.txt").read_text() == "old output"
    assert (tmp_path / "clip.mp4").read_text() == "old video"
    time.sleep(1.0)  # a surviving ffmpeg child would have (re)created its temporary by now
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "out", "ready", "script.py"]
