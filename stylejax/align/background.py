"""Alignment in a background process: the next videos of a batch are aligned into their work directories
(CPU: decoding, dlib, crops) while this process's devices optimise the current one.

    runner = AlignRunner(workers=3)         # a spawned process, started with the first job
    runner.submit({"id": ..., "video": ..., "workdir": ..., "signature": align_signature(...), ...})
    result = runner.wait(id)                # {"status": "ok" | "failed", "reason", "final", "seconds"}

The process writes only into the work directories it is sent (whose locks its owner holds), dies with its
owner (`PR_SET_PDEATHSIG`: a `kill -9` of the owner leaves no writer behind) and is killed by `close()`
before the owner lets go of the locks. It imports no JAX.
"""
import os
import queue
import shutil
import time

from stylejax.errors import UserError


def one_line(err):
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:500]


def align_signature(video_path, size, align_config):
    from stylejax.workdir import digest

    return digest({"video": os.path.realpath(video_path), "mtime": os.path.getmtime(video_path), "size": int(size),
                   "config": dict(align_config)})


def align_job(job, workers):
    """Aligns one video into its work directory (in the alignment process). Returns a result dict."""
    from stylejax.align import align_video
    from stylejax.workdir import Workdir

    t0 = time.perf_counter()
    try:
        wd = Workdir(job["workdir"])
        if not wd.is_done("align", job["signature"]):
            wd.reset("align")
            for name in os.listdir(wd.path):  # temporaries of an alignment killed part-way
                if name.startswith(".align."):
                    shutil.rmtree(os.path.join(wd.path, name), ignore_errors=True)
            cfg = job["align"]
            align_video(job["video"], os.path.join(wd.path, "align"), size=int(job["size"]),
                        max_gap=int(cfg["max_gap"]), stabiliser=cfg["stabiliser"], log=lambda msg: None,
                        workers=workers)
            wd.mark_done("align", job["signature"], frames=int(wd.frames().shape[0]))
        return {"status": "ok", "seconds": time.perf_counter() - t0}
    except UserError as e:
        return {"status": "failed", "reason": one_line(e), "final": True, "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - recorded as the video's failure, the batch goes on
        return {"status": "failed", "reason": f"{type(e).__name__}: {one_line(e)}", "final": False,
                "seconds": time.perf_counter() - t0}


def _align_process(jobs, results, parent_pid, workers):
    """The alignment process: aligns the videos it is sent, in order, with its landmark workers."""
    from stylejax.align.stage import landmark_workers
    from stylejax.align.workers import die_with_parent

    die_with_parent(parent_pid)  # it writes into work directories: it must not outlive its owner's locks
    with landmark_workers(workers) as pool:
        results.put(("ready", None))
        while True:
            job = jobs.get()
            if job is None:
                return
            results.put((job["id"], align_job(job, pool)))


class AlignRunner:
    """A CPU process aligning the next videos while this one's devices optimise the current video. If it dies
    (out of memory, killed), the video it was on is reported failed (to be tried again by a rerun) and a new
    process takes the other jobs."""

    def __init__(self, workers):
        self.workers = int(workers)
        self.proc = None
        self.open = {}  # submitted, not yet answered: id -> job
        self.finished = {}

    def _start(self):
        import multiprocessing as mp

        from stylejax.align.workers import _without_main_module

        ctx = mp.get_context("spawn")
        self.jobs, self.results = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_align_process, args=(self.jobs, self.results, os.getpid(), self.workers),
                                name="stylejax-align")
        with _without_main_module():
            self.proc.start()

    def submit(self, job):
        if self.proc is None:  # started with the first video that needs aligning
            self._start()
        self.open[job["id"]] = job
        self.jobs.put(job)

    def wait(self, job_id):
        while job_id not in self.finished:
            try:
                key, value = self.results.get(timeout=1.0)
            except queue.Empty:
                if not self.proc.is_alive():
                    return self._died(job_id)
                continue
            if key != "ready":
                self.finished[key] = value
                self.open.pop(key, None)
        return self.finished.pop(job_id)

    def _died(self, job_id):
        code = self.proc.exitcode
        self._stop()
        self.open.pop(job_id, None)
        again = list(self.open.values())
        self.open.clear()
        self.proc = None
        for job in again:  # a new process for the videos after this one
            self.submit(job)
        return {"status": "failed", "final": False, "seconds": 0.0,
                "reason": f"the alignment process died (exit code {code}); out of memory? fewer --align-workers"}

    def _stop(self):
        for q in (self.jobs, self.results):
            q.close()
            q.cancel_join_thread()

    def close(self):
        """Stops the process (at once if it is busy: its video stays unfinished) before its videos' locks go."""
        if self.proc is None:
            return
        if self.proc.is_alive() and not self.open:
            self.jobs.put(None)  # idle: let it close its landmark workers
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self._stop()
        self.proc = None
