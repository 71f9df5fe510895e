"""Stage `head_pose`: per-frame yaw and pitch through the StyleFlow pose edit of the identity latent, roll
from the alignment.

For frame t, ws_t = the StyleFlow pose edit of the identity latent from cond_src to yaw = src_yaw + yaw_t,
pitch = src_pitch + pitch_t (W+ rows 0-3, as StyleFlow does for pose; see `stylejax.decoder.pose_latents`),
and (yaw_t, pitch_t) minimise LPIPS + L2 between G(ws_t) and the aligned frame; all frames of a chunk in one jitted step. They start from the landmark pose relative to the identity
frame. Yaw and pitch are stored relative to the identity frame (the identity renders at 0, 0), so an encoding
can drive another face.

The identity frame's StyleFlow condition `cond_src` (9 lighting + 8 attributes) came, for StyleFlow's
authors, from networks we do not have. Here: yaw and pitch entries = the identity frame's landmark pose; the
other 15 entries (`condition`) are
  "map" (default): the condition under which the flow finds the identity latent most probable, the maximum
      of log p(w_id | c) = sum over all W+ rows (the flow models every row, conditioned on c) of
      log N(z_r; 0, I) + log|det dz_r/dw_r| (`StyleFlow.log_likelihood`), started from the mean of
      StyleFlow's own condition data and kept inside that data's range per entry (a sigmoid onto [min, max]),
      from `configs/styleflow_condition.json` (`condition_data`);
  "mean": that data mean; "zeros": 0 (outside the data's range for the first lighting coefficient).

Landmark degrees become StyleFlow degrees through one factor per axis (`yaw_sign`, `pitch_sign`): a number, or
"auto" (default), measured on the identity's own renders (`stylejax.stages.pose_calibration`; +1 with a warning
when no face is found there), recorded in `head_pose/pose_calibration.json`.

Roll is the alignment's `roll_deg` relative to the identity frame, re-applied in the image plane at render
time. Crops aligned with the roll kept (`keep_roll` in `align/transforms.npz`) already show it: the roll to
re-apply is then 0 (recorded in the marker).
Outputs: `head_pose/pose.npy` [T, 3] (yaw, pitch, roll in degrees, relative), `head_pose/ws_pose.npy`
[T, num_ws, w_dim] (the head-adjusted latents), `head_pose/cond_src.npy` [17], `head_pose/condition.json`
(how the condition was found: method, log-likelihoods, each entry's place in the data range),
`head_pose/loss.npy` [T].
"""
import functools
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stylejax import losses
from stylejax.decoder import COND_DIM, pose_latents
from stylejax.errors import PipelineError
from stylejax.io import atomic
from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX
from stylejax.stages import pose_calibration
from stylejax.stages.base import make_optimiser, run_chunks, signature

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONDITION_DATA = os.path.join(REPO, "configs", "styleflow_condition.json")


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


def condition_data(path="default"):
    """StyleFlow's condition statistics: {"names", "mean", "std", "min", "max"} ([17] float32 arrays for the numbers)
    from `configs/styleflow_condition.json` ("default") or a JSON file of the same form."""
    spec = CONDITION_DATA if path == "default" else path
    data = atomic.read_json(spec, "StyleFlow condition data")
    try:
        out = {k: np.asarray(data[k], np.float32) for k in ("mean", "std", "min", "max")}
        names = [str(n) for n in data["names"]]
    except (KeyError, TypeError, ValueError):
        raise PipelineError(f"{spec}: expected StyleFlow condition data with names, mean, std, min and max "
                            f"(as {CONDITION_DATA})") from None
    lo, mean, hi = out["min"], out["mean"], out["max"]
    if any(v.shape != (COND_DIM,) for v in out.values()) or len(names) != COND_DIM or \
            not np.all((lo < hi) & (lo <= mean) & (mean <= hi) & (out["std"] > 0)):
        raise PipelineError(f"{spec}: names, mean, std, min and max must each have {COND_DIM} entries with "
                            "min <= mean <= max, min < max and std > 0")
    return {"names": names, **out}


