"""`python -m convert <network> --src FILE [--src2 FILE] --out DIR`."""
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
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    sub = parser.add_subparsers(dest="network", required=True)
    for name, module_name in CONVERTERS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    try:
        args._run(args)
    except (ConversionError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
