"""Cost of StyleFlow's log-likelihood with its gradient in the condition (one step of the head_pose stage's
source-condition search), exact log-determinant against Hutchinson's estimate with K fixed probes.

  python scripts/bench_styleflow_likelihood.py [--rows 1,18] [--probes 0,16] [--dim 512] [--rk4-steps 8]

Per (rows, probes): seconds per value-and-gradient step after compilation (best of --repeats), and the
compiled program's temporary memory (XLA memory_analysis). Random StyleFlow of StyleFlow's real size
(512-d, five 512 hidden layers) unless --dim says otherwise; probes 0 = exact (one JVP per latent dimension).
"""
import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from stylejax.nets.styleflow import StyleFlow, StyleFlowConfig  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,18")
    p.add_argument("--probes", default="0,16")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--rk4-steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    cfg = StyleFlowConfig(dim=args.dim, hidden_dims=(args.dim,) * 5)
    flow = StyleFlow.random(cfg, jax.random.PRNGKey(0))
    print(f"device {jax.devices()[0].device_kind}; StyleFlow dim {args.dim}, RK4 steps {args.rk4_steps}")
    for rows in (int(r) for r in args.rows.split(",")):
        w = jnp.asarray(np.random.RandomState(1).randn(1, rows, args.dim), jnp.float32)
        for k in (int(v) for v in args.probes.split(",")):
            probes = None if k == 0 else np.sign(np.random.RandomState(0).randn(k, args.dim)).astype(np.float32)
            fn = jax.jit(jax.value_and_grad(lambda c, flow, w: -flow.log_likelihood(w, c, args.rk4_steps,
                                                                                    probes).mean()))
            c = jnp.zeros((1, 17))
            compiled = fn.lower(c, flow, w).compile()
            mem = compiled.memory_analysis()
            jax.block_until_ready(compiled(c, flow, w))
            best = np.inf
            for i in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(c + 0.01 * (i + 1), flow, w))
                best = min(best, time.perf_counter() - t0)
            what = "exact" if k == 0 else f"{k} probes"
            print(f"rows {rows:3d}  {what:10s}  {best:8.3f} s/step  temp {mem.temp_size_in_bytes / 1e9:6.2f} GB",
                  flush=True)


if __name__ == "__main__":
    main()
