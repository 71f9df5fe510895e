"""Throughput of `python -m stylejax.batch` against the number of processes, and the device-busy fraction with
and without the alignment overlap, on this machine with the demo's tiny networks.

    python scripts/bench_batch.py [--videos 6] [--frames 16] [--processes 1,2] [--steps 20,10,20]

Makes `--videos` synthetic face clips (`stylejax.demo.face_clip`, 160² px, `--frames` each, so dlib really
aligns them), saves the tiny networks, and runs the batch command in subprocesses on a fresh output folder:
first once to fill a shared JAX compilation cache (not timed: the cache is what a long batch sees after its
first video), then per process count with the alignment overlapped (`--prefetch 1`, the default), and one
process without it (`--prefetch 0`). Several processes run on localhost with `jax.distributed`.

Prints a table: wall time, videos per hour, frames per second, scaling efficiency (throughput / (processes x
the one-process throughput)), the CPU seconds all processes of the run spent per video and the efficiency
that implies for processes on their own hosts (one-process CPU / this run's CPU: the cost of the split, of
starting each process and of meeting), and per process the fraction of its wall time spent in the encoder
(the stages and the evaluation: what keeps the devices busy) and the time it waited for alignment. On one
2-core machine the processes share the same cores, so the wall-clock efficiency measures contention, not the
speed-up of several hosts; on a shared machine the wall times also move with the load (printed).
"""
import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def make_dataset(directory, videos, frames):
    from stylejax import demo
    from stylejax.io import checkpoint
    from stylejax.io.video import write_video

    os.makedirs(os.path.join(directory, "videos"))
    for i in range(videos):
        write_video(os.path.join(directory, "videos", f"clip{i:02d}.mp4"), demo.face_clip(frames, seed=i), 25.0)
    nets = {}
    g, e4e, flow = demo.tiny_networks()
    lp, _ = demo.lpips_network()
    os.makedirs(os.path.join(directory, "nets"))
    for name, net in (("generator", g), ("e4e", e4e), ("styleflow", flow), ("lpips", lp)):
        nets[name] = os.path.join(directory, "nets", name)
        checkpoint.save_network(net, nets[name])
    return nets


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(directory, nets, out, processes, prefetch, steps, cache):
    """Runs the batch with `processes` processes; returns (wall seconds, [per-process JSON summaries])."""
    invert, head_pose, attributes = steps
    cmd = [sys.executable, "-m", "stylejax.batch", "--videos", os.path.join(directory, "videos"), "--out", out,
           *[f"--{k}={v}" for k, v in nets.items()], "--json", "--prefetch", str(prefetch),
           "--config", os.path.join(REPO, "configs", "encode_tiny.py"), "--config.chunk_size=8",
           f"--config.invert.steps={invert}", f"--config.head_pose.steps={head_pose}",
           f"--config.attributes.steps={attributes}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    port = free_port()
    extra = lambda k: ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                       "--process-id", str(k)] if processes > 1 else []
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd + extra(k), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in range(processes)]
    outputs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0  # every process of the run: the batch processes, alignment, ffmpeg
    results = []
    for p, (stdout, stderr) in zip(procs, outputs):
        if p.returncode != 0 or not stdout.strip():
            sys.exit(f"error: the batch failed (exit status {p.returncode}): {stderr.strip().splitlines()[-1:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return wall, cpu, results


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--processes", default="1,2")
    p.add_argument("--steps", default="20,10,20", help="invert, head_pose and attributes steps")
    args = p.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    counts = [int(n) for n in args.processes.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start; {args.videos} clips of "
          f"{args.frames} frames (160² px, aligned to 32²), tiny networks, steps {steps}, chunks of 8 frames")
    with tempfile.TemporaryDirectory() as d:
        nets = make_dataset(d, args.videos, args.frames)
        cache = os.path.join(d, "jax-cache")
        run(d, nets, os.path.join(d, "warm-up"), 1, 1, steps, cache)  # fills the compilation cache
        rows, base, base_cpu = [], None, None
        for n, prefetch in [(n, 1) for n in counts] + [(1, 0)]:
            wall, cpu, results = run(d, nets, os.path.join(d, f"out-{n}-{prefetch}"), n, prefetch, steps, cache)
            frames = sum(r["frames_encoded"] for r in results)
            videos = sum(r["encoded"] for r in results)
            if videos != args.videos:
                sys.exit(f"error: {videos} of {args.videos} videos encoded")
            throughput = frames / wall
            if n == 1 and prefetch == 1:
                base, base_cpu = throughput, cpu
            busy = ", ".join(f"{100 * r['device_busy_fraction']:.0f}%" for r in results)
            waited = ", ".join(f"{r['align_wait_s']:.1f}" for r in results)
            rows.append(f"| {n} | {'yes' if prefetch else 'no'} | {wall:.1f} | {3600 * videos / wall:.0f} | "
                        f"{throughput:.2f} | {100 * throughput / (n * base):.0f}% | {cpu / videos:.1f} | "
                        f"{100 * base_cpu / cpu:.0f}% | {busy} | {waited} |")
    print("\n| processes | alignment overlapped | wall s | videos/hour | frames/s | scaling efficiency (wall) | "
          "CPU s per video | efficiency (CPU) | time in the encoder (per process) | waited for alignment, s "
          "(per process) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
