"""Render images from a converted StyleGAN2 generator.

  python -m stylejax.generate --checkpoint DIR --seeds 0-3 --trunc 0.7 --noise-mode const --outdir OUT
  python -m stylejax.generate --checkpoint DIR --ws latents.npy --outdir OUT --save-npy

`--seeds` draws z = numpy.random.RandomState(seed).randn(1, z_dim), as NVlabs generate.py does, so a seed
gives the same image in both. PNGs are written as seed%04d.png (or ws%04d.png for --ws);
`--save-npy` also writes the raw float32 images [B, H, W, 3] to OUT/images.npy.
"""
import argparse
import os
import sys

import numpy as np
from stylejax.errors import UserError


class UsageError(UserError):
    pass


def parse_seeds(text):
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    seeds = []
    try:
        for part in str(text).split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-")
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(f"bad --seeds {text!r}; use e.g. '0-3' or '1,5,9'") from None
    if any(s < 0 or s >= 2 ** 32 for s in seeds):
        raise UsageError("seeds must be in [0, 2**32)")
    return seeds


def to_uint8(images):
    """[-1, 1] floats -> uint8, rounding as NVlabs generate.py does."""
    return np.clip(np.asarray(images) * 127.5 + 128, 0, 255).astype(np.uint8)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m stylejax.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="converted generator directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--seeds", help="z seeds, e.g. 0-3 or 1,5,9")
    src.add_argument("--ws", help=".npy of W+ latents [B, num_ws, w_dim] (or [num_ws, w_dim])")
    p.add_argument("--trunc", type=float, default=1.0, help="truncation psi (seeds only)")
    p.add_argument("--trunc-cutoff", type=int, default=None, help="truncate only the first N ws rows")
    p.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    p.add_argument("--noise-seed", type=int, default=0, help="PRNG seed for --noise-mode random")
    p.add_argument("--batch", type=int, default=8, help="images per device call")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--outdir", required=True)
    p.add_argument("--save-npy", action="store_true", help="also write raw float32 images to OUTDIR/images.npy")
    args = p.parse_args(argv)
    try:
        run(args)
    except (UsageError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args):
    import imageio.v3 as iio
    import jax
    import jax.numpy as jnp

    from stylejax.checkpoint import CheckpointError
    from stylejax.generator import load_generator

    try:
        g = load_generator(args.checkpoint)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    cfg = g.config
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds)
        names = [f"seed{s:04d}" for s in seeds]
        z = np.concatenate([np.random.RandomState(s).randn(1, cfg.z_dim) for s in seeds]).astype(np.float32)
        ws = np.asarray(g.mapping(z, args.trunc, args.trunc_cutoff))
    else:
        try:
            ws = np.load(args.ws, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read --ws {args.ws}: {e}") from None
        if ws.ndim == 2:
            ws = ws[None]
        if ws.ndim != 3 or ws.shape[1:] != (cfg.num_ws, cfg.w_dim):
            raise UsageError(f"--ws has shape {list(ws.shape)}, expected [B, {cfg.num_ws}, {cfg.w_dim}] for this generator")
        names = [f"ws{i:04d}" for i in range(len(ws))]
    os.makedirs(args.outdir, exist_ok=True)
    key = jax.random.PRNGKey(args.noise_seed)
    images = []
    for start in range(0, len(ws), args.batch):
        key, sub = jax.random.split(key)
        rng = sub if args.noise_mode == "random" else None
        images.append(np.asarray(g.synthesize(jnp.asarray(ws[start:start + args.batch]), args.noise_mode,
                                              rng=rng, dtype=jnp.dtype(args.dtype))))
    images = np.concatenate(images)
    for name, img in zip(names, to_uint8(images)):
        iio.imwrite(os.path.join(args.outdir, f"{name}.png"), img)
    if args.save_npy:
        tmp = os.path.join(args.outdir, "images.npy.tmp")
        with open(tmp, "wb") as f:
            np.save(f, images.astype(np.float32))
        os.replace(tmp, os.path.join(args.outdir, "images.npy"))
    print(f"wrote {len(images)} images ({cfg.resolution}x{cfg.resolution}) to {args.outdir}")


if __name__ == "__main__":
    sys.exit(main())
