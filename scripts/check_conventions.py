"""Checks of the conventions that only real weights can confirm, on YOUR converted networks.

  python scripts/check_conventions.py --generator ckpt/ffhq --styleflow ckpt/styleflow --e4e ckpt/e4e \
      [--aligned WORKDIR | --aligned frames.npy | --video IN.mp4] [--frames 8] [--edit-deg 10] [--json]

The random networks of the tests and the demo cannot tell whether a convention matches the pretrained
networks (docs/encoder.md, "Conventions real weights would expose"). This prints, for the networks given:

  torgb_styles      mean of each ToRGB layer's style (affine output) over truncated samples (psi 0.7). Trained
                    FFHQ config-f: 0.00-0.10 (STIT's S_mean_std); a mean near 1 means the affine's +1 bias is
                    counted twice (reference facts 3.3).
  flow_prior        z = StyleFlow(w) of random W samples of the generator under StyleFlow's data-mean condition:
                    mean ~0 and std ~1 when the flow was trained on this generator's W and its direction
                    (w -> z) and batch-norm statistics are converted right.
  w_avg_rows        e4e's W+ of the frames (or of generator samples without frames): the mean squared distance
                    of rows 0-3 to w_avg, as a multiple of a random W sample's (about 1 or below: in
                    distribution; StyleFlow's pose edit reads these rows). w_avg_rows_refined: the same for
                    the encoder's refined W+ when --aligned is an encode work directory with invert/ws.npy.
  source_condition  the identity's StyleFlow condition found by the encoder's "map" method
                    (stages.head_pose.source_condition), each entry against StyleFlow's data range; entries at a
                    bound of the range mean the flow prefers conditions outside StyleFlow's data.
  pose_edit         renders of the identity edited by yaw +-N and pitch +-N degrees (StyleFlow, the encoder's
                    decoder), their head pose measured with dlib landmarks (stylejax.align.headpose): the sign
                    and slope of landmark degrees per edit degree give --config.head_pose.yaw_sign / pitch_sign
                    (slope ~+1: same convention and units). Says so when dlib finds no face in a render.

The identity is e4e's W+ of the most frontal frame (--aligned: a work directory, an align/ folder or a
frames.npy; --video: aligned here first), else of a generator sample.
"""
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from stylejax import cli  # noqa: E402
from stylejax.errors import UserError  # noqa: E402

PSI = 0.7


def define_flags(fv):
    flags.DEFINE_string("generator", None, "converted StyleGAN2 generator (python -m convert stylegan2)",
                        flag_values=fv)
    flags.DEFINE_string("styleflow", None, "converted StyleFlow (python -m convert styleflow)", flag_values=fv)
    flags.DEFINE_string("e4e", None, "converted e4e encoder (python -m convert e4e)", flag_values=fv)
    flags.DEFINE_string("aligned", None, "aligned frames: an encode work directory, an align/ folder or a "
                        "frames.npy", flag_values=fv)
    flags.DEFINE_string("video", None, "a talking-head video (aligned here with stylejax.align)", flag_values=fv)
    flags.DEFINE_integer("frames", 8, "frames used from the video (evenly spaced)", flag_values=fv)
    flags.DEFINE_integer("samples", 256, "random W samples for the statistics", flag_values=fv)
    flags.DEFINE_float("edit-deg", 10.0, "yaw and pitch edits of +-N degrees", flag_values=fv)
    flags.DEFINE_integer("condition-steps", 100, "optimiser steps of the source condition", flag_values=fv)
    flags.DEFINE_integer("condition-probes", 0, "0: exact log-determinant; K: K Hutchinson probes (faster on CPU)",
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "random samples' seed", flag_values=fv)


def main(argv=None):
    return cli.run("python scripts/check_conventions.py", __doc__, define_flags, run, argv)


def load_frames(args, size):
    """Aligned frames [n, S, S, 3] uint8 (evenly spaced, at most --frames) with their landmark pose [n, 3]
    (NaN where unknown), or (None, None)."""
    if args.aligned and args.video:
        raise UserError("give --aligned or --video, not both")
    if args.video:
        import shutil

        from stylejax.align import align_video

        tmp = tempfile.mkdtemp(prefix="check_conventions_")
        try:
            align_video(args.video, os.path.join(tmp, "align"), size=int(size), log=lambda msg: None)
            return read_aligned(os.path.join(tmp, "align", "frames.npy"), args.frames)[:2]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.aligned:
        path = args.aligned
        for sub in ("align/frames.npy", "frames.npy"):
            if os.path.isdir(path) and os.path.isfile(os.path.join(path, sub)):
                path = os.path.join(path, sub)
        if not os.path.isfile(path):
            raise UserError(f"--aligned {args.aligned}: no frames.npy there; give an encode work directory, an "
                            "align/ folder or a frames.npy")
        return read_aligned(path, args.frames)[:2]
    return None, None


