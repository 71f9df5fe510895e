"""Stage `finetune` (optional; the paper's generator fine-tuning, PTI-style): the generator's synthesis weights
tuned to the video, the encoding fixed (docs/finetune.md).

Runs after `attributes` when `config.finetune.steps > 0`. Frame t is rendered from the encoding's own numbers
*as saved* (pose and offsets rounded to float16, which is what `render` reads):
    ws_t = pose_latents(identity, yaw_t, pitch_t),  image_t = G'(affine'(ws_t) + offsets_t · offset_scale)
and G' (every parameter under `params["synthesis"]`: modulated convs, their affines, biases, noise strengths,
ToRGB, the constant input) minimises
    (1/T) Σ_t [l2_weight · L2 + lpips_weight · LPIPS](image_t, frame_t)   (+ PTI's locality regulariser)
by Adam at a constant `lr` (PTI: 3e-4). One step is one Adam update from the gradient over *all* frames of the
video: chunk by chunk (memory bounded by the chunk), the frames of a chunk at once and sharded over the local
devices, the generator replicated, gradients summed over the frame axis into one accumulator; each of the two
programs (chunk gradient, update) is jitted once, with the accumulator, weights and optimiser state donated.
Because the update waits for every chunk, the result does not depend on the chunk size or device count beyond
the float rounding of the sum (STIT instead updates after every frame).

Locality regulariser (PTI's, off unless `locality_weight` > 0): latents w_r = w_id + alpha · (w_z − w_id) / |w_z −
w_id| around the identity latent, w_z from random z (truncation 0.5), `locality_samples` a step with the key
fold_in(key, step); the loss adds locality_weight · (L2 + LPIPS) between the base and the tuned generator's
images of w_r (PTI: weight 0.1, alpha 30).

Resumable: the tuned weights, the Adam state and the loss history are saved with orbax every `save_every` steps
(`finetune/state/<step>/`, the last two kept); a rerun after Ctrl-C or `kill -9` continues from the last save
and reaches the same bits. Outputs: `finetune/delta.safetensors` (the delta against the base generator in the
form `delta_rank` / `delta_dtype` chose: `stylejax.io.delta`), `finetune/loss.npy` [steps] (mean loss before
each update), `done.json` (the delta's fingerprint and size); `encode` copies the delta beside the encoding.
"""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stylejax import cli, losses, parallel
from stylejax.decoder import apply_offsets, flat_indices, pose_latents
from stylejax.errors import PipelineError
from stylejax.io import atomic
from stylejax.io.delta import Delta, flatten, save_delta
from stylejax.optimize import NonFiniteLossError, on_mesh_of
from stylejax.stages.base import STAGES, chunk_batch, signature

STAGE_ID = STAGES.index("finetune")  # folded into the random key: the locality samples differ from other stages'
LOCALITY_TRUNCATION = 0.5  # PTI samples its locality latents with truncation 0.5
DTYPES = ("float16", "float32")


def tuned(g, synthesis):
    """`g` with its synthesis parameters replaced (mapping, buffers and config kept)."""
    return type(g)(g.config, {**g.params, "synthesis": synthesis}, g.buffers)


# ------------------------------------------------------------------------------------------------ losses

def loss_fn(config, loss_size, dtype, flat_index):
    """Per-frame loss [T] of the tuned synthesis weights: batch {"ws": [T, num_ws, w_dim], "offsets": [T, K],
    "target": [T, L, L, 3]}; nets {"generator": base, "lpips", "offset_scale"}."""
    def loss(synthesis, nets, batch):
        g = tuned(nets["generator"], synthesis)
        styles = apply_offsets(g, batch["ws"], batch["offsets"], flat_index, nets["offset_scale"])
        img = losses.resize(g.synthesize_from_styles(styles, "const", dtype=dtype), loss_size)
        return losses.reconstruction(img, batch["target"], nets["lpips"], config.lpips_weight, config.l2_weight)
    return loss


