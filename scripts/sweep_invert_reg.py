"""The invert stage's W+ regulariser: reconstruction against how far rows 0-3 move, per regulariser and weight.

  python scripts/sweep_invert_reg.py [--frames 16] [--weights 0.001,0.01,0.1,1] [--regs e4e,w_avg] [--steps N] [--lr X]

On the demo's clip (`stylejax.demo`: random 32 px networks, a known identity and known per-frame pose and
offsets, the flow fitted to the generator's W) it runs the invert stage's refinement (`stages.invert.loss_fn`,
`optimize.Optimiser`, configs/encode.py's W+ settings unless overridden) from e4e's W+ for each regulariser
("e4e": distance to e4e's W+ of the frame; "w_avg": to the mean latent; rows 0-3, `reg_rows`) and weight,
and prints per setting:

  recon      the mean reconstruction loss (LPIPS + L2, the regulariser left out)
  psnr       mean PSNR of G(W+) against the frame (dB)
  d_e4e      rows 0-3: mean squared distance to e4e's W+ of the frame
  d_avg      rows 0-3: mean squared distance to w_avg, divided by that of random W samples (1 = as far
             from the mean as a typical latent of the generator)
  d_true     frame 0 (the identity, no pose, no offsets): rows 0-3 mean squared distance to the true latent

Random weights: the trade-off's shape, not its values, carries over to real networks; rerun the idea on
yours with `python scripts/check_conventions.py` (rows 0-3 distance to w_avg of your inversions).
"""
import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from stylejax import demo, losses, metrics  # noqa: E402
from stylejax.optimize import Optimiser  # noqa: E402
from stylejax.stages import invert  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--weights", default="0.001,0.01,0.1,1")
    p.add_argument("--regs", default="e4e,w_avg", help="regularisers to sweep (besides none)")
    p.add_argument("--steps", type=int, default=None, help="refinement steps (default: configs/encode.py's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: configs/encode.py's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    config = demo.load_config(os.path.join(REPO, "configs", "encode.py"))
    cfg = config.invert
    cfg.space = "w+"
    if args.steps is not None:
        cfg.steps = args.steps
    if args.lr is not None:
        cfg.lr = args.lr
    g, e4e, flow = demo.tiny_networks()
    flow = demo.fit_flow_to_w(flow, g)
    lp, _ = demo.lpips_network()
    cond = demo.true_condition()
    id_true, pose, offsets, channels = demo.ground_truth(g, flow, args.frames, condition=cond)
    frames = demo.synthesise(g, flow, id_true, pose, offsets, channels, 8, cond)
    target = jnp.asarray(frames.astype(np.float32) / 127.5 - 1.0)
    size = min(int(config.loss_size), g.config.resolution)
    ws0 = jax.jit(invert.encode_e4e)(e4e, target)
    w_avg = jnp.asarray(g.buffers["mapping"]["w_avg"])
    samples = g.mapping(jax.random.normal(jax.random.PRNGKey(5), (4096, g.config.z_dim)))[:, 0]
    typical = float(jnp.mean(jnp.square(samples - w_avg)))
    rows = slice(*(int(v) for v in cfg.reg_rows))
    plain = dict(cfg.to_dict(), reg="none")
    recon_fn = jax.jit(lambda ws, nets, batch: invert.loss_fn(type(cfg)(plain), size, jnp.float32)(
        {"ws": ws}, nets, batch))
    render = jax.jit(lambda g, ws: g.synthesize(ws, "const"))
    nets = {"generator": g, "lpips": lp}
    batch = {"target": losses.resize(target, size), "mask": jnp.ones(args.frames)}

    rows_out = []
    settings = [("none", 0.0)] + [(reg, float(w)) for reg in args.regs.split(",") for w in args.weights.split(",")
                                  if float(w) > 0]
    for reg, weight in settings:
        cfg.reg, cfg.reg_weight = reg, weight
        anchor = ws0 if reg == "e4e" else jnp.broadcast_to(w_avg, ws0.shape)
        opt = Optimiser(invert.loss_fn(cfg, size, jnp.float32), cfg.lr, cfg.steps)
        params, _ = opt.run({"ws": jnp.array(ws0)}, nets, {**batch, "anchor": anchor})  # a copy: the step donates it
        ws = jnp.asarray(params["ws"])
        rows_out.append({
            "reg": reg, "weight": weight,
            "recon": float(jnp.mean(recon_fn(ws, nets, batch))),
            "psnr": float(jnp.mean(metrics.psnr(render(g, ws), target))),
            "d_e4e": float(jnp.mean(jnp.square(ws[:, rows] - ws0[:, rows]))),
            "d_avg": float(jnp.mean(jnp.square(ws[:, rows] - w_avg))) / typical,
            "d_true": float(jnp.mean(jnp.square(ws[0, rows] - id_true[rows])))})
        r = rows_out[-1]
        if not args.json:
            print(f"{reg:6s} {weight:<6g} recon {r['recon']:.5f}  psnr {r['psnr']:.2f}  d_e4e {r['d_e4e']:.5f}  "
                  f"d_avg {r['d_avg']:.3f}  d_true {r['d_true']:.5f}", flush=True)
    if args.json:
        print(json.dumps({"frames": args.frames, "steps": int(cfg.steps), "lr": float(cfg.lr), "rows": rows_out}))


if __name__ == "__main__":
    main()
