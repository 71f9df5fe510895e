"""Landmarks of several frames at once, in worker processes.

dlib holds the GIL while it predicts, so threads do not run two frames at once; processes do. Face tracking
(where to look in frame t depends on the box of frame t-1) stays sequential in the caller and is cheap; the
68-point prediction and its refinement (`landmarks.frame_landmarks`: 6 predictor runs and an upright warp,
about 4/5 of the stage's landmark time) depend on one frame and its box only, so frame t goes to worker
t mod n and the results come back in frame order. The workers compute the same function on the same inputs
as the caller would: the landmarks are identical with and without them.

    with LandmarkWorkers(2) as workers:          # persistent: reuse it for many videos
        workers.submit(gray, box, refine=1)      # frames in order ...
        lm = workers.collect()                   # ... results in the same order

Workers are started with `spawn` (never `fork`: the caller may run JAX or threads) and ask Linux to kill them
when their parent dies (`PR_SET_PDEATHSIG`), so a `kill -9` of the caller leaves no worker behind. They read
frames and return numbers; they never write a file.
"""
from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import time

from stylejax.errors import UserError


class LandmarkWorkerError(UserError, RuntimeError):
    """A landmark worker process died or failed."""


def die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent exits (also after `kill -9` of the parent)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers end when their task queue closes
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _serve(tasks, results, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    import cv2

    from stylejax.align.landmarks import _models, frame_landmarks

    cv2.setNumThreads(1)  # one frame per worker: the workers are the parallelism
    _models()
    ready = time.process_time()
    results.put(("ready", None))
    while True:
        task = tasks.get()
        if task is None:  # for benchmarks: CPU seconds on frames, and on starting (imports, dlib's models)
            results.put(("cpu_s", (time.process_time() - ready, ready)))
            return
        seq, gray, box, refine = task
        try:
            results.put((seq, frame_landmarks(gray, box, refine)))
        except Exception as err:  # noqa: BLE001 - reported to the caller as one line
            results.put((seq, err if isinstance(err, UserError) else RuntimeError(f"{type(err).__name__}: {err}")))


@contextlib.contextmanager
def _without_main_module():
    """Workers run a function of this package and need nothing of the caller's `__main__`; hiding it while
    they start keeps `spawn` from re-running a caller's script that has no `if __name__ == "__main__"` guard."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__spec__", "__file__") if hasattr(main, k)}
    try:
        if main is not None:
            main.__spec__ = None
            if "__file__" in saved:
                del main.__file__
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class LandmarkWorkers:
    """`n` worker processes computing `frame_landmarks`; results in submission order."""

    def __init__(self, n: int):
        import multiprocessing as mp

        if n < 1:
            raise ValueError(f"LandmarkWorkers needs n >= 1, got {n}")
        ctx = mp.get_context("spawn")
        self.n = n
        self._tasks = [ctx.Queue() for _ in range(n)]
        self._results = [ctx.Queue() for _ in range(n)]
        self._procs = [ctx.Process(target=_serve, args=(self._tasks[k], self._results[k], os.getpid()),
                                   name=f"stylejax-landmarks-{k}", daemon=True) for k in range(n)]
        with _without_main_module():
            for p in self._procs:
                p.start()
        self.submitted = self.collected = 0
        try:
            for k in range(n):
                self._get(k)  # "ready": models loaded, so the first frames are not slow
        except BaseException:
            self.close()
            raise

    @property
    def in_flight(self) -> int:
        return self.submitted - self.collected

    def _get(self, k: int):
        while True:
            try:
                return self._results[k].get(timeout=1.0)
            except queue.Empty:
                if not self._procs[k].is_alive():
                    raise LandmarkWorkerError(f"landmark worker {k} died (exit code {self._procs[k].exitcode}); "
                                              "out of memory? rerun with fewer --align-workers") from None

    def submit(self, gray, box, refine: int = 1) -> None:
        k = self.submitted % self.n
        self._tasks[k].put((self.submitted, gray, tuple(float(v) for v in box), int(refine)))
        self.submitted += 1

    def collect(self):
        """Landmarks [68, 2] of the oldest submitted frame (blocks until it is done)."""
        k = self.collected % self.n
        seq, out = self._get(k)
        if seq != self.collected:
            raise LandmarkWorkerError(f"landmark worker {k} returned frame {seq}, expected {self.collected}")
        self.collected += 1
        if isinstance(out, BaseException):
            raise out
        return out

    def drain(self) -> None:
        """Waits for and drops every submitted result (after an error, so the next video starts clean)."""
        while self.in_flight:
            try:
                self.collect()
            except LandmarkWorkerError:
                raise
            except Exception:  # noqa: BLE001 - results being dropped
                pass

    def close(self) -> None:
        """Stops the workers; `cpu_s` then holds the CPU seconds each spent on frames, `start_cpu_s` on starting
        (None where unknown)."""
        for q in self._tasks:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        self.cpu_s, self.start_cpu_s = [], []
        for k, p in enumerate(self._procs):
            key, value = None, None
            for _ in range(30):  # it may have put its answer and exited already: read the queue first
                try:
                    key, value = self._results[k].get(timeout=1.0)
                    break
                except queue.Empty:
                    if not p.is_alive():
                        break
            self.cpu_s.append(value[0] if key == "cpu_s" else None)
            self.start_cpu_s.append(value[1] if key == "cpu_s" else None)
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for q in self._tasks + self._results:
            q.close()
            q.cancel_join_thread()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def default_workers() -> int:
    """Landmark workers for this machine: one per core the process may use, at most 8 (a video's frames
    arrive from one decoder and one tracker; beyond ~8 workers they are the bottleneck)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))