def locality_latents(g, id_latent, key, samples, alpha):
    """PTI's locality latents: w_id + alpha · (w_z − w_id) / |w_z − w_id| (norm over the whole W+ tensor)."""
    z = jax.random.normal(key, (samples, g.config.z_dim))
    w_z = g.mapping(z, LOCALITY_TRUNCATION)
    direction = w_z - id_latent[None]
    norm = jnp.sqrt(jnp.sum(direction ** 2, axis=(1, 2), keepdims=True))
    return id_latent[None] + alpha * direction / norm


def locality_loss(config, loss_size, dtype):
    def loss(synthesis, nets, key):
        base = nets["generator"]
        ws = locality_latents(base, nets["id_latent"], key, int(config.locality_samples), float(config.locality_alpha))
        old = jax.lax.stop_gradient(base.synthesize(ws, "const", dtype=dtype))
        new = tuned(base, synthesis).synthesize(ws, "const", dtype=dtype)
        per = losses.reconstruction(losses.resize(new, loss_size), losses.resize(old, loss_size), nets["lpips"],
                                    1.0, 1.0)
        return jnp.mean(per)
    return loss


# ------------------------------------------------------------------------------------------------ the programs

def make_programs(loss, optimizer, num_frames, local=None, local_weight=0.0):
    """(chunk_grad, update), each to be jitted once.

    chunk_grad(synthesis, acc, nets, batch) -> (acc + the gradient of the chunk's summed masked loss, per-frame
    loss [chunk]); update(synthesis, opt_state, acc, nets, key) -> (synthesis, opt_state, a zeroed accumulator,
    locality loss): one Adam step on acc / num_frames (+ the locality term's gradient)."""
    def chunk_grad(synthesis, acc, nets, batch):
        def total(p):
            per = loss(p, nets, batch)
            return jnp.sum(per * batch["mask"]), per
        (_, per), grads = jax.value_and_grad(total, has_aux=True)(synthesis)
        return jax.tree_util.tree_map(jnp.add, acc, grads), per

    def update(synthesis, opt_state, acc, nets, key):
        grads = jax.tree_util.tree_map(lambda a: a / num_frames, acc)
        loc = jnp.zeros((), jnp.float32)
        if local is not None:
            loc, loc_grads = jax.value_and_grad(local)(synthesis, nets, key)
            grads = jax.tree_util.tree_map(lambda a, b: a + local_weight * b, grads, loc_grads)
        updates, opt_state = optimizer.update(grads, opt_state, synthesis)
        return (optax.apply_updates(synthesis, updates), opt_state, jax.tree_util.tree_map(jnp.zeros_like, acc), loc)

    return jax.jit(chunk_grad, donate_argnums=(1,)), jax.jit(update, donate_argnums=(0, 1, 2))


# ------------------------------------------------------------------------------------------------ the delta