def condition_nll(flow, rows, cond, probes, rk4_steps):
    """-log p(w | c) per W+ row and latent dimension (nats), the mean over the rows [R, D] of one latent."""
    ll = flow.log_likelihood(rows[None], cond[None], rk4_steps, probes)
    return -jnp.mean(ll) / rows.shape[-1]


def condition_prior_nll(cond, free, mean, std):
    """-log p(c) up to a constant: independent Gaussians with the data's mean and std on the free entries."""
    return 0.5 * jnp.sum(jnp.where(free, jnp.square((cond - mean) / std), 0.0))


@functools.partial(jax.jit, static_argnames=("rk4_steps", "lr"))
def _condition_step(u, state, flow, rows, fixed, free, lo, hi, mean, std, probes, rk4_steps, lr):
    """One Adam step on the unconstrained free entries u [17] (c = lo + (hi - lo) sigmoid(u) on them) of the
    negative log posterior per latent dimension, -(log p(w | c) + log p(c)) / (R D)."""
    def nll(u):
        c = jnp.where(free, lo + (hi - lo) * jax.nn.sigmoid(u), fixed)
        return condition_nll(flow, rows, c, probes, rk4_steps) + condition_prior_nll(c, free, mean, std) / rows.size
    value, grad = jax.value_and_grad(nll)(u)
    updates, state = optax.adam(lr).update(jnp.where(free, grad, 0.0), state, u)
    return optax.apply_updates(u, updates), state, value


def source_condition(flow, id_latent, yaw_deg, pitch_deg, method, data, steps=100, lr=0.1, rk4_steps=8,
                     probes=None):
    """(cond_src [17] float32, info dict): yaw/pitch entries from the landmarks; the other 15 by `method`
    ("map", "mean" or "zeros"; see the module docstring). `data` from `condition_data`; `probes` None for
    the exact log-determinant, or [K, w_dim] fixed Hutchinson probes."""
    if method not in ("map", "mean", "zeros"):
        raise PipelineError(f"--config.head_pose.condition must be 'map', 'mean' or 'zeros', got {method!r}")
    free = np.ones(COND_DIM, bool)
    free[[YAW_INDEX, PITCH_INDEX]] = False
    fixed = np.zeros(COND_DIM, np.float32)
    fixed[YAW_INDEX], fixed[PITCH_INDEX] = yaw_deg, pitch_deg
    start = np.where(free, data["mean"], fixed).astype(np.float32)
    rows = jnp.asarray(id_latent, jnp.float32)
    evaluate = jax.jit(condition_nll, static_argnames="rk4_steps")
    info = {"method": method, "rows": [0, int(rows.shape[0])],
            "log_likelihood_trace": "exact" if probes is None else f"hutchinson-{len(probes)}"}
    if method == "zeros":
        cond = fixed
    elif method == "mean":
        cond = start
    else:
        lo, hi = (jnp.asarray(data[k]) for k in ("min", "max"))
        frac = np.clip((data["mean"] - data["min"]) / (data["max"] - data["min"]), 1e-3, 1 - 1e-3)
        u = jnp.asarray(np.where(free, np.log(frac) - np.log1p(-frac), 0.0), jnp.float32)
        state = optax.adam(lr).init(u)
        args = (flow, rows, jnp.asarray(fixed), jnp.asarray(free), lo, hi, jnp.asarray(data["mean"]),
                jnp.asarray(data["std"]), probes)
        best_u, best = u, np.inf
        for _ in range(int(steps)):
            u_next, state, value = _condition_step(u, state, *args, rk4_steps=int(rk4_steps), lr=float(lr))
            if float(value) < best:  # value is at u (before the step): keep the best condition seen
                best_u, best = u, float(value)
            u = u_next
        cond = np.asarray(jnp.where(free, lo + (hi - lo) * jax.nn.sigmoid(best_u), fixed), np.float32)
        if not np.all(np.isfinite(cond)):
            cond, info["fallback"] = start, "non-finite likelihood: the data mean is used"
    nll = lambda c: float(evaluate(flow, rows, jnp.asarray(c), probes, rk4_steps=int(rk4_steps)))
    span = data["max"] - data["min"]
    info.update(
        nats_per_dim_at_data_mean=-nll(start), nats_per_dim=-nll(cond),
        entries={name: {"value": float(cond[i]), "data_mean": float(data["mean"][i]),
                        "data_range": [float(data["min"][i]), float(data["max"][i])],
                        "fraction_of_range": float((cond[i] - data["min"][i]) / span[i])}
                 for i, name in enumerate(data["names"])})
    return cond.astype(np.float32), info


