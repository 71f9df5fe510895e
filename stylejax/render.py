"""Render an encoding back to video.

  python -m stylejax.render ENC --out OUT.mp4 [--paste-back ORIG.mp4] [--side-by-side SBS.mp4]
      [--generator DIR --styleflow DIR] [--aligned WORKDIR/align/frames.npy]

Frames are rendered at the generator's resolution with the head's roll re-applied; with --paste-back they are
composited into the original video through the alignment transforms stored in the encoding. --side-by-side
also writes the aligned input | re-synthesis | error map. Networks default to the paths recorded in the
encoding; the generator must be the one that made it (checked by fingerprint).
"""
import os
import sys
import warnings

from absl import flags

from stylejax import cli
from stylejax.errors import UserError

# ffmpeg runs via fork+exec after JAX starts; its warning is about children that keep running Python
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")


def define_flags(fv):
    flags.DEFINE_string("out", None, "output mp4", flag_values=fv)
    flags.DEFINE_string("paste-back", None, "original video to paste the rendered faces into", flag_values=fv)
    flags.DEFINE_string("side-by-side", None, "also write input | re-synthesis | error map to this mp4", flag_values=fv)
    flags.DEFINE_string("generator", None, "converted generator (default: the one recorded in the encoding)",
                        flag_values=fv)
    flags.DEFINE_string("styleflow", None, "converted StyleFlow (default: the one recorded in the encoding)",
                        flag_values=fv)
    flags.DEFINE_string("aligned", None, "aligned frames.npy for --side-by-side (default: recorded work directory)",
                        flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace existing --out / --side-by-side videos (never another kind of file)",
                      flag_values=fv)


def main(argv=None):
    return cli.run("python -m stylejax.render", __doc__, define_flags, run, argv)


def load_for_render(path, generator=None, styleflow=None):
    """(Encoding, Generator, StyleFlow) with the generator's fingerprint checked against the encoding, and the
    encoding checked against both networks (`stylejax.decoder.check_fits`)."""
    from stylejax.decoder import check_fits
    from stylejax.errors import UserError
    from stylejax.io.encoding import load_encoding
    from stylejax.io.checkpoint import load
    from stylejax.stages.base import fingerprint

    enc = load_encoding(path)
    recorded = enc.settings.get("networks", {})
    gpath, fpath = generator or recorded.get("generator"), styleflow or recorded.get("styleflow")
    if not gpath or not fpath:
        raise UserError(f"{path} records no network paths: pass --generator and --styleflow")
    g, flow = load(gpath, "stylegan2"), load(fpath, "styleflow")
    load_encoding(path, expected_fingerprint=fingerprint(g))  # one-line error on a different generator
    want = enc.styleflow_fingerprint
    if want and fingerprint(flow) != want:
        raise UserError(f"encoding {path} was made with StyleFlow {want}, {fpath} is {fingerprint(flow)}: render "
                        "with the StyleFlow used to encode")
    check_fits(enc, g, flow, f"encoding {path}")
    return enc, g, flow


def run(args):
    from stylejax.io import atomic
    from stylejax.stages.render import render_outputs, render_video

    if len(args.positional) != 1:
        raise UserError("give exactly one encoding file: python -m stylejax.render ENC --out OUT.mp4")
    cli.require(args, "out")
    path = args.positional[0]
    # every output against every input named on the command line, before anything is loaded or written
    inputs = [path, args.paste_back, args.aligned, args.generator, args.styleflow]
    atomic.check_outputs(render_outputs(args.out, args.side_by_side), inputs, args.overwrite)
    enc, g, flow = load_for_render(path, args.generator, args.styleflow)
    aligned = args.aligned or enc.settings.get("aligned")
    recorded = enc.settings.get("networks", {})
    n = render_video(enc, g, flow, args.out, paste_back=args.paste_back, side_by_side=args.side_by_side,
                     aligned=aligned if args.side_by_side else None, overwrite=args.overwrite,
                     inputs=inputs + [aligned, recorded.get("generator"), recorded.get("styleflow")])
    return {"message": f"rendered {n} frames ({enc.resolution}px) to {args.out}", "frames": n,
            "out": os.path.realpath(args.out), "side_by_side": args.side_by_side}


if __name__ == "__main__":
    sys.exit(main())