def make_delta(base, tuned_synthesis, base_fingerprint, rank=0, dtype="float16", settings=None):
    """The `Delta` of tuned − base synthesis weights: full (rank 0), or rank-`rank` factors (truncated SVD of the
    delta as a [rows, cols] matrix, u = U·S, v = Vᵀ) for every weight with two or more axes whose rank exceeds
    `rank`; stored as `dtype`. Unchanged parameters are left out."""
    if dtype not in DTYPES:
        raise PipelineError(f"--config.finetune.delta_dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if int(rank) < 0:
        raise PipelineError(f"--config.finetune.delta_rank must be >= 0 (0 = the full delta), got {rank}")
    store = np.dtype(dtype)
    tensors = {}
    flat_t = flatten(tuned_synthesis)
    for name, b in flatten(base).items():
        d = np.asarray(flat_t[name], np.float32) - np.asarray(b, np.float32)
        if not d.any():
            continue
        rows = int(np.prod(d.shape[:-1])) if d.ndim >= 2 else 0
        if rank and d.ndim >= 2 and rank < min(rows, d.shape[-1]):
            u, s, vt = np.linalg.svd(d.reshape(rows, d.shape[-1]).astype(np.float64), full_matrices=False)
            tensors[name + ".u"] = (u[:, :rank] * s[:rank]).astype(store)
            tensors[name + ".v"] = vt[:rank].astype(store)
        else:
            tensors[name] = d.astype(store)
    form = f"lowrank-{int(rank)}" if rank else "full"
    return Delta(base_fingerprint=base_fingerprint, tensors=tensors, form=form, settings=dict(settings or {}))


# ------------------------------------------------------------------------------------------------ the stage

def enabled(config):
    return "finetune" in config and int(config.finetune.steps) > 0


def inputs(ctx):
    """(ws [T, num_ws, w_dim], offsets [T, K], flat_index, offset_scale [K], id_latent): the encoding as `render`
    reads it (pose and offsets rounded to float16), made once into `finetune/` and reused on resume."""
    wd, g, flow = ctx.workdir, ctx.nets.generator, ctx.nets.styleflow
    t, rk4 = ctx.num_frames, int(ctx.config.head_pose.rk4_steps)
    chosen = atomic.read_json(wd.file("attributes", "channels.json"))
    pose = np.asarray(wd.load("attributes", "pose.npy")).astype(np.float16).astype(np.float32)
    offsets = np.asarray(wd.load("attributes", "offsets.npy")).astype(np.float16).astype(np.float32)
    id_latent = jnp.asarray(wd.load("select_id", "id_latent.npy"))
    cond = jnp.asarray(np.load(wd.file("head_pose", "cond_src.npy")))
    ws = wd.array("finetune", "ws.npy", (t, g.config.num_ws, g.config.w_dim))
    if not os.path.isfile(wd.file("finetune", "ws.done")):
        latents = jax.jit(lambda flow, y, p: pose_latents(flow, id_latent, cond, y, p, rk4))
        for lo, hi in ctx.chunks():
            (y, p), _ = parallel.pad_frames((pose[lo:hi, 0], pose[lo:hi, 1]), ctx.chunk)
            ws[lo:hi] = np.asarray(latents(flow, jnp.asarray(y), jnp.asarray(p)))[:hi - lo]
        ws.flush()
        atomic.write_bytes(wd.file("finetune", "ws.done"), b"")
    flat_index = np.asarray(flat_indices(chosen["channels"], g.config))
    return ws, offsets, flat_index, np.asarray(chosen["std"], np.float32), id_latent


def run(ctx):
    cfg, wd = ctx.config.finetune, ctx.workdir
    if not enabled(ctx.config):
        return
    if ctx.nets.styleflow is None:
        raise PipelineError("the finetune stage needs StyleFlow: pass --styleflow DIR")
    steps, save_every = int(cfg.steps), int(cfg.save_every)
    if save_every < 1:
        raise PipelineError(f"--config.finetune.save_every must be >= 1 (steps between saves), got {save_every}")
    if float(cfg.locality_weight) < 0 or int(cfg.locality_samples) < 1:
        raise PipelineError("--config.finetune.locality_weight must be >= 0 and locality_samples >= 1")
    base_fp = ctx.nets.fingerprint("generator")
    sig = signature(ctx, "finetune", base_fp, ctx.nets.fingerprint("styleflow"), ctx.nets.fingerprint("lpips"))
    if wd.is_done("finetune", sig):
        return
    wd.begin("finetune", sig, ctx.chunk)  # a save is resumed only with the same signature and chunk size
    g = ctx.nets.generator
    ws, offsets, flat_index, scale, id_latent = inputs(ctx)
    dtype = jnp.dtype(ctx.config.dtype)
    optimizer = optax.adam(float(cfg.lr))
    local = locality_loss(cfg, ctx.loss_size, dtype) if float(cfg.locality_weight) > 0 else None
    chunk_grad, update = make_programs(loss_fn(cfg, ctx.loss_size, dtype, flat_index), optimizer, float(ctx.num_frames),
                                       local, float(cfg.locality_weight))
    nets = parallel.replicate({"generator": g, "lpips": ctx.nets.lpips, "offset_scale": jnp.asarray(scale),
                               "id_latent": id_latent}, ctx.mesh)
    resize = jax.jit(losses.resize, static_argnums=1)

    def make_batch(lo, hi):
        return {"frames": ctx.target(lo, hi), "ws": np.asarray(ws[lo:hi]), "offsets": offsets[lo:hi]}

    def load(lo, hi):
        batch = chunk_batch(ctx, make_batch, lo, hi)
        return {**batch, "target": resize(batch.pop("frames"), ctx.loss_size)}

    chunks = ctx.chunks()
    cached = {0: load(*chunks[0])} if len(chunks) == 1 else None  # one chunk: keep it on the devices
    state_dir = wd.file("finetune", "state")
    saver = Saver(state_dir)
    # a copy: the update donates its weights, and device_put may hand back the base generator's own buffers
    synthesis = parallel.replicate(jax.tree_util.tree_map(np.array, g.params["synthesis"]), ctx.mesh)
    start = {"synthesis": synthesis, "opt_state": on_mesh_of(optimizer.init(synthesis), synthesis),
             "history": np.zeros(steps, np.float32)}
    state, done_steps = saver.restore(start, ctx.mesh)
    synthesis, opt_state, history = state["synthesis"], state["opt_state"], np.array(state["history"])
    acc = jax.tree_util.tree_map(jnp.zeros_like, synthesis)
    key = jax.random.fold_in(jax.random.PRNGKey(int(ctx.config.seed)), STAGE_ID)
    bar = cli.progress(total=steps, desc="finetune", unit="step")
    bar.update(done_steps)
    try:
        for step in range(done_steps, steps):
            total = 0.0
            for i, (lo, hi) in enumerate(chunks):
                batch = cached[0] if cached else load(lo, hi)
                acc, per = chunk_grad(synthesis, acc, nets, batch)
                per = np.asarray(per)[:hi - lo]
                if not np.isfinite(per).all():
                    raise NonFiniteLossError(f"finetune: non-finite loss at step {step} (frames {lo}..{hi - 1}); "
                                             "lower --config.finetune.lr or check the networks")
                total += float(per.sum())
            history[step] = total / ctx.num_frames
            synthesis, opt_state, acc, _ = update(synthesis, opt_state, acc, nets, jax.random.fold_in(key, step))
            bar.update(1)
            bar.set_postfix_str(f"loss {history[step]:.4f}")
            if (step + 1) % save_every == 0 or step + 1 == steps:
                saver.save(step + 1, {"synthesis": synthesis, "opt_state": opt_state, "history": history})
    finally:
        bar.close()
    delta = make_delta(g.params["synthesis"], jax.tree_util.tree_map(np.asarray, synthesis), base_fp,
                       int(cfg.delta_rank), str(cfg.delta_dtype), settings={"finetune": cfg.to_dict(), "frames":
                                                                            ctx.num_frames})
    save_delta(wd.file("finetune", "delta.safetensors"), delta)
    np.save(wd.file("finetune", "loss.npy"), history)
    wd.mark_done("finetune", sig, steps=steps, first_loss=float(history[0]), final_loss=float(history[-1]),
                 delta_fingerprint=delta.fingerprint, delta_bytes=delta.nbytes, delta_form=delta.form)
    shutil.rmtree(state_dir, ignore_errors=True)  # weights and Adam state (3x the generator): no longer needed
    ctx.log(f"[finetune] {steps} steps, loss {history[0]:.4f} -> {history[-1]:.4f}; delta {delta.form} "
            f"{delta.nbytes / 1e6:.2f} MB")


class Saver:
    """orbax saves of the fine-tuning state in `directory` (`<step>/`, the last two kept). A save is complete
    or absent: orbax writes into a temporary folder and renames it when committed, and ignores (and removes)
    uncommitted ones, so a kill -9 during a save resumes from the save before."""

    def __init__(self, directory):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
            max_to_keep=2, enable_async_checkpointing=False, create=True))

    def save(self, step, state):
        self.manager.save(step, args=self._ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()

    def restore(self, start, mesh):
        """(state, step) of the latest save, placed like `start` (replicated on the mesh), or (start, 0)."""
        step = self.manager.latest_step()
        if step is None:
            return start, 0
        replicated = parallel.replicated(mesh)
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=replicated),
                                          start)
        state = self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
        return state, int(step)
