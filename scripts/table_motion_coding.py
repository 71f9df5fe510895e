"""Bytes per frame and PSNR cost of the compact motion coding ("delta-zstd") against float16, over the PSNR
budget that sets the quantisation steps (docs/encoding-format.md#compact-motion-coding).

  python scripts/table_motion_coding.py --encoding out/demo/demo.enc --aligned out/demo/workdir/align/frames.npy \
      [--budgets 0.01,0.02,0.05,0.1,0.2] [--key-interval 64] [--json]
  python scripts/table_motion_coding.py --workdir out/temporal/base    # an encode work directory of the demo's
                                                                       # networks (scripts/table_temporal_prior.py)

The encoding's float16 motion is the reference (what format 1 and `--config.coding.motion=float16` store);
for each budget the steps are chosen as `encode` chooses them (stylejax.stages.quantise.compact, with
configs/encode.py's coding section), the file is written and read back, and the re-synthesis is measured
against the aligned frames. Networks: the ones recorded in the encoding.
"""
import dataclasses
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(enc, nets, aligned, chunk=16):
    from stylejax.stages.render import evaluate

    cols, _, _ = evaluate(enc, nets, aligned, lpips_size=256, chunk=chunk, faces=False)
    return cols["psnr_db"]


def main():
    import argparse

    from stylejax.demo import load_config
    from stylejax.io.encoding import load_encoding, motion_bytes, save_encoding
    from stylejax.io.video import load_frames
    from stylejax.render import load_for_render
    from stylejax.stages import quantise
    from stylejax.stages.base import Nets, default_lpips

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoding")
    ap.add_argument("--aligned")
    ap.add_argument("--workdir", help="instead of --encoding/--aligned: a work directory made with the demo's networks")
    ap.add_argument("--budgets", default="0.005,0.01,0.02,0.05,0.1,0.2")
    ap.add_argument("--key-interval", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.workdir:
        from stylejax import demo, pipeline

        g, e4e, flow = demo.tiny_networks()
        nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=default_lpips())
        workdir = pipeline.Workdir(args.workdir)
        enc = pipeline.assemble(pipeline.make_context(workdir, nets, load_config(demo.TINY_CONFIG)))
        aligned = workdir.frames()
    else:
        enc, g, flow = load_for_render(args.encoding)
        aligned = load_frames(args.aligned)
        nets = Nets(generator=g, styleflow=flow, lpips=default_lpips())
    enc = dataclasses.replace(enc, motion_step=None)  # the float16 reference
    config = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                      "encode.py")).coding
    if args.key_interval:
        config.key_interval = args.key_interval
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = os.path.join(tmp, "float16.enc")
        save_encoding(ref_path, enc)
        ref = load_encoding(ref_path)
        psnr_ref = measure(ref, nets, aligned)
        rows.append({"budget_db": None, "coding": "float16", "bytes_per_frame": motion_bytes(ref_path) / ref.num_frames,
                     "psnr_db": float(np.mean(psnr_ref)), "loss_db": 0.0, "loss_db_max_frame": 0.0})
        for budget in (float(b) for b in args.budgets.split(",")):
            config.psnr_loss_db = budget
            coded, record = quantise.compact(ref, g, flow, aligned, config)
            path = os.path.join(tmp, f"compact-{budget}.enc")
            save_encoding(path, coded)
            back = load_encoding(path)
            psnr = measure(back, nets, aligned)
            side = 2 * len(coded.motion_step) + 4 * (-(-back.num_frames // back.key_interval) + 1)
            rows.append({"budget_db": budget, "coding": "delta-zstd",
                         "bytes_per_frame": motion_bytes(path) / back.num_frames,
                         "stream_bytes_per_frame": (motion_bytes(path) - side) / back.num_frames,
                         "psnr_db": float(np.mean(psnr)), "loss_db": float(np.mean(psnr_ref) - np.mean(psnr)),
                         "loss_db_max_frame": float(np.max(psnr_ref - psnr)),
                         "step_pose_deg": [float(v) for v in coded.motion_step[:3]],
                         "step_offsets_median_std": float(np.median(coded.motion_step[3:]))})
    if args.json:
        print(json.dumps({"frames": enc.num_frames, "key_interval": int(config.key_interval), "rows": rows}))
        return
    print(f"{enc.num_frames} frames, key frames every {int(config.key_interval)}")
    print("| PSNR budget (dB) | coding | bytes/frame (all motion / stream alone) | PSNR (dB) | loss vs float16 (dB) "
          "mean / worst frame | steps yaw, pitch, roll (deg) / offsets median (std) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        steps = ("" if r["coding"] == "float16" else
                 ", ".join(f"{v:.3g}" for v in r["step_pose_deg"]) + f" / {r['step_offsets_median_std']:.3g}")
        print(f"| {r['budget_db'] if r['budget_db'] is not None else '—'} | {r['coding']} | "
              f"{r['bytes_per_frame']:.1f} / {r.get('stream_bytes_per_frame', r['bytes_per_frame']):.1f} | "
              f"{r['psnr_db']:.2f} | {r['loss_db']:.3f} / {r['loss_db_max_frame']:.3f} | "
              f"{steps} |")


if __name__ == "__main__":
    main()
