"""`python -m convert <network> --src FILE [--src2 FILE] --out DIR [--overwrite] [--json]`.

Networks: stylegan2, e4e, styleflow, lpips, arcface. `python -m convert <network> --help` for details.
Nothing from a checkpoint is ever executed; an existing --out is replaced only when it is a stylejax
checkpoint and --overwrite is given.
"""
import importlib
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
        cli.require(args, *getattr(module, "REQUIRED", ("src", "out")))
        try:
            return module.run(args)
        except ValueError as e:  # a malformed file surfacing in shape logic: still the user's input
            raise ConversionError(f"{args.src or args.out}: {e}") from None

    doc = (module.__doc__ or "").strip() + "\n" + (module.define_flags.__doc__ or "")
    return cli.run(f"python -m convert {argv[0]}", doc, define, run, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