def slow_condition_warning(method, probes, w_dim, backend):
    """The warning line for a source-condition search that will be slow: the exact log-determinant (`probes`
    <= 0) costs w_dim JVPs an ODE evaluation, about 70 s a step at StyleFlow's size (w_dim 512) on a 2-core CPU
    against 1.2 s with 16 probes (scripts/bench_styleflow_likelihood.py); None when it is not."""
    if method != "map" or probes > 0 or w_dim < 256 or backend != "cpu":
        return None
    return (f"warning: [head_pose] the source-condition search uses the exact log-determinant ({w_dim} JVPs an "
            f"ODE evaluation), slow on CPU; --config.head_pose.condition_probes=16 estimates it about 60x faster "
            f"(docs/benchmarks.md)")


def identity_renderer(g, flow, id_latent, cond_src, rk4_steps):
    """render(yaw [N], pitch [N]) -> uint8 images of the identity through the pose edit (pose_calibration). No
    edit at all is the identity latent itself (the edit is round-trip exact): drawn without compiling the flow."""
    from stylejax.decoder import to_uint8

    draw = jax.jit(lambda g, flow, y, p: g.synthesize(pose_latents(flow, jnp.asarray(id_latent), jnp.asarray(cond_src),
                                                                   y, p, rk4_steps)))
    still = jax.jit(lambda g, ws: g.synthesize(ws))

    def render(yaw, pitch):
        if not (np.any(yaw) or np.any(pitch)):
            return to_uint8(still(g, jnp.broadcast_to(jnp.asarray(id_latent), (len(yaw),) + id_latent.shape)))
        return to_uint8(draw(g, flow, jnp.asarray(yaw), jnp.asarray(pitch)))
    return render