def refined_latents(args):
    """The encoder's refined W+ (`WORKDIR/invert/ws.npy`) of the frames --aligned picks, when --aligned is an
    encode work directory that has them; else None."""
    if not args.aligned or not os.path.isfile(os.path.join(args.aligned, "invert", "ws.npy")):
        return None
    path = os.path.join(args.aligned, "align", "frames.npy")
    if not os.path.isfile(path):
        return None
    pick = read_aligned(path, args.frames)[2]
    ws = np.load(os.path.join(args.aligned, "invert", "ws.npy"), mmap_mode="r")
    return np.asarray(ws[pick]) if len(ws) > pick.max() else None


def read_aligned(path, count):
    """At most `count` evenly spaced frames of an aligned frames.npy (a copy), their landmark pose and their
    indices."""
    from stylejax.io.transforms import load_transforms
    from stylejax.io.video import load_frames as load_npy

    frames = load_npy(path)
    pick = np.unique(np.linspace(0, len(frames) - 1, max(1, min(count, len(frames)))).round().astype(int))
    pose = np.full((len(pick), 3), np.nan, np.float32)
    tf_path = os.path.join(os.path.dirname(path), "transforms.npz")
    if os.path.isfile(tf_path):
        from stylejax.stages.select_id import landmark_pose

        tf = load_transforms(tf_path)
        pose = landmark_pose(tf, len(frames))[pick]
    return np.asarray(frames[pick]), pose, pick


def torgb_styles(g, w):
    styles = g.styles_from_ws(w)
    rows = []
    for (name, _, _, is_torgb), s in zip(g.config.style_layers(), styles):
        if is_torgb:
            rows.append({"layer": name, "mean": float(np.mean(s)), "std": float(np.mean(np.std(s, axis=0)))})
    worst = max(abs(r["mean"]) for r in rows)
    near_one = all(abs(r["mean"] - 1.0) < 0.5 for r in rows)
    verdict = ("ok: ToRGB style means within 0.5 of 0 (trained FFHQ config-f: 0.00-0.10)" if worst < 0.5 else
               "SUSPECT: ToRGB style means near 1: the affine's +1 bias may be counted twice (random networks "
               "start with unit biases, so this is expected for them)" if near_one else
               f"SUSPECT: a ToRGB style mean of {worst:.2f} (trained FFHQ config-f: 0.00-0.10)")
    return {"layers": rows, "verdict": verdict}


def flow_prior(flow, w, cond):
    import jax.numpy as jnp

    z = np.asarray(flow.forward(jnp.asarray(w[:, :1]), jnp.broadcast_to(jnp.asarray(cond), (len(w), 17))))
    mean, std = float(z.mean()), float(z.std())
    ok = abs(mean) < 0.3 and 0.7 < std < 1.3
    return {"z_mean": mean, "z_std": std, "z_std_per_dim_range": [float(z.std(axis=(0, 1)).min()),
                                                                   float(z.std(axis=(0, 1)).max())],
            "verdict": "ok: W samples map to about N(0, I)" if ok else
            "SUSPECT: W samples do not map to N(0, I): a flow trained on another generator's W, the direction "
            "(forward = w -> z) or the batch-norm statistics"}


def w_avg_rows(ws, w_avg, typical, rows=slice(0, 4)):
    d = np.mean(np.square(ws[:, rows] - w_avg), axis=(1, 2)) / typical
    return {"ratio_per_frame": [float(v) for v in d], "ratio_mean": float(d.mean()),
            "verdict": "ok: rows 0-3 as close to w_avg as a random W sample or closer" if d.mean() <= 1.5 else
            "SUSPECT: rows 0-3 far from w_avg (an e4e or W+ refinement off the generator's distribution; "
            "consider --config.invert.reg)"}


