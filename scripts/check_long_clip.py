"""A long clip encodes on a host that cannot hold its frames: memory bounded by the chunk size, not the length.

    python scripts/check_long_clip.py [--minutes 10] [--fps 15] [--size 256] [--cap-gb 1.5] [--chunk 64]

Writes a synthetic face clip (`stylejax.demo.face_frames`: dlib really aligns it) of `--minutes` at `--fps`,
`--size`² px, streamed to H.264 (it is never in memory whole), and runs `python -m stylejax.batch` on it with
the demo's tiny networks and one optimiser step per stage, aligned at `--size` (so the aligned frames are as
large as the decoded ones), under a per-process memory cap (RLIMIT_DATA: heap and anonymous memory; the
memory-mapped frame files are the page cache's, which a memory-limited host evicts). The cap is smaller than
the decoded clip and than its aligned frames. Prints the sizes, the exit status, and the peak anonymous
resident memory (RssAnon, sampled every 0.5 s) of the encoder process and of the alignment processes.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def rss_anon_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        out.extend(kids)
        todo.extend(kids)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--cap-gb", type=float, default=1.5)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--keep", default=None, help="keep the clip and the output in this folder")
    args = p.parse_args()
    from stylejax import demo
    from stylejax.io import checkpoint
    from stylejax.io.video import VideoWriter

    n = int(round(args.minutes * 60 * args.fps))
    frame_bytes = args.size * args.size * 3
    cap = int(args.cap_gb * 2 ** 30)
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or tmp
        os.makedirs(os.path.join(d, "videos"), exist_ok=True)
        video = os.path.join(d, "videos", "long.mp4")
        t0 = time.perf_counter()
        with VideoWriter(video, args.fps) as w:
            for frame in demo.face_frames(n, seed=0, size=args.size):
                w.write(frame)
        print(f"clip: {n} frames ({args.minutes:g} min at {args.fps:g} fps), {args.size}² px: decoded "
              f"{n * frame_bytes / 2 ** 30:.2f} GiB, aligned at {args.size}² another {n * frame_bytes / 2 ** 30:.2f} "
              f"GiB; file {os.path.getsize(video) / 2 ** 20:.1f} MiB, written in {time.perf_counter() - t0:.0f} s")
        nets = {}
        os.makedirs(os.path.join(d, "nets"), exist_ok=True)
        for name, net in zip(("generator", "e4e", "styleflow"), demo.tiny_networks()):
            nets[name] = os.path.join(d, "nets", name)
            if not os.path.isdir(nets[name]):
                checkpoint.save_network(net, nets[name])
        cmd = [sys.executable, "-m", "stylejax.batch", "--videos", os.path.join(d, "videos"),
               "--out", os.path.join(d, "out"), *[f"--{k}={v}" for k, v in nets.items()], "--json",
               "--align-workers", "1", "--config", os.path.join(REPO, "configs", "encode_tiny.py"),
               f"--config.chunk_size={args.chunk}", f"--config.align.size={args.size}", "--config.invert.steps=1",
               "--config.head_pose.steps=1", "--config.attributes.steps=1"]
        limit = lambda: resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        print(f"memory cap (RLIMIT_DATA, every process): {args.cap_gb:g} GiB")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
        peak_main, peak_others = 0, 0
        while proc.poll() is None:
            peak_main = max(peak_main, rss_anon_kb(proc.pid) or 0)
            peak_others = max(peak_others, sum(rss_anon_kb(k) or 0 for k in descendants(proc.pid)))
            time.sleep(0.5)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t0
        result = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
        print(f"exit status {proc.returncode} after {wall:.0f} s; peak RssAnon: encoder process "
              f"{peak_main / 2 ** 20:.2f} GiB, alignment processes together {peak_others / 2 ** 20:.2f} GiB")
        if result is None:
            print("error:", stderr.strip().splitlines()[-3:])
            sys.exit(1)
        print(f"batch: {result['batch']}, frames encoded {result['frames_encoded']}, time in the encoder "
              f"{result['encode_s']:.0f} s")
        with open(os.path.join(d, "out", "summary.json")) as f:
            row = json.load(f)["videos"][0]
        print(f"video: {row['status']}, {row['frames']} frames, {row['seconds']:.0f} s, {row['reason'] or ''}")


if __name__ == "__main__":
    main()