def run(ctx):
    cfg, wd = ctx.config.head_pose, ctx.workdir
    if ctx.nets.styleflow is None:
        raise PipelineError("the head_pose stage needs StyleFlow: pass --styleflow DIR (python -m convert styleflow)")
    g, flow = ctx.nets.generator, ctx.nets.styleflow
    data = condition_data(cfg.condition_data)
    sig = signature(ctx, "head_pose", ctx.nets.fingerprint("generator"), ctx.nets.fingerprint("styleflow"),
                    ctx.nets.fingerprint("lpips"), {k: np.asarray(v).tolist() for k, v in data.items()})
    if wd.is_done("head_pose", sig):
        return
    t = ctx.num_frames
    ident = atomic.read_json(wd.file("select_id", "id.json"))
    id_frame = int(ident["frame"])
    id_latent = np.asarray(wd.load("select_id", "id_latent.npy"))
    lpose = np.asarray(wd.load("select_id", "landmark_pose.npy"))
    configured = (pose_calibration.parse_factor(cfg.yaw_sign, "yaw_sign"),
                  pose_calibration.parse_factor(cfg.pitch_sign, "pitch_sign"))
    known = np.isfinite(lpose[id_frame, :2]).all()
    conditions = {}

    k = int(cfg.condition_probes)
    slow = slow_condition_warning(cfg.condition, k, g.config.w_dim, jax.default_backend())
    if slow:
        ctx.log(slow)
    probes = None if k <= 0 else np.where(np.random.RandomState(int(ctx.config.seed)).rand(k, g.config.w_dim) < 0.5,
                                          -1.0, 1.0).astype(np.float32)  # fixed Rademacher probes

    def condition(factors):
        """(the identity's source condition with its landmark pose mapped by `factors`, its record); computed
        once for each `factors`."""
        key = tuple(float(v) for v in factors)
        if key not in conditions:
            src = lpose[id_frame, :2] * np.asarray(key) if known else (0.0, 0.0)
            conditions[key] = source_condition(flow, id_latent, float(src[0]), float(src[1]), cfg.condition, data,
                                               cfg.condition_steps, cfg.condition_lr, int(cfg.rk4_steps), probes)
        return conditions[key]

    wd.begin("head_pose", sig, ctx.chunk)
    calibration_path = wd.file("head_pose", pose_calibration.RECORD)
    if os.path.isfile(calibration_path):
        calibration = atomic.read_json(calibration_path)
    else:  # renders around the condition of the +1 convention; the condition is remade if the factors differ
        render = lambda yaw, pitch: identity_renderer(g, flow, id_latent, condition((1.0, 1.0))[0],
                                                      int(cfg.rk4_steps))(yaw, pitch)
        calibration = pose_calibration.calibrate(render, configured=configured)
        atomic.write_json(calibration_path, calibration)
        for line in pose_calibration.warnings(calibration):
            ctx.log(f"[head_pose] {line}")
    signs = np.array([calibration["yaw_factor"], calibration["pitch_factor"]], np.float32)
    cond_path = wd.file("head_pose", "cond_src.npy")
    try:
        cond_src = np.load(cond_path)
    except (OSError, ValueError):
        cond_src, info = condition(signs)
        atomic.write_json(wd.file("head_pose", "condition.json"), info)
        buf = io.BytesIO()
        np.save(buf, cond_src)
        atomic.write_bytes(cond_path, buf.getvalue())  # last: its presence means the condition is done
        ctx.log(f"[head_pose] source condition ({cfg.condition}): log p(w_id | c) {info['nats_per_dim']:.4f} nats "
                f"per dimension (data mean: {info['nats_per_dim_at_data_mean']:.4f})")
    init = (lpose[:, :2] - lpose[id_frame, :2]) * signs
    if not cfg.landmark_init:
        init = np.zeros_like(init)
    init = np.where(np.isfinite(init), init, 0.0).astype(np.float32)
    roll_rel, roll_note = relative_roll(wd.transforms(), t, id_frame)

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
    wd.mark_done("head_pose", sig, frames=t, mean_loss=mean_loss, roll=roll_note)
    ctx.log(f"[head_pose] yaw {np.min(pose[:, 0]):+.1f}..{np.max(pose[:, 0]):+.1f} deg, pitch "
            f"{np.min(pose[:, 1]):+.1f}..{np.max(pose[:, 1]):+.1f}, roll {np.min(roll_rel):+.1f}.."
            f"{np.max(roll_rel):+.1f} ({roll_note}); mean loss {mean_loss:.4f}")


def relative_roll(transforms, num_frames, id_frame):
    """(roll [T] degrees to re-apply at render time, relative to the identity frame; a note saying where the
    roll is). Level crops (the default alignment): the alignment's roll_deg. Crops that kept the roll
    (`keep_roll`): 0, the roll is in the crops and so in the latents; re-applying it would roll twice."""
    roll = np.asarray(transforms.get("roll_deg", ()), np.float32)
    if len(roll) != num_frames:
        return np.zeros(num_frames, np.float32), "no roll in the transforms: 0"
    if bool(np.asarray(transforms.get("keep_roll", False))):
        return np.zeros(num_frames, np.float32), "kept in the crops (keep_roll): not re-applied"
    return roll - roll[id_frame], "re-applied at render time"
