"""Throughput of the alignment stage at 720p and 1080p input (aligned output 1024²), before and after the
landmark workers.

    python scripts/bench_align.py [--frames 96] [--size 1024] [--workers 2] [--cores 2]

Inputs: ../shared/fixtures/4491301_unaligned.mp4 (1280x720) and the same clip scaled to 1920x1080 (made in a
temporary folder with the bundled ffmpeg). For each: "before", the landmarks in the stage's own thread
(`--workers 0`, the stage as it was), and "after", `--workers N` landmark processes (started once, outside
the timed run, as `stylejax.batch` keeps them). The landmarks must be identical (checked).

Prints, per run: wall-clock frames/s on this machine now, the CPU time per frame of each part (the decode +
track thread, the render thread, the landmark workers on frames (their start-up, paid once per process, beside
it), the ffmpeg decoder) and the frames/s those imply on `--cores` idle cores: 1000 / max(busiest thread,
workers' share, total / cores). The wall numbers mean little
on a shared machine (the load average is printed); the CPU numbers do not depend on the load.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from stylejax import align as al  # noqa: E402
from stylejax.align.workers import LandmarkWorkers  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(REPO), "shared", "fixtures")


def _children_cpu():
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def bench(video, frames, size, workers, cores, refine=1):
    """One timed alignment; returns (wall frames/s, expected frames/s on `cores` idle cores, landmarks)."""
    pool = LandmarkWorkers(workers) if workers else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kid0 = _children_cpu()
            t0 = time.perf_counter()
            tf = al.align_video(video, os.path.join(tmp, "out"), size=size, max_frames=frames, refine=refine,
                                log=lambda m: None, workers=pool)
            wall = time.perf_counter() - t0
            ffmpeg_s = _children_cpu() - kid0  # the decoder (workers are still running: not counted yet)
    finally:
        if pool is not None:
            pool.close()
    n = len(tf["valid"])
    w, h = tf["frame_size"]
    timing = tf["timing_s"]
    main_ms, render_ms = 1000 * timing["main_thread_cpu"] / n, 1000 * timing["render_thread_cpu"] / n
    workers_ms = 1000 * sum(c or 0.0 for c in pool.cpu_s) / n if pool is not None else 0.0
    ffmpeg_ms = 1000 * ffmpeg_s / n
    total_ms = main_ms + render_ms + workers_ms + ffmpeg_ms
    busiest = max(main_ms, render_ms, workers_ms / max(workers, 1))
    idle_fps = 1000 / max(busiest, total_ms / cores)
    label = f"{w}x{h}, {'--no-refine, ' if not refine else ''}workers {workers}"
    start = f" (+{sum(c or 0.0 for c in pool.start_cpu_s):.1f} s to start)" if pool is not None else ""
    print(f"| {label} | {n / wall:.1f} | {main_ms:.1f} | {render_ms:.1f} | {workers_ms:.1f}{start} | {ffmpeg_ms:.1f} | "
          f"{total_ms:.1f} | **{idle_fps:.0f}** |", flush=True)
    return n / wall, idle_fps, tf["landmarks"]


def scaled_copy(video, width, height, directory):
    import imageio_ffmpeg

    out = os.path.join(directory, f"scaled_{width}x{height}.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", video, "-vf",
                    f"scale={width}:{height}:flags=lanczos", "-c:v", "libx264", "-crf", "16", "-pix_fmt", "yuv420p",
                    out], check=True)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2, help="landmark workers of the 'after' runs")
    p.add_argument("--cores", type=int, default=2, help="idle cores the expected frames/s assume")
    p.add_argument("--fixtures", default=FIXTURES)
    args = p.parse_args()
    src = os.path.join(args.fixtures, "4491301_unaligned.mp4")
    if not os.path.isfile(src):
        sys.exit(f"error: {src} not found; pass --fixtures DIR (the folder of the shared real-footage fixtures)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    print(f"\n{args.frames} frames, output {args.size}², CPU ms per frame; expected frames/s on {args.cores} idle cores\n")
    print("| input, landmarks | wall frames/s now | decode + track thread | render thread | landmark workers | "
          "ffmpeg | total | expected on idle cores |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {"720p": src, "1080p": scaled_copy(src, 1920, 1080, tmp)}
        for name, video in inputs.items():
            before = bench(video, args.frames, args.size, 0, args.cores)
            after = bench(video, args.frames, args.size, args.workers, args.cores)
            if not np.array_equal(before[2], after[2]):
                sys.exit(f"error: the landmarks of {name} differ with {args.workers} workers")
            results[name] = (before, after)
        bench(src, args.frames, args.size, 0, args.cores, refine=0)
    print(f"\nlandmarks identical with and without workers: yes. Load average {os.getloadavg()[0]:.1f} at the end.")
    for name, (before, after) in results.items():
        print(f"{name}: expected on {args.cores} idle cores {before[1]:.0f} -> {after[1]:.0f} frames/s "
              f"(goal >= 30 at 720p: {'met' if name != '720p' or after[1] >= 30 else 'not met'}); "
              f"wall now {before[0]:.1f} -> {after[0]:.1f} frames/s")


if __name__ == "__main__":
    main()