def landmark_pose_of(images):
    """Head pose [n, 3] of rendered images (uint8 [n, S, S, 3]) from dlib landmarks; NaN where no face."""
    import cv2

    from stylejax.align.headpose import estimate_head_pose
    from stylejax.align.landmarks import detect_faces, predict_landmarks

    out = np.full((len(images), 3), np.nan, np.float32)
    for i, img in enumerate(images):
        boxes = detect_faces(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
        if len(boxes):
            box = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
            lm = predict_landmarks(img, box)
            out[i] = estimate_head_pose(lm[None], (img.shape[1], img.shape[0]))[0]
    return out


def pose_edit(g, flow, id_latent, cond, edit):
    import jax.numpy as jnp

    from stylejax.decoder import pose_latents, to_uint8

    yaw = jnp.asarray([-edit, 0.0, edit, 0.0, 0.0], jnp.float32)
    pitch = jnp.asarray([0.0, 0.0, 0.0, -edit, edit], jnp.float32)
    ws = pose_latents(flow, jnp.asarray(id_latent), jnp.asarray(cond), yaw, pitch, 8)
    images = to_uint8(g.synthesize(ws, "const"))
    pose = landmark_pose_of(images)
    out = {"edits_deg": {"yaw": [float(v) for v in yaw], "pitch": [float(v) for v in pitch]},
           "landmark_pose_deg": [[None if not np.isfinite(v) else float(v) for v in p] for p in pose],
           "faces_found": int(np.isfinite(pose[:, 0]).sum()), "renders": len(images),
           "resolution": int(images.shape[1])}
    if not np.isfinite(pose).all():
        out["verdict"] = (f"dlib found no face in {len(images) - out['faces_found']} of {len(images)} renders "
                          f"({images.shape[1]} px): the sign and slope of the yaw/pitch edits cannot be checked "
                          "(random weights render no faces)")
        return out
    for name, a, b, column in (("yaw", 0, 2, 0), ("pitch", 3, 4, 1)):
        slope = float((pose[b, column] - pose[a, column]) / (2 * edit))
        out[f"{name}_slope"] = slope
        out[f"{name}_sign"] = 1.0 if slope > 0 else -1.0
    out["verdict"] = (f"landmark degrees per edit degree: yaw {out['yaw_slope']:+.2f}, pitch "
                      f"{out['pitch_slope']:+.2f}; "
                      f"set --config.head_pose.yaw_sign={out['yaw_sign']:+g} and pitch_sign={out['pitch_sign']:+g} "
                      "(|slope| far from 1: StyleFlow's degrees are not the landmarks' degrees)")
    return out


def run(args):
    import jax
    import jax.numpy as jnp

    from stylejax.io.checkpoint import load
    from stylejax.stages import head_pose
    from stylejax.stages.base import Nets
    from stylejax.stages.invert import encode_e4e

    cli.require(args, "generator", "styleflow", "e4e")
    nets = Nets(generator=load(args.generator, "stylegan2"), e4e=load(args.e4e, "e4e"),
                styleflow=load(args.styleflow, "styleflow")).check()
    g, flow, e4e = nets.generator, nets.styleflow, nets.e4e
    frames, lpose = load_frames(args, g.config.resolution)
    data = head_pose.condition_data()
    z = jax.random.normal(jax.random.PRNGKey(args.seed), (args.samples, g.config.z_dim))
    w = np.asarray(g.mapping(z))
    w_avg = np.asarray(g.buffers["mapping"]["w_avg"])
    typical = float(np.mean(np.square(w[:, 0] - w_avg)))  # a random W sample's distance to the mean
    report = {"torgb_styles": torgb_styles(g, np.asarray(g.mapping(z, truncation_psi=PSI))),
              "flow_prior": flow_prior(flow, w, data["mean"])}

    if frames is None:
        source = "generator samples (no frames given)"
        images = g.synthesize(jnp.asarray(w[:args.frames]), "const")
        lpose = np.full((len(images), 3), np.nan, np.float32)
    else:
        source = f"{len(frames)} aligned frames"
        images = jnp.asarray(frames.astype(np.float32) / 127.5 - 1.0)
    ws = np.asarray(jax.jit(encode_e4e)(e4e, images))
    report["w_avg_rows"] = dict(w_avg_rows(ws, w_avg, typical), source=f"e4e W+ of {source}")
    refined = refined_latents(args)
    if refined is not None:
        report["w_avg_rows_refined"] = dict(w_avg_rows(refined, w_avg, typical),
                                            source=f"the work directory's refined W+ (invert/ws.npy) of {source}")
    off = np.where(np.isfinite(lpose[:, :2]).all(1), np.hypot(lpose[:, 0], lpose[:, 1]), np.inf)
    ident = int(np.argmin(off)) if np.isfinite(off).any() else 0
    src = lpose[ident, :2] if np.isfinite(off[ident]) else np.zeros(2)
    k = args.condition_probes
    probes = None if k <= 0 else np.where(np.random.RandomState(args.seed).rand(k, g.config.w_dim) < 0.5, -1.0,
                                          1.0).astype(np.float32)  # fixed Rademacher probes
    cond, info = head_pose.source_condition(flow, ws[ident], float(src[0]), float(src[1]), "map", data,
                                            steps=args.condition_steps, probes=probes)
    edge = [n for n, e in info["entries"].items() if e["fraction_of_range"] < 0.02 or e["fraction_of_range"] > 0.98]
    report["source_condition"] = {
        "identity": f"e4e W+ of {'frame' if frames is not None else 'sample'} {ident} of the {source}",
        "nats_per_dim": info["nats_per_dim"], "nats_per_dim_at_data_mean": info["nats_per_dim_at_data_mean"],
        "entries": info["entries"], "at_bounds": edge,
        "verdict": "ok: every entry inside StyleFlow's data range, none at a bound" if not edge else
        f"SUSPECT: {', '.join(edge)} at a bound of StyleFlow's data range"}
    report["pose_edit"] = pose_edit(g, flow, ws[ident], cond, float(args.edit_deg))
    lines = [f"{name}: {section['verdict']}" for name, section in report.items()]
    report["message"] = "\n".join(lines)
    return report


if __name__ == "__main__":
    sys.exit(main())
