"""Throughput of the alignment stage: frames/s for a 720p and a 1024² input, aligned output 1024².

    python scripts/bench_align.py [--frames 48] [--size 1024] [--resample cubic]

Prints, per input: wall-clock frames/s for the whole stage (pass 1: decode + landmarks, pass 2: decode +
render + write frames.npy), the CPU time per frame of this process and of the ffmpeg decoders, and the load
average, because the numbers are only meaningful relative to how busy the machine was.
"""
import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stylejax import align as al  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "fixtures")


def _cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def bench(video, frames, size, resample, refine=1):
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, kid0 = _cpu()
        t0 = time.perf_counter()
        tf = al.align_video(video, os.path.join(tmp, "out"), size=size, max_frames=frames, resample=resample,
                            refine=refine, log=lambda m: None)
        wall = time.perf_counter() - t0
        cpu1, kid1 = _cpu()
    n = len(tf["valid"])
    w, h = tf["frame_size"]
    timing = tf["timing_s"]
    main_ms, render_ms = 1000 * timing["main_thread_cpu"] / n, 1000 * timing["render_thread_cpu"] / n
    ffmpeg_ms = 1000 * (kid1 - kid0) / n
    # On 2 idle cores the stage is bound by its busiest thread (dlib holds the GIL; OpenCV's render thread and
    # the ffmpeg decoder run beside it) or by the total CPU work spread over both cores.
    idle_fps = 1000 / max(main_ms, render_ms, (main_ms + render_ms + ffmpeg_ms) / 2)
    print(f"{w}x{h} -> {size}² ({n} frames, {resample}{'' if refine else ', --no-refine'}): {n / wall:.1f} frames/s wall on this run; CPU per frame: "
          f"decode+landmarks thread {main_ms:.0f} ms, render thread {render_ms:.0f} ms, ffmpeg {ffmpeg_ms:.0f} ms "
          f"-> ~{idle_fps:.0f} frames/s expected on 2 idle cores")
    return n / wall


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--resample", default="cubic", choices=["cubic", "lanczos", "linear"])
    p.add_argument("--fixtures", default=FIXTURES)
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          f"(a shared machine makes wall-clock numbers low)")
    fps = {}
    for name in ("4491301_unaligned.mp4", "4491301_aligned.mp4"):
        fps[name] = bench(os.path.join(args.fixtures, name), args.frames, args.size, args.resample)
    bench(os.path.join(args.fixtures, "4491301_unaligned.mp4"), args.frames, args.size, args.resample, refine=0)
    print(f"load average {os.getloadavg()[0]:.1f} at the end; goal >= 15 frames/s at 720p: "
          f"{'met' if fps['4491301_unaligned.mp4'] >= 15 else 'not met'} on this run")


if __name__ == "__main__":
    main()
