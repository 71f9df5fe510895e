"""Render an encoding back to video.

  python -m stylejax.render ENC --out OUT.mp4 [--paste-back ORIG.mp4] [--side-by-side SBS.mp4]
      [--generator DIR --styleflow DIR] [--aligned WORKDIR/align/frames.npy] [--delta ENC.delta|none]

Frames are rendered at the generator's resolution with the head's roll re-applied; with --paste-back they are
composited into the original video through the alignment transforms stored in the encoding. --side-by-side
also writes the aligned input | re-synthesis | error map. Networks default to the paths recorded in the
encoding; the generator must be the one that made it (checked by fingerprint). An encoding made with
fine-tuning renders through its generator delta (the file recorded in it, or --delta; --delta none renders with
the base generator); a delta made from another generator, or for another encoding, is refused by fingerprint.
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
    flags.DEFINE_string("delta", None, "fine-tuned generator delta (default: the one recorded in the encoding; "
                        "'none': the base generator)", flag_values=fv)
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


def resolve_delta(enc, g, delta=None, source="the encoding"):
    """(generator to render with, delta summary or None): `g` plus the fine-tuned delta that goes with `enc`.

    `delta` None: the delta recorded in the encoding (its file must exist and match the recorded fingerprint),
    or none when the encoding was not fine-tuned; "none": the base generator; a path: that delta, which must be
    made from `g` and, when the encoding records a delta, be that one."""
    from stylejax.io.delta import DeltaError, load_delta

    if delta is not None and str(delta).strip().lower() == "none":
        return g, None
    path = delta
    if path is None:
        if enc.delta_fingerprint is None:
            return g, None
        path = enc.settings.get("delta")
        if not path or not os.path.isfile(path):
            raise DeltaError(f"{source} was made with a fine-tuned generator (delta {enc.delta_fingerprint}) but its "
                             f"delta file {path or '(not recorded)'} is missing: pass --delta FILE, or --delta none "
                             "to render with the base generator")
    d = load_delta(path, g)
    if enc.delta_fingerprint is not None and d.fingerprint != enc.delta_fingerprint:
        raise DeltaError(f"delta {path} is {d.fingerprint} but {source} was fine-tuned with delta "
                         f"{enc.delta_fingerprint}: pass the delta written beside it (or --delta none)")
    return d.apply(g, f"delta {path}"), {"path": os.path.realpath(path), "fingerprint": d.fingerprint,
                                         "bytes": d.nbytes, "form": d.form}


def run(args):
    from stylejax.io import atomic
    from stylejax.stages.render import render_outputs, render_video

    if len(args.positional) != 1:
        raise UserError("give exactly one encoding file: python -m stylejax.render ENC --out OUT.mp4")
    cli.require(args, "out")
    path = args.positional[0]
    delta_arg = args.delta if args.delta and args.delta.strip().lower() != "none" else None
    # every output against every input named on the command line, before anything is loaded or written
    inputs = [path, args.paste_back, args.aligned, args.generator, args.styleflow, delta_arg]
    atomic.check_outputs(render_outputs(args.out, args.side_by_side), inputs, args.overwrite)
    enc, g, flow = load_for_render(path, args.generator, args.styleflow)
    g, delta = resolve_delta(enc, g, args.delta, f"encoding {path}")
    aligned = args.aligned or enc.settings.get("aligned")
    recorded = enc.settings.get("networks", {})
    n = render_video(enc, g, flow, args.out, paste_back=args.paste_back, side_by_side=args.side_by_side,
                     aligned=aligned if args.side_by_side else None, overwrite=args.overwrite,
                     inputs=inputs + [aligned, recorded.get("generator"), recorded.get("styleflow"),
                                      delta and delta["path"]])
    tuned = f", generator delta {delta['form']} ({delta['bytes'] / 1e6:.2f} MB)" if delta else ""
    return {"message": f"rendered {n} frames ({enc.resolution}px) to {args.out}{tuned}", "frames": n,
            "out": os.path.realpath(args.out), "side_by_side": args.side_by_side, "delta": delta}


if __name__ == "__main__":
    sys.exit(main())
