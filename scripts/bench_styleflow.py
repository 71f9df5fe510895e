"""StyleFlow pose edit: RK4 accuracy vs N and per-frame cost (edit + gradient w.r.t. yaw/pitch).

    python scripts/bench_styleflow.py                 # error table (golden 64-d + full 512-d random) and timings
    python scripts/bench_styleflow.py --skip-timing   # error table only
    python scripts/bench_styleflow.py --params DIR    # use a converted checkpoint instead of random weights

Errors are relative L2 errors of the pose-edit delta w' - w on the edited rows 0-3 (what the
pipeline uses) and of forward z, against dopri5 at atol = rtol = 1e-5 (the reference setting) and
against a tight dopri5 (1e-7) as the best float32 answer.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stylejax.io.checkpoint import load_styleflow  # noqa: E402
from stylejax.nets import styleflow as sf  # noqa: E402


def random_params(seed, dim=512, gain=2.5):
    """Random weights with non-trivial, non-stiff dynamics (the scheme used for tests/data/styleflow.npz)."""
    rng = np.random.default_rng(seed)
    n = lambda shape, std: rng.normal(0, std, shape).astype(np.float32)
    bn = lambda: {"weight": n(dim, 0.1), "bias": n(dim, 0.2), "running_mean": n(dim, 0.5),
                  "running_var": rng.uniform(0.3, 2.0, dim).astype(np.float32)}
    odenet = {f"layers_{i}": {"layer": {"kernel": n((dim, dim), gain / np.sqrt(dim)), "bias": n(dim, 0.1)},
                              "hyper_gate": {"kernel": n((18, dim), 0.03), "bias": n(dim, 0.5)},
                              "hyper_bias": {"kernel": n((18, dim), 0.02)}} for i in range(6)}
    return {"bn_in": bn(), "odenet": odenet, "sqrt_end_time": np.float32(0.9), "bn_out": bn()}


def random_inputs(seed, batch, dim):
    rng = np.random.default_rng(seed)
    light = rng.normal(0, 0.3, (batch, 9))
    light[:, 0] = 0.8 + 0.2 * rng.random(batch)
    attrs = np.stack([rng.random(batch), rng.random(batch), rng.uniform(-30, 30, batch), rng.uniform(-20, 20, batch),
                      rng.random(batch), rng.random(batch), rng.uniform(15, 60, batch), rng.random(batch)], 1)
    cond = np.concatenate([light, attrs], 1).astype(np.float32)
    ws = (rng.normal(0, 1, (batch, 18, dim)) + rng.normal(0, 0.5, (1, 1, dim))).astype(np.float32)
    return ws, cond, rng.uniform(-25, 25, batch).astype(np.float32), rng.uniform(-15, 15, batch).astype(np.float32)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def error_table(name, params, ws, cond, yaw, pitch, ns):
    d_ref = np.asarray(sf.pose_edit(params, ws, cond, yaw, pitch, solver="dopri5"))[:, :4] - ws[:, :4]
    d_tight = np.asarray(sf.pose_edit(params, ws, cond, yaw, pitch, solver="dopri5", rtol=1e-7, atol=1e-7))[:, :4] - ws[:, :4]
    z_ref, nfe = sf.forward(params, ws, cond, return_nfe=True)
    z_tight = sf.forward(params, ws, cond, rtol=1e-7, atol=1e-7)
    print(f"\n{name}: dopri5@1e-5 forward NFE {int(nfe)}; dopri5@1e-5 vs dopri5@1e-7: "
          f"edit {rel(d_ref, d_tight):.1e}, z {rel(z_ref, z_tight):.1e}")
    print("| N | NFE (fwd+rev) | edit vs dopri5@1e-5 | edit vs dopri5@1e-7 | z vs dopri5@1e-5 |")
    print("|---|---|---|---|---|")
    for n in ns:
        d = np.asarray(sf.pose_edit(params, ws, cond, yaw, pitch, steps=n))[:, :4] - ws[:, :4]
        z = sf.forward(params, ws, cond, solver="rk4", steps=n)
        print(f"| {n} | {8 * n} | {rel(d, d_ref):.1e} | {rel(d, d_tight):.1e} | {rel(z, z_ref):.1e} |")


def timing(params, batch, ns, repeats):
    ws, cond, yaw, pitch = random_inputs(1, batch, params["bn_in"]["weight"].shape[0])
    target = jnp.asarray(ws)

    def loss(yaw, pitch, steps):
        edit = sf.pose_edit(params, ws, cond, yaw, pitch, steps=steps)
        return jnp.mean((edit[:, :4] - target[:, :4]) ** 2)

    def run(fn, *args):
        jax.block_until_ready(fn(*args))  # compile
        t = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(fn(*args))
        return (time.perf_counter() - t) / repeats / batch * 1e3

    print(f"\ntiming on {jax.devices()[0].platform}, batch {batch} frames x 18 rows, ms per frame:")
    print("| solver | edit | edit + grad(yaw, pitch) |")
    print("|---|---|---|")
    for n in ns:
        edit = jax.jit(lambda y, p, n=n: sf.pose_edit(params, ws, cond, y, p, steps=n))
        grad = jax.jit(jax.value_and_grad(lambda y, p, n=n: loss(y, p, n), argnums=(0, 1)))
        print(f"| RK4 N={n} | {run(edit, yaw, pitch):.2f} | {run(grad, yaw, pitch):.2f} |")

    # dopri5 is a while_loop: no reverse mode; one forward-mode directional derivative instead
    def dopri_loss(y, p):
        edit = sf.pose_edit(params, ws, cond, y, p, solver="dopri5")
        return jnp.mean((edit[:, :4] - target[:, :4]) ** 2)

    dopri_edit = lambda y, p: sf.pose_edit(params, ws, cond, y, p, solver="dopri5")
    dopri_jvp = jax.jit(lambda y, p: jax.jvp(dopri_loss, (y, p), (jnp.ones_like(y), jnp.ones_like(p))))
    print(f"| dopri5 1e-5 | {run(dopri_edit, yaw, pitch):.2f} | {run(dopri_jvp, yaw, pitch):.2f} (jvp) |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", help="converted StyleFlow checkpoint (default: random full-size weights)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-errors", action="store_true")
    args = parser.parse_args()

    full = load_styleflow(args.params) if args.params else jax.tree_util.tree_map(jnp.asarray, random_params(0))
    if not args.skip_errors:
        golden = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "styleflow.npz")
        if os.path.exists(golden):
            from convert.styleflow import state_dict_to_params
            g = np.load(golden)
            small = state_dict_to_params({k[3:]: g[k] for k in g.files if k.startswith("sd/")})[1]
            error_table("golden 64-d model (tests/data/styleflow.npz), 3 frames", small, g["ws"],
                        g["cond"], g["yaw_deg"], g["pitch_deg"], args.steps)
        dim = full["bn_in"]["weight"].shape[0]
        error_table(f"full-size {dim}-d model ({args.params or 'random weights'}), 4 frames", full,
                    *random_inputs(2, 4, dim), args.steps)
    if not args.skip_timing:
        timing(full, args.batch, [n for n in args.steps if n <= 16], args.repeats)


if __name__ == "__main__":
    main()
