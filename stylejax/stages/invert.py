"""Stage `invert`: e4e on every aligned frame, then refinement by optimisation (LPIPS + L2 at the loss
size), all frames of a chunk in one jitted step. `config.invert.space`: "w+" refines e4e's W+ (default);
"w" optimises one W vector per frame (started from the mean of e4e's rows, broadcast to all rows), the
better-determined projection PTI uses for its pivots.

Outputs: `invert/ws.npy` [T, num_ws, w_dim], `invert/loss.npy` [T].
"""
import jax
import jax.numpy as jnp
import numpy as np

from stylejax import losses, parallel
from stylejax.errors import PipelineError
from stylejax.optimize import Optimiser
from stylejax.stages.base import run_chunks, signature

E4E_SIZE = 256  # e4e's input resolution (its map2style depths assume 256² inputs)


def latents(params, num_ws):
    """W+ [T, num_ws, w_dim] from the optimised parameters: {"ws": W+} or {"w": [T, w_dim]} (W space)."""
    if "ws" in params:
        return params["ws"]
    w = params["w"]
    return jnp.broadcast_to(w[:, None], (w.shape[0], num_ws, w.shape[-1]))


def loss_fn(config, loss_size, dtype):
    """Per-frame reconstruction loss: params {"ws": [T, num_ws, w_dim]} (or {"w": [T, w_dim]}), batch
    {"target": [T, L, L, 3]}."""
    def loss(params, nets, batch):
        g = nets["generator"]
        img = g.synthesize(latents(params, g.config.num_ws), "const", dtype=dtype)
        return losses.reconstruction(losses.resize(img, loss_size), batch["target"], nets["lpips"],
                                     config.lpips_weight, config.l2_weight)
    return loss


def encode_e4e(e4e, images):
    """W+ of frames [B, H, W, 3] in [-1, 1] (resized to e4e's 256² input)."""
    return e4e(losses.resize(images, E4E_SIZE))


def run(ctx):
    cfg, wd = ctx.config.invert, ctx.workdir
    if ctx.nets.e4e is None:
        raise PipelineError("the invert stage needs an e4e encoder: pass --e4e DIR (python -m convert e4e)")
    sig = signature(ctx, "invert", ctx.nets.fingerprint("generator"), ctx.nets.fingerprint("e4e"),
                    ctx.nets.fingerprint("lpips"))
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
    out = run_chunks(ctx, "invert", Optimiser(loss_fn(cfg, ctx.loss_size, dtype), cfg.lr, cfg.steps, ctx.microbatch),
                     {"generator": g, "lpips": ctx.nets.lpips},
                     make_batch=lambda lo, hi: {"frames": ctx.target(lo, hi)}, init=init,
                     finish=lambda params, loss, batch: {"ws.npy": np.asarray(latents(params, num_ws))},
                     outputs={"ws.npy": ((num_ws, w_dim), np.float32)})
    mean_loss = float(np.mean(out["loss.npy"]))
    wd.mark_done("invert", sig, frames=ctx.num_frames, mean_loss=mean_loss)
    ctx.log(f"[invert] {ctx.num_frames} frames, mean loss {mean_loss:.4f}")
