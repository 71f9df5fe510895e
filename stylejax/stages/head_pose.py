"""Stage `head_pose`: per-frame yaw and pitch through the StyleFlow pose edit of the identity latent, roll
from the alignment.

For frame t, ws_t = the StyleFlow pose edit of the identity latent from cond_src to yaw = src_yaw + yaw_t,
pitch = src_pitch + pitch_t (rows 0-3 edited, as StyleFlow does for pose; see `pose_latents`), and (yaw_t, pitch_t) minimise LPIPS + L2 between
G(ws_t) and the aligned frame; all frames of a chunk in one jitted step. They start from the landmark pose
relative to the identity frame. Yaw and pitch are stored relative to the identity frame (the identity
renders at 0, 0), so an encoding can drive another face.

The identity frame's StyleFlow condition `cond_src` (9 lighting + 8 attributes) came, for StyleFlow's
authors, from networks we do not have. Here: yaw and pitch entries = the identity frame's landmark pose;
the other 15 entries are either 0 ("zeros") or, by default ("map"), the maximum-likelihood condition of the
identity latent under the flow: argmin_c |F(w_id, c)|² over its edited rows — the condition under which the
flow's prior finds the identity most probable, i.e. attribute inference with the flow itself.

Roll is the alignment's `roll_deg` relative to the identity frame, re-applied in the image plane at render
time. Outputs: `head_pose/pose.npy` [T, 3] (yaw, pitch, roll in degrees, relative), `head_pose/ws_pose.npy`
[T, num_ws, w_dim] (the head-adjusted latents), `head_pose/cond_src.npy` [17], `head_pose/loss.npy` [T].
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from stylejax import cli, losses, parallel
from stylejax.io import atomic
from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX
from stylejax.optimize import Optimiser
from stylejax.pipeline import signature

POSE_ROWS = slice(0, 4)  # StyleFlow keeps W+ rows 0-3 for yaw and pitch
COND_DIM = 17


def pose_latents(flow, id_latent, cond_src, yaw_deg, pitch_deg, rk4_steps):
    """Head-adjusted latents [T, num_ws, w_dim] for relative yaw/pitch [T] (degrees).

    StyleFlow's edit w' = R(F(w, c_src), c_tgt) on rows 0-3, applied as w + R(z, c_tgt) - R(z, c_src) with
    z = F(w, c_src): identical for an exact ODE solve (R(F(w, c), c) = w), and with RK4 it cancels the
    solver's round-trip error, so a zero edit returns the identity latent exactly (the identity frame
    renders as its own inversion)."""
    t = yaw_deg.shape[0]
    ws = jnp.broadcast_to(id_latent, (t,) + id_latent.shape)
    cond = jnp.broadcast_to(cond_src, (t, COND_DIM))
    target = cond.at[:, YAW_INDEX].add(yaw_deg).at[:, PITCH_INDEX].add(pitch_deg)
    rows = ws[:, POSE_ROWS]
    z = flow.forward(rows, cond, solver="rk4", steps=rk4_steps)
    delta = flow.reverse(z, target, solver="rk4", steps=rk4_steps) - flow.reverse(z, cond, solver="rk4", steps=rk4_steps)
    return ws.at[:, POSE_ROWS].add(delta)


def loss_fn(config, loss_size, dtype):
    def loss(params, nets, batch):
        ws = pose_latents(nets["styleflow"], nets["id_latent"], nets["cond_src"], params["yaw"], params["pitch"],
                          int(config.rk4_steps))
        img = nets["generator"].synthesize(ws, "const", dtype=dtype)
        return losses.reconstruction(losses.resize(img, loss_size), batch["target"], nets["lpips"],
                                     config.lpips_weight, config.l2_weight)
    return loss


def source_condition(flow, id_latent, yaw_deg, pitch_deg, method, steps, rk4_steps):
    """cond_src [17]: pose entries from the landmarks; the rest 0 or the flow's maximum-likelihood condition."""
    cond = np.zeros(COND_DIM, np.float32)
    cond[YAW_INDEX], cond[PITCH_INDEX] = yaw_deg, pitch_deg
    if method == "zeros":
        return cond
    if method != "map":
        from stylejax.pipeline import PipelineError
        raise PipelineError(f"--config.head_pose.condition must be 'map' or 'zeros', got {method!r}")
    free = np.ones(COND_DIM, bool)
    free[[YAW_INDEX, PITCH_INDEX]] = False
    rows = id_latent[None, POSE_ROWS]

    def nll(c):
        full = jnp.where(free, c, jnp.asarray(cond))
        z = flow.forward(rows, full[None], solver="rk4", steps=rk4_steps)
        return 0.5 * jnp.mean(z ** 2)

    opt = optax.adam(0.05)

    @jax.jit
    def step(c, state):
        g = jax.grad(nll)(c)
        upd, state = opt.update(g, state, c)
        return optax.apply_updates(c, upd), state

    c, state = jnp.asarray(cond), opt.init(jnp.asarray(cond))
    for _ in range(int(steps)):
        c, state = step(c, state)
    c = np.where(free, np.asarray(c), cond).astype(np.float32)
    return c if np.all(np.isfinite(c)) else cond


