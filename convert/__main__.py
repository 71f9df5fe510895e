"""`python -m convert <network> --src FILE [--src2 FILE] --out DIR [--overwrite] [--json]`.

Networks: stylegan2, e4e, styleflow, lpips, arcface. `python -m convert <network> --help` for details.
Nothing from a checkpoint is ever executed; an existing --out is replaced only when it is a stylejax
checkpoint and --overwrite is given.
"""
import importlib
import os
import sys

from absl import flags

from convert import ConversionError
from stylejax import cli

# network name -> module in this package exposing `define_flags(fv)` and `run(args)`.
CONVERTERS = {
    "stylegan2": "convert.stylegan2",
    "e4e": "convert.e4e",
    "styleflow": "convert.styleflow",
    "lpips": "convert.lpips",
    "arcface": "convert.arcface",
}


def _definer(module):
    def define(fv):
        module.define_flags(fv)
        flags.DEFINE_bool("overwrite", False, "replace --out if it is an existing stylejax checkpoint",
                          flag_values=fv)
    return define


def parse_args(network, argv):
    """The converter's flags parsed into a namespace, for calling `convert.<network>.run(args)` directly."""
    fv = cli.new_flags()
    _definer(importlib.import_module(CONVERTERS[network]))(fv)
    return cli.parse(f"python -m convert {network}", fv, argv)


def _check_source(name, path):
    if os.path.isdir(path):
        raise ConversionError(f"--{name} {path} is a directory; give the checkpoint file itself")
    if not os.path.exists(path):
        raise ConversionError(f"--{name} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise ConversionError(f"--{name} {path}: permission denied")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in CONVERTERS:
        if argv and argv[0] not in ("-h", "--help"):
            return cli.error(f"unknown network {argv[0]!r}; choose one of {', '.join(CONVERTERS)} "
                             "(python -m convert <network> --src FILE --out DIR)")
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv else 2
    module = importlib.import_module(CONVERTERS[argv[0]])  # only the converter asked for is imported
    define = _definer(module)

    def run(args):
        from stylejax.io import checkpoint

        cli.require(args, *getattr(module, "REQUIRED", ("src", "out")))
        sources = [getattr(args, name, None) for name in ("src", "src2")]
        for name, path in zip(("src", "src2"), sources):
            if path is not None:
                _check_source(name, path)
        # refuse a bad --out now, not after minutes of reading and converting
        checkpoint.check_out(args.out, argv[0], overwrite=args.overwrite, inputs=sources)
        try:
            return module.run(args)
        except ConversionError as e:  # name the file when the converter's message does not
            src2 = getattr(args, "src2", None)
            if args.src and args.src not in str(e) and not (src2 and src2 in str(e)):
                raise type(e)(f"{args.src}: {e}") from None
            raise
        except ValueError as e:  # a malformed file surfacing in shape logic: still the user's input
            raise ConversionError(f"{args.src or args.out}: {e}") from None

    doc = (module.__doc__ or "").strip() + "\n" + (module.define_flags.__doc__ or "")
    return cli.run(f"python -m convert {argv[0]}", doc, define, run, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
