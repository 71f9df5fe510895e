"""PSNR gained by generator fine-tuning against the size of the delta, for each delta form (docs/finetune.md).

  python scripts/bench_finetune.py [--frames 16] [--steps 100] [--lr 3e-3] [--ranks 1,2,4,8] [--json]

The closed loop of tests/stages/test_finetune.py at the demo's size: the demo's random 32 px networks, a clip
rendered from a known encoding by a *perturbed* generator (every synthesis weight moved by --perturbation x
its tensor's standard deviation x N(0, 1)), encoded with configs/encode_tiny.py by the unperturbed one and
fine-tuned for --steps steps (the stage writes the full float32 delta, i.e. the tuned weights). Every form is
then made from those tuned weights, saved, read back and applied, and the saved encoding is rendered through
it: mean PSNR against the clip, the gain over the untuned re-synthesis, and the delta's bytes, here and (from
the parameter shapes alone) for StyleGAN2 config-f at 1024².
"""
import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402


def perturbed(g, amount, seed=1):
    import jax
    import jax.numpy as jnp

    from stylejax.io.delta import flatten, unflatten
    from stylejax.stages.finetune import tuned

    rng = np.random.default_rng(seed)
    moved = {k: (np.asarray(v) + amount * np.std(np.asarray(v)) * rng.standard_normal(np.shape(v))).astype(np.float32)
             for k, v in flatten(g.params["synthesis"]).items()}
    return tuned(g, jax.tree_util.tree_map(jnp.asarray, unflatten(moved)))


def psnr(enc, g, flow, frames):
    import jax.numpy as jnp

    from stylejax import metrics
    from stylejax.decoder import iter_renders

    images = np.concatenate([img for _, _, img in iter_renders(enc, g, flow)])
    return float(np.mean(np.asarray(metrics.psnr(jnp.asarray(images), jnp.asarray(frames / 127.5 - 1.0)))))


def config_f_bytes(rank, dtype_bytes):
    """Bytes of a delta of every synthesis parameter of config-f 1024 in this form (shapes only)."""
    from stylejax.nets.generator import Generator, config_f

    total = 0
    for name, shape in Generator.expected_shapes(config_f()).items():
        if not name.startswith("params/synthesis/"):
            continue
        size = int(np.prod(shape))
        if rank and len(shape) >= 2:
            rows, cols = int(np.prod(shape[:-1])), shape[-1]
            if rank < min(rows, cols):
                size = rank * (rows + cols)
        total += size * dtype_bytes
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps")
    p.add_argument("--lr", type=float, default=3e-3, help="fine-tuning learning rate")
    p.add_argument("--ranks", default="1,2,4,8", help="low-rank forms to measure")
    p.add_argument("--perturbation", type=float, default=0.05)
    p.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = p.parse_args()
    if args.frames < 2 or args.steps < 1:
        print("error: --frames must be >= 2 and --steps >= 1", file=sys.stderr)
        return 2

    from stylejax import demo, pipeline
    from stylejax.io.delta import load_delta, save_delta
    from stylejax.io.encoding import load_encoding
    from stylejax.stages.finetune import make_delta

    t0 = time.perf_counter()
    g, e4e, flow = demo.tiny_networks()
    lp, _ = demo.lpips_network()
    nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp).check()
    truth = demo.ground_truth(g, flow, args.frames)
    config = demo.load_config(demo.TINY_CONFIG)
    frames = demo.synthesise(perturbed(g, args.perturbation), flow, *truth, int(config.head_pose.rk4_steps))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "channels.json"), "w") as f:
            json.dump({"channels": truth[3]}, f)
        config.attributes.channels = os.path.join(d, "channels.json")
        config.chunk_size = args.frames
        config.finetune.steps, config.finetune.lr = args.steps, args.lr
        config.finetune.delta_rank, config.finetune.delta_dtype = 0, "float32"  # the tuned weights, exactly
        workdir = demo.synthetic_workdir(os.path.join(d, "workdir"), frames, truth[1])
        pipeline.encode(workdir, nets, config, out=os.path.join(d, "clip.enc"), log=lambda m: print(m, file=sys.stderr))
        enc = load_encoding(os.path.join(d, "clip.enc"))
        full = load_delta(os.path.join(d, "clip.delta"), g)
        tuned_syn = full.apply(g).params["synthesis"]
        base = psnr(enc, g, flow, frames)
        forms = [(0, "float32"), (0, "float16")] + [(int(r), "float16") for r in args.ranks.split(",") if r]
        for rank, dtype in forms:
            delta = make_delta(g.params["synthesis"], tuned_syn, full.base_fingerprint, rank, dtype)
            path = os.path.join(d, f"form-{rank}-{dtype}.delta")
            save_delta(path, delta)
            value = psnr(enc, load_delta(path, g).apply(g), flow, frames)
            rows.append({"form": delta.form, "dtype": dtype, "bytes": os.path.getsize(path), "tensor_bytes": delta.nbytes,
                         "psnr_db": round(value, 2), "gain_db": round(value - base, 2),
                         "config_f_bytes": config_f_bytes(rank, np.dtype(dtype).itemsize)})
    print(f"closed loop: {args.frames} frames, perturbation {args.perturbation}, {args.steps} steps at lr {args.lr}; "
          f"untuned re-synthesis {base:.2f} dB; {time.perf_counter() - t0:.0f} s")
    print("| form | dtype | file bytes (32 px demo) | PSNR dB | gain dB | bytes at config-f 1024 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['form']} | {r['dtype']} | {r['bytes']:,} | {r['psnr_db']:.2f} | {r['gain_db']:+.2f} | "
              f"{r['config_f_bytes'] / 1e6:,.1f} MB |")
    if args.json:
        print(json.dumps({"untuned_psnr_db": base, "rows": rows, "frames": args.frames, "steps": args.steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
