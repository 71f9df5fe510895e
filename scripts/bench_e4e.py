"""e4e encoder throughput: full-size FFHQ architecture (IR-SE50 + 18 map2style rows, ~267 M params),
random weights, 256² input, jit. Prints frames/s.

    python scripts/bench_e4e.py                   # batch 32, 5 timed iterations
    python scripts/bench_e4e.py --batch 4 --iters 2 --dtype bfloat16
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from stylejax.nets.e4e import E4E, E4EConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    args = ap.parse_args()

    dtype = None if args.dtype == "float32" else jnp.bfloat16
    images = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, args.size, args.size, 3), minval=-1, maxval=1)
    enc = jax.jit(E4E.random, static_argnums=0)(E4EConfig(), jax.random.PRNGKey(0))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(enc.params))
    encode = jax.jit(lambda enc, x: enc(x, dtype=dtype))  # the encoder is an argument, not a constant

    t0 = time.perf_counter()
    encode(enc, images).block_until_ready()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.iters):
        ws = encode(enc, images)
    ws.block_until_ready()
    dt = (time.perf_counter() - t0) / args.iters
    print(f"device {jax.devices()[0].device_kind} | params {n_params / 1e6:.1f} M | batch {args.batch} | "
          f"{args.size}² | {args.dtype} | first call (compile+run) {compile_s:.1f} s | "
          f"{dt * 1e3:.0f} ms/batch | {args.batch / dt:.2f} frames/s")


if __name__ == "__main__":
    main()
