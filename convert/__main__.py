"""`python -m convert <network> --src FILE [--src2 FILE] --out DIR`.

Networks: stylegan2, e4e, styleflow, lpips, arcface. `python -m convert <network> --help` for details.
"""
import argparse
import importlib
import sys

from convert import ConversionError

# network name -> module in this package exposing `add_arguments(parser)` and `run(args)`.
CONVERTERS = {
    "stylegan2": "convert.stylegan2",
    "e4e": "convert.e4e",
    "styleflow": "convert.styleflow",
    "lpips": "convert.lpips",
    "arcface": "convert.arcface",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in CONVERTERS:
        print(__doc__.strip(), file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown network {argv[0]!r}; choose one of {', '.join(CONVERTERS)}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    module = importlib.import_module(CONVERTERS[argv[0]])  # only the converter asked for is imported
    parser = argparse.ArgumentParser(prog=f"python -m convert {argv[0]}",
                                     description=(module.__doc__ or "").strip())
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        module.run(args)
    except (ConversionError, OSError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
