"""Stage `head_pose`: per-frame yaw and pitch through the StyleFlow pose edit of the identity latent, roll
from the alignment.

For frame t, ws_t = the StyleFlow pose edit of the identity latent from cond_src to yaw = src_yaw + yaw_t,
pitch = src_pitch + pitch_t (rows 0-3 edited, as StyleFlow does for pose; see `stylejax.decoder.pose_latents`), and (yaw_t, pitch_t) minimise LPIPS + L2 between
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

from stylejax import losses
from stylejax.decoder import COND_DIM, POSE_ROWS, pose_latents
from stylejax.errors import PipelineError
from stylejax.io import atomic
from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX
from stylejax.stages.base import make_optimiser, run_chunks, signature


def loss_fn(config, loss_size, dtype, coarse=False):
    """Per-frame loss of yaw/pitch [T] (`coarse`: the generator synthesises only up to the loss size)."""
    def loss(params, nets, batch):
        ws = pose_latents(nets["styleflow"], nets["id_latent"], nets["cond_src"], params["yaw"], params["pitch"],
                          int(config.rk4_steps))
        g = nets["generator"]
        img = g.synthesize(ws, "const", dtype=dtype,
                           max_resolution=losses.coarse_resolution(g.config, loss_size) if coarse else None)
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

    dtype = jnp.dtype(ctx.config.dtype)
    nets = {"generator": g, "lpips": ctx.nets.lpips, "styleflow": flow, "id_latent": jnp.asarray(id_latent),
            "cond_src": jnp.asarray(cond_src)}
    resize = jax.jit(losses.resize, static_argnums=1)
    latents = jax.jit(lambda flow, id_latent, cond, y, p: pose_latents(flow, id_latent, cond, y, p, int(cfg.rk4_steps)))

    def make_batch(lo, hi):
        return {"frames": ctx.target(lo, hi), "start": init[lo:hi], "roll": roll_rel[lo:hi]}

    def start(batch):
        frames, pose = batch.pop("frames"), batch.pop("start")
        return {"yaw": pose[:, 0], "pitch": pose[:, 1]}, {**batch, "target": resize(frames, ctx.loss_size)}

    def finish(params, loss, batch):
        yaw, pitch = jnp.asarray(params["yaw"]), jnp.asarray(params["pitch"])
        return {"pose.npy": np.stack([params["yaw"], params["pitch"], np.asarray(batch["roll"])], axis=1),
                "ws_pose.npy": latents(flow, nets["id_latent"], nets["cond_src"], yaw, pitch)}

    opt = make_optimiser(ctx, cfg, lambda coarse: loss_fn(cfg, ctx.loss_size, dtype, coarse), cfg.lr)
    out = run_chunks(ctx, "head_pose", opt, nets, make_batch, start, finish,
                     outputs={"pose.npy": ((3,), np.float32), "ws_pose.npy": ((g.config.num_ws, g.config.w_dim), np.float32)})
    pose, mean_loss = out["pose.npy"], float(np.mean(out["loss.npy"]))
    wd.mark_done("head_pose", sig, frames=t, mean_loss=mean_loss)
    ctx.log(f"[head_pose] yaw {np.min(pose[:, 0]):+.1f}..{np.max(pose[:, 0]):+.1f} deg, pitch "
            f"{np.min(pose[:, 1]):+.1f}..{np.max(pose[:, 1]):+.1f}, roll {np.min(roll_rel):+.1f}.."
            f"{np.max(roll_rel):+.1f}; mean loss {mean_loss:.4f}")
