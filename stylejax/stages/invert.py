"""Stage `invert`: e4e on every aligned frame, then refinement by optimisation (LPIPS + L2 at the loss
size), all frames of a chunk in one jitted step. `config.invert.space`: "w+" refines e4e's W+ (default);
"w" optimises one W vector per frame (started from the mean of e4e's rows, broadcast to all rows), the
better-determined projection PTI uses for its pivots.

Regulariser (`config.invert.reg`): free W+ refinement can move rows away from the latents the downstream
networks were trained on (StyleFlow's pose edit reads rows 0-3). "e4e" adds reg_weight x the mean squared
distance of rows [reg_rows) to e4e's W+ of the frame (e4e's own in-distribution estimate, the anchor of
e4e/PTI-style editing), "w_avg" the distance to the generator's mean latent; "none" refines freely.

What the refinement is for: select_id picks the identity frame by the refined loss among its candidates
(near-frontal, then most neutral frames), and `--channels auto` ranks channels by the spread of the
inversions. With `refine_frames` K > 0 (the default) only the K frames select_id would pick first by e4e's
loss are refined (`refine_set`: every frame's e4e inversion and its loss are computed first); the others keep
e4e's inversion, which ranks the channels as well. K = 0 refines every frame. Refinement costs `steps`
optimiser steps a frame, e4e and its loss about half of one (docs/cost.md).

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


def row_range(rows, num_ws, what):
    """A range of W+ rows as a (start, stop) tuple, checked against the generator's `num_ws`; `what` names the
    setting in the error."""
    try:
        start, stop = (int(v) for v in rows)
    except (TypeError, ValueError):
        raise PipelineError(f"{what} must be two integers (start, stop), got {rows!r}") from None
    if not 0 <= start < stop <= num_ws:
        raise PipelineError(f"{what} ({start}, {stop}) is not a range of W+ rows inside [0, {num_ws}): give start < "
                            f"stop <= {num_ws}")
    return start, stop


def latents(params, num_ws):
    """W+ [T, num_ws, w_dim] from the optimised parameters: {"ws": W+} or {"w": [T, w_dim]} (W space)."""
    if "ws" in params:
        return params["ws"]
    w = params["w"]
    return jnp.broadcast_to(w[:, None], (w.shape[0], num_ws, w.shape[-1]))


def loss_fn(config, loss_size, dtype, coarse=False):
    """Per-frame reconstruction loss (+ the regulariser): params {"ws": [T, num_ws, w_dim]} (or {"w": [T,
    w_dim]}), batch {"target": [T, L, L, 3], "anchor": [T, num_ws, w_dim] (with a regulariser)}. `coarse`: the
    generator synthesises only up to `losses.coarse_resolution`."""
    reg = str(config.reg).lower()
    rows = slice(*(int(v) for v in config.reg_rows))

    def loss(params, nets, batch):
        g = nets["generator"]
        ws = latents(params, g.config.num_ws)
        top = losses.coarse_resolution(g.config, loss_size) if coarse else None
        img = g.synthesize(ws, "const", dtype=dtype, max_resolution=top)
        out = losses.reconstruction(losses.resize(img, loss_size), batch["target"], nets["lpips"],
                                    config.lpips_weight, config.l2_weight)
        if reg != "none":
            out = out + config.reg_weight * jnp.mean(jnp.square(ws[:, rows] - batch["anchor"][:, rows]), axis=(1, 2))
        return out
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
    reg = str(cfg.reg).lower()
    if reg not in ("none", "e4e", "w_avg"):
        raise PipelineError(f"--config.invert.reg must be 'none', 'e4e' or 'w_avg', got {cfg.reg!r}")
    row_range(cfg.reg_rows, g.config.num_ws, "--config.invert.reg_rows")
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
        batch = {**batch, "target": resize(frames, ctx.loss_size)}
        if reg != "none":
            # a buffer of its own: the optimiser donates the starting params, which the e4e anchor would share
            batch["anchor"] = jnp.array(ws0, copy=True) if reg == "e4e" else jnp.broadcast_to(w_avg, ws0.shape)
        return start, batch

    num_ws, w_dim = g.config.num_ws, g.config.w_dim
    w_avg = jnp.asarray(g.buffers["mapping"]["w_avg"], jnp.float32)
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
        _, _, pick = select_id.chooser(ctx)
        frames = refine_set(lambda loss: pick(loss)[0], out["e4e_loss.npy"], k) if cfg.steps else np.zeros(0, np.int64)
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