def run(ctx):
    cfg, wd = ctx.config.head_pose, ctx.workdir
    if ctx.nets.styleflow is None:
        from stylejax.pipeline import PipelineError
        raise PipelineError("the head_pose stage needs StyleFlow: pass --styleflow DIR (python -m convert styleflow)")
    sig = signature(ctx, "head_pose", ctx.nets.fingerprint("generator"), ctx.nets.fingerprint("styleflow"),
                    ctx.nets.fingerprint("lpips"))
    if wd.is_done("head_pose", sig):
        return
    g, flow = ctx.nets.generator, ctx.nets.styleflow
    t = ctx.num_frames
    ident = atomic.read_json(wd.file("select_id", "id.json"))
    id_frame = int(ident["frame"])
    id_latent = np.asarray(wd.load("select_id", "id_latent.npy"))
    lpose = np.asarray(wd.load("select_id", "landmark_pose.npy"))
    signs = np.array([cfg.yaw_sign, cfg.pitch_sign], np.float32)
    src = lpose[id_frame, :2] * signs if np.isfinite(lpose[id_frame, :2]).all() else np.zeros(2, np.float32)
    wd.begin("head_pose", sig, ctx.chunk)
    cond_path = wd.file("head_pose", "cond_src.npy")
    try:
        cond_src = np.load(cond_path)
    except OSError:
        cond_src = source_condition(flow, jnp.asarray(id_latent), float(src[0]), float(src[1]), cfg.condition,
                                    cfg.condition_steps, int(cfg.rk4_steps))
        np.save(cond_path, cond_src)
    init = (lpose[:, :2] - lpose[id_frame, :2]) * signs
    if not cfg.landmark_init:
        init = np.zeros_like(init)
    init = np.where(np.isfinite(init), init, 0.0).astype(np.float32)
    tf = wd.transforms()
    roll = np.asarray(tf["roll_deg"], np.float32) if "roll_deg" in tf and len(tf["roll_deg"]) == t else np.zeros(t, np.float32)
    roll_rel = roll - roll[id_frame]

    pose_out = wd.array("head_pose", "pose.npy", (t, 3))
    ws_out = wd.array("head_pose", "ws_pose.npy", (t, g.config.num_ws, g.config.w_dim))
    loss_out = wd.array("head_pose", "loss.npy", (t,))
    dtype = jnp.dtype(ctx.config.dtype)
    nets = parallel.replicate({"generator": g, "lpips": ctx.nets.lpips, "styleflow": flow,
                               "id_latent": jnp.asarray(id_latent), "cond_src": jnp.asarray(cond_src)}, ctx.mesh)
    opt = Optimiser(loss_fn(cfg, ctx.loss_size, dtype), cfg.lr, cfg.steps, ctx.microbatch)
    resize = jax.jit(losses.resize, static_argnums=1)
    latents = jax.jit(lambda n, y, p: pose_latents(n["styleflow"], n["id_latent"], n["cond_src"], y, p, int(cfg.rk4_steps)))
    chunks = ctx.chunks()
    bar = cli.progress(total=len(chunks) * int(cfg.steps), desc="head_pose", unit="step")
    for lo, hi in chunks:
        if wd.chunk_done("head_pose", lo):
            bar.update(int(cfg.steps))
            continue
        (frames, start), mask = parallel.pad_frames((ctx.target(lo, hi), init[lo:hi]), ctx.chunk)
        batch = parallel.shard_frames({"target": resize(jnp.asarray(frames), ctx.loss_size), "mask": mask}, ctx.mesh)
        params = parallel.shard_frames({"yaw": start[:, 0], "pitch": start[:, 1]}, ctx.mesh)
        params, loss = opt.run(params, nets, batch, stage="head_pose", bar=bar)
        n = hi - lo
        ws = np.asarray(latents(nets, jnp.asarray(params["yaw"]), jnp.asarray(params["pitch"])))
        pose_out[lo:hi] = np.stack([params["yaw"][:n], params["pitch"][:n], roll_rel[lo:hi]], axis=1)
        ws_out[lo:hi] = ws[:n]
        loss_out[lo:hi] = loss[:n]
        pose_out.flush(), ws_out.flush(), loss_out.flush()
        wd.mark_chunk("head_pose", lo)
    bar.close()
    wd.mark_done("head_pose", sig, frames=t, mean_loss=float(np.mean(loss_out)))
    ctx.log(f"[head_pose] yaw {np.min(pose_out[:, 0]):+.1f}..{np.max(pose_out[:, 0]):+.1f} deg, pitch "
            f"{np.min(pose_out[:, 1]):+.1f}..{np.max(pose_out[:, 1]):+.1f}, roll {np.min(roll_rel):+.1f}.."
            f"{np.max(roll_rel):+.1f}; mean loss {float(np.mean(loss_out)):.4f}")
