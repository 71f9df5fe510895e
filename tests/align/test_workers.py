"""Landmarks in worker processes (`stylejax.align.workers`): the same landmarks as in one process, frame order
kept, a pool reused across videos (also after a video that failed), and workers that die with their parent.

The clips are `stylejax.demo.face_clip` (scikit-image's astronaut, moved): real dlib detection and landmarks
without the shared fixtures. About 15 s on 2 CPU cores, mostly starting workers (each loads dlib's models).
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("skimage.data")

from conftest import REPO  # noqa: E402
from stylejax import align as al  # noqa: E402
from stylejax.demo import face_clip  # noqa: E402
from stylejax.io.video import write_video  # noqa: E402


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    paths = {}
    for name, n, seed in (("a", 11, 0), ("b", 7, 1)):
        paths[name] = str(d / f"{name}.mp4")
        write_video(paths[name], face_clip(n, seed), 25.0)
    paths["noise"] = str(d / "noise.mp4")
    write_video(paths["noise"], list(np.random.RandomState(0).randint(0, 256, (4, 160, 160, 3), dtype=np.uint8)), 25.0)
    return paths


def test_workers_give_the_landmarks_of_one_process(clips, tmp_path):
    from stylejax.align.workers import LandmarkWorkers

    quiet = lambda msg: None
    alone = {k: al.track_landmarks(clips[k], log=quiet) for k in ("a", "b")}
    with LandmarkWorkers(2) as pool:  # one pool for several videos, as the batch keeps it
        for k in ("a", "b"):
            lm, valid, _ = al.track_landmarks(clips[k], log=quiet, workers=pool)
            assert valid.all() and len(valid) == len(alone[k][1])
            # frame t is computed by worker t mod 2 from the same frame and box: the same numbers, in order
            np.testing.assert_array_equal(lm, alone[k][0])
        with pytest.raises(al.AlignError, match="no face found"):
            al.track_landmarks(clips["noise"], max_gap=1, log=quiet, workers=pool)
        lm, _, _ = al.track_landmarks(clips["b"], log=quiet, workers=pool)  # nothing of the failed video left over
        np.testing.assert_array_equal(lm, alone["b"][0])
        tf = al.align_video(clips["a"], str(tmp_path / "aligned"), size=32, log=quiet, workers=pool)
    np.testing.assert_array_equal(tf["landmarks"], alone["a"][0])
    assert pool.in_flight == 0 and all(c is not None and c > 0 for c in pool.cpu_s)


PARENT = """
import sys, time
sys.path.insert(0, {repo!r})
from stylejax.align.workers import LandmarkWorkers
pool = LandmarkWorkers(1)
print(pool._procs[0].pid, flush=True)
time.sleep(600)
"""


def test_workers_die_with_their_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(repo=REPO)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        os.kill(worker, 0)  # running
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not _alive(worker):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the landmark worker outlived its parent")
    finally:
        parent.kill()
        parent.wait()


def _alive(pid):
    """Running (a zombie waiting for whoever inherited it to reap it counts as dead)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
