"""Stage `invert`: e4e on every aligned frame, then refinement by optimisation (LPIPS + L2 at the loss
size), all frames of a chunk in one jitted step. `config.invert.space`: "w+" refines e4e's W+ (default);
"w" optimises one W vector per frame (started from the mean of e4e's rows, broadcast to all rows), the
better-determined projection PTI uses for its pivots.

What the refinement is for: select_id picks the identity frame by the refined loss among its candidates
(near-frontal frames), and `--channels auto` ranks channels by the spread of the inversions. With
`refine_frames` K > 0 (the default) only the K frames select_id would pick first by e4e's loss are refined
(`refine_set`: every frame's e4e inversion and its loss are computed first); the others keep e4e's inversion,
which ranks the channels as well. K = 0 refines every frame. Refinement costs `steps` optimiser steps a frame,
e4e and its loss about half of one (docs/benchmarks.md#cost-per-encoded-frame).

Outputs: `invert/ws.npy` [T, num_ws, w_dim], `invert/loss.npy` [T] (the refined loss, e4e's for frames not
refined), `invert/e4e_loss.npy` [T] and `invert/refined.npy` [T] bool (with K > 0).
"""
import jax
import jax.numpy as jnp
import numpy as np

from stylejax import losses, parallel
from stylejax.errors import PipelineError
from stylejax.stages import select_id
from stylejax.stages.base import make_optimiser, run_chunks, signature

E4E_SIZE = 256  # e4e's input resolution (its map2style depths assume 256² inputs)


def latents(params, num_ws):
    """W+ [T, num_ws, w_dim] from the optimised parameters: {"ws": W+} or {"w": [T, w_dim]} (W space)."""
    if "ws" in params:
        return params["ws"]
    w = params["w"]
    return jnp.broadcast_to(w[:, None], (w.shape[0], num_ws, w.shape[-1]))


def loss_fn(config, loss_size, dtype, coarse=False):
    """Per-frame reconstruction loss: params {"ws": [T, num_ws, w_dim]} (or {"w": [T, w_dim]}), batch
    {"target": [T, L, L, 3]}. `coarse`: the generator synthesises only up to `losses.coarse_resolution`."""
    def loss(params, nets, batch):
        g = nets["generator"]
        top = losses.coarse_resolution(g.config, loss_size) if coarse else None
        img = g.synthesize(latents(params, g.config.num_ws), "const", dtype=dtype, max_resolution=top)
        return losses.reconstruction(losses.resize(img, loss_size), batch["target"], nets["lpips"],
                                     config.lpips_weight, config.l2_weight)
    return loss


def encode_e4e(e4e, images):
    """W+ of frames [B, H, W, 3] in [-1, 1] (resized to e4e's 256² input)."""
    return e4e(losses.resize(images, E4E_SIZE))


def refine_set(choose, e4e_loss, k):
    """The k frames select_id would pick first (`choose`: loss [T] -> frame) when ranked by e4e's loss,
    sorted: taking the pick and ruling it out, k times. Fewer when the candidates run out."""
    loss = np.array(e4e_loss, np.float64)
    picked = []
    while len(picked) < k:
        frame = int(choose(loss))
        if frame in picked:  # every candidate is ruled out (or the frame is forced)
            break
        picked.append(frame)
        loss[frame] = np.inf
    return np.array(sorted(picked), np.int64)


def run(ctx):
    cfg, wd = ctx.config.invert, ctx.workdir
    if ctx.nets.e4e is None:
        raise PipelineError("the invert stage needs an e4e encoder: pass --e4e DIR (python -m convert e4e)")
    k = int(cfg.refine_frames)
    if k < 0:
        raise PipelineError(f"--config.invert.refine_frames must be >= 0 (0 = every frame), got {k}")
    # with K > 0 which frames are refined depends on select_id's settings (its candidates)
    sig = signature(ctx, "invert", ctx.nets.fingerprint("generator"), ctx.nets.fingerprint("e4e"),
                    ctx.nets.fingerprint("lpips"), ctx.config.select_id.to_dict() if k else None)
    if wd.is_done("invert", sig):
        return
    g = ctx.nets.generator
    space = str(cfg.space).lower()
    if space not in ("w+", "w"):
        raise PipelineError(f"--config.invert.space must be 'w+' or 'w', got {cfg.space!r}")
    wd.begin("invert", sig, ctx.chunk)
    dtype = jnp.dtype(ctx.config.dtype)
    e4e = parallel.replicate(ctx.nets.e4e, ctx.mesh)
    e4e_fn = jax.jit(encode_e4e)
    resize = jax.jit(losses.resize, static_argnums=1)
    step = max(1, int(cfg.e4e_batch))

    def init(batch):
        frames = batch.pop("frames")
        ws0 = jnp.concatenate([e4e_fn(e4e, frames[i:i + step]) for i in range(0, frames.shape[0], step)])
        start = {"ws": ws0} if space == "w+" else {"w": jnp.mean(ws0, axis=1)}  # W: the mean of e4e's rows
        return start, {**batch, "target": resize(frames, ctx.loss_size)}

    num_ws, w_dim = g.config.num_ws, g.config.w_dim
    nets = {"generator": g, "lpips": ctx.nets.lpips}
    ws_out = {"ws.npy": ((num_ws, w_dim), np.float32)}
    finish = lambda params, loss, batch: {"ws.npy": np.asarray(latents(params, num_ws))}
    make_loss = lambda coarse: loss_fn(cfg, ctx.loss_size, dtype, coarse)
    opt = make_optimiser(ctx, cfg, make_loss, cfg.lr)
    if not k:  # every frame refined
        out = run_chunks(ctx, "invert", opt, nets, lambda lo, hi: {"frames": ctx.target(lo, hi)}, init, finish, ws_out)
        info = {}
    else:
        e4e_only = make_optimiser(ctx, cfg, make_loss, cfg.lr, steps=0)
        out = run_chunks(ctx, "invert", e4e_only, nets, lambda lo, hi: {"frames": ctx.target(lo, hi)}, init,
                         lambda params, loss, batch: {**finish(params, loss, batch), "e4e_loss.npy": loss},
                         dict(ws_out, **{"e4e_loss.npy": ((), np.float32)}))
        _, choose = select_id.chooser(ctx)
        frames = refine_set(choose, out["e4e_loss.npy"], k) if cfg.steps else np.zeros(0, np.int64)
        frames_of = lambda lo, hi: ctx.workdir.frames()[frames[lo:hi]].astype(np.float32) / 127.5 - 1.0
        out = run_chunks(ctx, "invert", opt, nets, lambda lo, hi: {"frames": frames_of(lo, hi)}, init, finish,
                         ws_out, frames=frames, part="refine-")
        refined = np.zeros(ctx.num_frames, bool)
        refined[frames] = True
        np.save(wd.file("invert", "refined.npy"), refined)
        info = {"refined_frames": [int(f) for f in frames]}
    mean_loss = float(np.mean(out["loss.npy"]))
    wd.mark_done("invert", sig, frames=ctx.num_frames, mean_loss=mean_loss, **info)
    ctx.log(f"[invert] {ctx.num_frames} frames" + (f", {len(info['refined_frames'])} refined (the identity frame's "
            f"candidates with the lowest e4e loss)" if k else "") + f", mean loss {mean_loss:.4f}")
