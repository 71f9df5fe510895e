"""Stage `attributes`: 32 StyleSpace channel offsets per frame.

The offsets are added to the chosen channels of the styles of the frame's head-adjusted latent and optimised
against the aligned frame: L2 (optionally weighted up on the eyes and mouth, from the landmarks) + LPIPS
(+ optional ArcFace identity loss); all frames of a chunk in one jitted step. With `refine_pose` (default)
yaw and pitch are refined jointly with the offsets, from the head_pose stage's values: estimated one after
the other, each would absorb what the other explains (pose fitted while expression is still unmodelled).

Channels (`config.attributes.channels`): "default" = `configs/channels_ffhq1024.json` (FFHQ config-f 1024;
for any other generator "default" means "auto"), "auto" = the channels that vary most across this video's
per-frame inversions, each channel's standard deviation over the frames divided by its standard deviation
over random samples of the generator, within the face-region pool (the JSON's mouth/eye/eyebrow pool at
FFHQ 1024, every conv-layer channel otherwise), or a JSON file {"channels": [...]}.
Offsets are in units of each channel's standard deviation over generator samples (`channel_std`).
Outputs: `attributes/offsets.npy` [T, K], `attributes/pose.npy` [T, 3] (the final yaw, pitch, roll),
`attributes/channels.json` (names, source, standard deviations), `attributes/loss.npy` [T].
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from stylejax import losses
from stylejax.decoder import apply_offsets, pose_latents
from stylejax.errors import PipelineError
from stylejax.io import atomic
from stylejax.nets.stylespace import channel_to_flat_index, flat_index_to_channel, flatten_styles
from stylejax.stages.base import make_optimiser, run_chunks, signature

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CHANNELS = os.path.join(REPO, "configs", "channels_ffhq1024.json")


# Offsets are in units of each channel's standard deviation, measured as StyleSpace measures it (GetCode.py
# s_mean_std: z ~ N(0, I), truncation psi = 0.7 on the first 8 W+ rows), so one unit is StyleSpace's own
# manipulation step (s += alpha * std) and the optimiser's step budget means the same on every channel.
STD_TRUNCATION_PSI = 0.7
STD_TRUNCATION_CUTOFF = 8


def channel_std(g, flat_index, samples, seed=0, batch=1000):
    """[K] standard deviation of the StyleSpace channels at `flat_index` over `samples` generator samples."""
    flat_index = np.asarray(flat_index)
    cutoff = min(STD_TRUNCATION_CUTOFF, g.config.num_ws)
    styles = jax.jit(lambda g, z: flatten_styles(g.styles_from_ws(g.mapping(z, STD_TRUNCATION_PSI, cutoff)))[:, flat_index])
    key = jax.random.PRNGKey(seed)
    total, total_sq, n = 0.0, 0.0, 0
    for i in range(0, int(samples), batch):  # float64 sums: 10^4 samples of values up to ~10
        z = jax.random.normal(jax.random.fold_in(key, i), (batch, g.config.z_dim))
        s = np.asarray(styles(g, z), np.float64)[:min(batch, int(samples) - i)]
        total, total_sq, n = total + s.sum(0), total_sq + (s ** 2).sum(0), n + len(s)
    var = np.maximum(total_sq / n - (total / n) ** 2, 0.0)
    return np.sqrt(var).astype(np.float32)


def loss_fn(config, loss_size, dtype, flat_index, use_weights, use_id, rk4_steps, coarse=False):
    """Per-frame loss of the offsets [T, K] (and yaw/pitch [T] with the joint refinement); `coarse`: the generator
    synthesises only up to the loss size."""
    def loss(params, nets, batch):
        g = nets["generator"]
        if "yaw" in params:  # joint refinement of the pose with the offsets
            ws = pose_latents(nets["styleflow"], nets["id_latent"], nets["cond_src"], params["yaw"], params["pitch"],
                              rk4_steps)
        else:
            ws = batch["ws"]
        styles = apply_offsets(g, ws, params["offsets"], flat_index, nets["offset_scale"])
        top = losses.coarse_resolution(g.config, loss_size) if coarse else None
        img = losses.resize(g.synthesize_from_styles(styles, "const", dtype=dtype, max_resolution=top), loss_size)
        out = losses.reconstruction(img, batch["target"], nets["lpips"], config.lpips_weight, config.l2_weight,
                                    batch["weights"] if use_weights else None)
        if use_id:
            out = out + config.id_weight * nets["arcface"].id_loss_per_sample(img, batch["target"])
        return out
    return loss


def temporal_prior(weight, pose_weight):
    """The temporal prior: weight·Σ_t |offsets[t] - offsets[t-1]|² (channel standard deviations) +
    pose_weight·Σ_t ((yaw[t] - yaw[t-1])² + (pitch[t] - pitch[t-1])²) (degrees) over pairs of real frames,
    added to the summed per-frame losses (`optimize.make_step`'s coupling)."""
    def penalty(params, batch):
        pair = batch["mask"][1:] * batch["mask"][:-1]
        total = weight * jnp.sum(pair * jnp.sum(jnp.square(jnp.diff(params["offsets"], axis=0)), axis=-1))
        for name in ("yaw", "pitch"):
            if name in params:
                total = total + pose_weight * jnp.sum(pair * jnp.square(jnp.diff(params[name])))
        return total
    return penalty


def temporal_overlap(cfg):
    """Frames of context each side of a chunk under the temporal prior: `temporal_overlap`, or with -1 the number
    of steps, which makes the chunked result equal the whole video's (the light cone of optimize.py)."""
    overlap = int(cfg.temporal_overlap)
    if overlap < -1:
        raise PipelineError(f"--config.attributes.temporal_overlap must be >= 0 or -1 (= the steps), got {overlap}")
    return int(cfg.steps) if overlap == -1 else overlap


def is_ffhq_1024(gconfig):
    from stylejax.nets.generator import GeneratorConfig

    return gconfig == GeneratorConfig()


def channel_pool(gconfig):
    """Flat indices the channel choice may use."""
    if is_ffhq_1024(gconfig):
        pool = json.load(open(DEFAULT_CHANNELS))["pool"]
        return np.array(sorted({channel_to_flat_index(n, gconfig) for names in pool.values() for n in names}))
    idx, start = [], 0
    for _, _, dim, is_torgb in gconfig.style_layers():
        if not is_torgb:
            idx.extend(range(start, start + dim))
        start += dim
    return np.array(idx)


AUTO_CHUNK = 256  # frames per call when measuring the spread over a video: memory bounded by this, not by T


def video_style_std(g, ws_frames, chunk=AUTO_CHUNK):
    """[sum C_l] standard deviation of every StyleSpace channel over the frames' W+ latents `ws_frames`
    ([T, num_ws, w_dim], e.g. memory-mapped), `chunk` frames at a time (the last chunk padded: one program)."""
    styles = jax.jit(lambda g, w: flatten_styles(g.styles_from_ws(w)))
    t = len(ws_frames)
    n = min(t, chunk)
    total, total_sq = 0.0, 0.0
    for lo in range(0, t, n):  # float64 sums: spreads far below the channels' means survive
        w = np.asarray(ws_frames[lo:lo + n], np.float32)
        k = len(w)
        w = np.concatenate([w, np.repeat(w[-1:], n - k, axis=0)]) if k < n else w
        s = np.asarray(styles(g, jnp.asarray(w)), np.float64)[:k]
        total, total_sq = total + s.sum(axis=0), total_sq + (s ** 2).sum(axis=0)
    return np.sqrt(np.maximum(total_sq / t - (total / t) ** 2, 0.0))


def auto_channels(g, ws_frames, num_channels, samples, seed=0):
    """The `num_channels` pool channels whose spread over the video's frames is largest relative to their
    spread over random generator samples."""
    z = jax.random.normal(jax.random.PRNGKey(seed), (int(samples), g.config.z_dim))
    flat_random = np.asarray(flatten_styles(jax.jit(lambda g, z: g.styles_from_ws(g.mapping(z)))(g, z)))
    score = video_style_std(g, ws_frames) / (flat_random.std(axis=0) + 1e-8)
    pool = channel_pool(g.config)
    if len(pool) < num_channels:
        raise PipelineError(f"the generator has only {len(pool)} channels to choose from, fewer than "
                            f"--config.attributes.num_channels={num_channels}")
    chosen = pool[np.argsort(-score[pool], kind="stable")[:num_channels]]
    return [flat_index_to_channel(int(i), g.config) for i in sorted(chosen)]


def resolve_channels(spec, g, wd, num_channels, samples):
    gconfig = g.config
    if spec == "default" and is_ffhq_1024(gconfig):
        spec = DEFAULT_CHANNELS
    if spec in ("default", "auto"):
        return auto_channels(g, wd.load("invert", "ws.npy"), num_channels, samples), "auto"
    data = atomic.read_json(spec, "channel list")
    names = data.get("channels") if isinstance(data, dict) else data
    if not isinstance(names, list) or not names:
        raise PipelineError(f"{spec}: expected a JSON list of channel names or {{\"channels\": [...]}}")
    try:
        [channel_to_flat_index(n, gconfig) for n in names]
    except (ValueError, IndexError, KeyError) as e:
        raise PipelineError(f"{spec}: channel list does not fit this generator ({e})") from None
    return list(names), os.path.basename(spec)


def run(ctx):
    cfg, wd = ctx.config.attributes, ctx.workdir
    sig = signature(ctx, "attributes", ctx.nets.fingerprint("generator"), ctx.nets.fingerprint("lpips"),
                    ctx.nets.fingerprint("arcface") if cfg.id_weight else None)
    if wd.is_done("attributes", sig):
        return
    g = ctx.nets.generator
    t = ctx.num_frames
    use_id = bool(cfg.id_weight)
    if use_id and ctx.nets.arcface is None:
        raise PipelineError("--config.attributes.id_weight > 0 needs an ArcFace network: pass --arcface DIR")
    wd.begin("attributes", sig, ctx.chunk)
    ch_path = wd.file("attributes", "channels.json")
    if os.path.isfile(ch_path):
        chosen = atomic.read_json(ch_path)
        channels, std = chosen["channels"], np.asarray(chosen["std"], np.float32)
    else:
        channels, source = resolve_channels(cfg.channels, g, wd, int(cfg.num_channels), int(cfg.auto_samples))
        std = channel_std(g, [channel_to_flat_index(n, g.config) for n in channels], int(cfg.std_samples))
        if not (np.isfinite(std).all() and (std > 0).all()):
            dead = [c for c, v in zip(channels, std) if not v > 0]
            raise PipelineError(f"channel(s) {', '.join(dead[:4])} never vary over the generator's samples: choose "
                                "other channels (--channels)")
        atomic.write_json(ch_path, {"channels": channels, "source": source, "std": [float(v) for v in std],
                                    "std_definition": f"std over {int(cfg.std_samples)} samples, truncation psi "
                                                      f"{STD_TRUNCATION_PSI} on the first {STD_TRUNCATION_CUTOFF} "
                                                      "W+ rows (StyleSpace's s_mean_std)"})
    flat_index = np.array([channel_to_flat_index(n, g.config) for n in channels])
    weights_all = region_weights(wd, t, ctx.loss_size, cfg)
    use_weights = weights_all is not None
    if use_weights and weights_all.max() == 1.0:
        ctx.log("[attributes] eye/mouth weighting is on but no eye or mouth landmark falls on the crops: every "
                "weight is 1 (are the landmarks and quads in the same frame?)")

    ws_pose = wd.load("head_pose", "ws_pose.npy")
    pose_in = wd.load("head_pose", "pose.npy")
    refine = bool(cfg.refine_pose)
    dtype = jnp.dtype(ctx.config.dtype)
    nets = {"generator": g, "lpips": ctx.nets.lpips, "offset_scale": jnp.asarray(std)}
    if use_id:
        nets["arcface"] = ctx.nets.arcface
    if refine:
        nets.update(styleflow=ctx.nets.styleflow, id_latent=jnp.asarray(wd.load("select_id", "id_latent.npy")),
                    cond_src=jnp.asarray(np.load(wd.file("head_pose", "cond_src.npy"))))
    lr = {"offsets": cfg.lr, "yaw": cfg.pose_lr, "pitch": cfg.pose_lr} if refine else cfg.lr
    coupled = bool(cfg.temporal_weight or cfg.temporal_pose_weight)
    opt = make_optimiser(ctx, cfg, lambda coarse: loss_fn(cfg, ctx.loss_size, dtype, flat_index, use_weights, use_id,
                                                          int(ctx.config.head_pose.rk4_steps), coarse), lr,
                         coupling=temporal_prior(cfg.temporal_weight, cfg.temporal_pose_weight) if coupled else None)
    resize = jax.jit(losses.resize, static_argnums=1)

    def make_batch(lo, hi):
        host = {"frames": ctx.target(lo, hi), "ws": np.asarray(ws_pose[lo:hi]),
                "pose": np.asarray(pose_in[lo:hi], np.float32)}
        if use_weights:
            host["weights"] = weights_all[lo:hi]
        return host

    def init(batch):
        frames, pose = batch.pop("frames"), batch["pose"]
        start = {"offsets": jnp.zeros((frames.shape[0], len(channels)), jnp.float32)}
        if refine:
            start.update(yaw=pose[:, 0], pitch=pose[:, 1])
        return start, {**batch, "target": resize(frames, ctx.loss_size)}

    def finish(params, loss, batch):
        pose = np.asarray(batch["pose"])
        if refine:
            pose = np.stack([params["yaw"], params["pitch"], pose[:, 2]], 1)
        return {"offsets.npy": params["offsets"], "pose.npy": pose}

    out = run_chunks(ctx, "attributes", opt, nets, make_batch, init, finish,
                     outputs={"offsets.npy": ((len(channels),), np.float32), "pose.npy": ((3,), np.float32)},
                     overlap=temporal_overlap(cfg) if coupled else 0)
    mean_loss = float(np.mean(out["loss.npy"]))
    wd.mark_done("attributes", sig, frames=t, channels=channels, mean_loss=mean_loss)
    ctx.log(f"[attributes] {len(channels)} channels, |offset| max {float(np.abs(out['offsets.npy']).max()):.3f}; "
            f"mean loss {mean_loss:.4f}")

def region_weights(wd, t, size, cfg):
    """[T, L, L] loss weights at the loss size L from the landmarks (None when off or without landmarks)."""
    if not (cfg.eye_weight or cfg.mouth_weight):
        return None
    from stylejax.regions import landmarks_to_crop, region_weights as weights

    tf = wd.transforms()
    if "landmarks" not in tf or len(tf["landmarks"]) != t or "quad" not in tf:
        return None
    # the quad is in frame pixels, so the landmarks map straight onto an L² crop of it (no rescaling of crop
    # pixels, whose centres sit half a pixel in)
    crop = landmarks_to_crop(np.asarray(tf["landmarks"], np.float64), np.asarray(tf["quad"], np.float64), size)
    return np.asarray(weights(crop, size, float(cfg.eye_weight), float(cfg.mouth_weight), 0.02), np.float32)
