"""The temporal prior on the closed loop: weight -> PSNR, flicker (tLP), offsets and pose error
(docs/encoder.md#temporal-prior).

  python scripts/table_temporal_prior.py [--frames 32] [--noise 4] [--weights 0,1e-4,1e-3,1e-2,1e-1] \
      [--chunk 16] [--overlap 4] [--outdir out/temporal] [--json]

The demo's networks (stylejax.demo) and a clip synthesised from a known identity with smooth yaw, pitch, roll and
32 offsets (one period over the clip), plus independent Gaussian noise of `--noise` uint8 levels on every
pixel of every frame (sensor noise: per-frame detail the encoder should not turn into motion). Each weight
encodes the noisy clip with configs/encode_tiny.py (the invert, select_id and head_pose stages are shared; the
attributes stage runs per weight, in chunks of `--chunk` with `--overlap` frames of context); the pose weight
is weight / 10 (one degree costs what 0.32 channel standard deviations cost). Measured on the float32
parameters: PSNR against the noisy input and against the clean clip, tLP against the clean clip, and the
parameter errors against the truth.
"""
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    import argparse

    from stylejax import demo, metrics, pipeline
    from stylejax.decoder import iter_renders

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--noise", type=float, default=4.0, help="noise std in uint8 levels")
    ap.add_argument("--weights", default="0,1e-4,1e-3,1e-2,1e-1")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--outdir", default="out/temporal")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    g, e4e, flow = demo.tiny_networks()
    lp, _ = demo.lpips_network()
    nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp).check()
    config = demo.load_config(demo.TINY_CONFIG)
    truth = demo.ground_truth(g, flow, args.frames)
    id_true, pose_true, off_true, channels = truth
    clean = demo.synthesise(g, flow, *truth, int(config.head_pose.rk4_steps))
    rng = np.random.RandomState(1)
    noisy = np.clip(np.rint(clean + rng.randn(*clean.shape) * args.noise), 0, 255).astype(np.uint8)

    os.makedirs(args.outdir, exist_ok=True)
    channels_file = os.path.join(args.outdir, "channels.json")
    with open(channels_file, "w") as f:
        json.dump({"channels": channels}, f)
    config.attributes.channels = channels_file
    config.chunk_size = args.chunk
    config.microbatch = 0
    config.render.report = False
    config.render.face_metrics = False
    base = os.path.join(args.outdir, "base")
    if os.path.isdir(base):
        shutil.rmtree(base)
    rows = []
    for weight in (float(w) for w in args.weights.split(",")):
        config.attributes.temporal_weight = weight
        config.attributes.temporal_pose_weight = weight / 10
        config.attributes.temporal_overlap = args.overlap
        if not os.path.isdir(base):
            workdir = demo.synthetic_workdir(base, noisy, pose_true)
        else:
            path = os.path.join(args.outdir, f"w{weight:g}")
            if os.path.isdir(path):
                shutil.rmtree(path)
            shutil.copytree(base, path)
            workdir = pipeline.Workdir(path)
        enc, _ = pipeline.encode(workdir, nets, config, log=lambda msg: None)
        fm_clean = metrics.FrameMetrics(lp, g.config.resolution, faces=False)
        fm_noisy = metrics.FrameMetrics(lp, g.config.resolution, faces=False)
        for lo, hi, img in iter_renders(enc, g, flow, chunk=args.chunk):
            fm_clean.add(img, clean[lo:hi])
            fm_noisy.add(img, noisy[lo:hi])
        c, n = fm_clean.summary(), fm_noisy.summary()
        idf = int(enc.settings["id_frame"])
        rel = lambda a: a - a[idf]
        amp = np.abs(off_true).max(axis=0) + 1e-8
        off_err = np.abs(enc.offsets - rel(off_true)).max(axis=0) / amp
        rms_err = np.sqrt(np.mean((enc.offsets - rel(off_true)) ** 2))
        jitter = np.sqrt(np.mean(np.diff(enc.offsets - rel(off_true), axis=0) ** 2))
        rows.append({"weight": weight, "pose_weight": weight / 10, "psnr_noisy_db": n["psnr_db"],
                     "psnr_clean_db": c["psnr_db"], "tlp_clean": c["tlp"],
                     "offsets_rel_median": float(np.median(off_err)), "offsets_rms_std": float(rms_err),
                     "offsets_error_jitter_std": float(jitter),
                     "yaw_max_err_deg": float(np.abs(enc.pose_deg[:, 0] - rel(pose_true[:, 0])).max()),
                     "pitch_max_err_deg": float(np.abs(enc.pose_deg[:, 1] - rel(pose_true[:, 1])).max())})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"frames": args.frames, "noise": args.noise, "chunk": args.chunk,
                          "overlap": args.overlap, "rows": rows}))
        return
    print(f"{args.frames} frames, noise {args.noise:g} levels, chunks of {args.chunk}, overlap {args.overlap}")
    print("| weight (pose weight) | PSNR vs noisy input / clean clip (dB) | tLP vs clean | offsets error: median "
          "rel. max / RMS / frame-to-frame RMS (std) | max error yaw / pitch (deg) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['weight']:g} ({r['pose_weight']:g}) | {r['psnr_noisy_db']:.2f} / {r['psnr_clean_db']:.2f} | "
              f"{r['tlp_clean']:.3f} | {r['offsets_rel_median']:.3f} / {r['offsets_rms_std']:.4f} / "
              f"{r['offsets_error_jitter_std']:.4f} | {r['yaw_max_err_deg']:.2f} / {r['pitch_max_err_deg']:.2f} |")


if __name__ == "__main__":
    main()
