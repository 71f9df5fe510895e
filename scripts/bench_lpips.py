"""LPIPS forward+backward throughput (random weights): images/s for d(x, y) and ∂d/∂x.

python scripts/bench_lpips.py [--net vgg|alex] [--size 256] [--batch 32] [--dtype float32|bfloat16]
On CPU use e.g. `--batch 2 --size 128`.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from stylejax.nets.lpips import distance, init_params  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--net", default="vgg", choices=["vgg", "alex"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()

    params = init_params(jax.random.PRNGKey(0), args.net)
    k0, k1 = jax.random.split(jax.random.PRNGKey(1))
    shape = (args.batch, args.size, args.size, 3)
    x = jax.random.uniform(k0, shape, minval=-1, maxval=1)
    y = jax.random.uniform(k1, shape, minval=-1, maxval=1)
    dtype = None if args.dtype == "float32" else jnp.bfloat16

    fwd = jax.jit(lambda p, a, b: distance(p, a, b, dtype=dtype))
    fwd_bwd = jax.jit(jax.value_and_grad(lambda a, p, b: jnp.sum(distance(p, a, b, dtype=dtype))))

    results = {}
    for name, fn, call in [("forward", fwd, lambda: fwd(params, x, y)),
                           ("forward+backward", fwd_bwd, lambda: fwd_bwd(x, params, y))]:
        t = time.perf_counter()
        jax.block_until_ready(call())
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.iters):
            out = call()
        jax.block_until_ready(out)
        per_iter = (time.perf_counter() - t) / args.iters
        results[name] = args.batch / per_iter
        print(f"LPIPS-{args.net} {name:17s} {args.size}² batch {args.batch} {args.dtype}: "
              f"{results[name]:8.1f} images/s ({per_iter * 1e3:.1f} ms/batch, first call {compile_s:.1f} s)")
    print(f"backward/forward cost ratio: {results['forward'] / results['forward+backward']:.2f}  "
          f"device: {jax.devices()[0].device_kind}")


if __name__ == "__main__":
    main()
