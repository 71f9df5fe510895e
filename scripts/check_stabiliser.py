"""Side-by-side numbers of the alignment stage's temporal stabilisers on the real-footage fixtures.

    python scripts/check_stabiliser.py [--frames 96] [--fixtures ../shared/fixtures]

For each stabiliser (none, the previous Gaussian σ 1/3, Savitzky–Golay, the default tricube local
quadratic 'poly') it prints, at 1024-panel scale:
* fast motion: corner error of the stage's crop on each aligned fixture placed into a 1280×720 canvas by the
  issue's fast transform (roll ±14° in 2 s, scale ±20% in 1.5 s, ±120 px sway; tests/align/test_stabilise.py's
  `fast_placement`), against the same stabiliser's crop on the unmoved panel carried by the known transform;
* jitter reduction: mean |second difference| of the corners, per frame / stabilised, on the static-camera
  aligned fixtures and on 4491301_unaligned;
* 4491301_unaligned vs ground truth: the same corner error on the fixture's own (slow) placement.
Landmarks are tracked once per clip (~20 s on 2 cores for 96 frames); the stabilisers run on them.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "align")]

from stylejax import align as al  # noqa: E402
from stylejax.align.stabilise import make_stabiliser  # noqa: E402
from test_stabilise import corner_error, fast_placement, place_clip  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(REPO), "shared", "fixtures")
PANELS = ("8775004_aligned.mp4", "4491301_aligned.mp4")
METHODS = ("none", "gaussian", "savgol", "poly")


def track(path, frames):
    lm, valid, _ = al.track_landmarks(path, max_frames=frames, log=lambda m: None)
    if not valid.all():
        print(f"warning: face missing in {int((~valid).sum())} frames of {path} (interpolated)")
    return lm, valid


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=96, help="frames per clip (the fixtures have 96)")
    p.add_argument("--fixtures", default=FIXTURES)
    args = p.parse_args()
    n = args.frames
    stabs = {m: make_stabiliser(m) for m in METHODS}
    lms = {}
    with tempfile.TemporaryDirectory() as tmp:
        A_fast = fast_placement(n)
        for name in PANELS:
            lms[name] = track(os.path.join(args.fixtures, name), n)
            placed = os.path.join(tmp, f"fast_{name}")
            place_clip(os.path.join(args.fixtures, name), A_fast, placed)
            lms["fast_" + name] = track(placed, n)
    unaligned = "4491301_unaligned.mp4"
    lms[unaligned] = track(os.path.join(args.fixtures, unaligned), n)
    with open(os.path.join(args.fixtures, "4491301_unaligned_transforms.json")) as f:
        A_fixture = np.array(json.load(f)["A"])[:n]

    def quads(name, method):
        lm, valid = lms[name]
        return al.transforms_from_landmarks(lm, valid, stabiliser=stabs[method])["quad"]

    def err(moved, panel, A, method):
        e = corner_error(quads(moved, method), quads(panel, method), A)
        return f"{e.mean():5.2f} / {e.max():5.2f}"

    def jitter_ratio(name, method):
        return f"{al.jitter(quads(name, 'none')) / al.jitter(quads(name, method)):5.1f}x"

    print(f"{n} frames per clip; corner errors in px at 1024 scale as mean / max; jitter = per-frame / stabilised")
    cols = ([f"fast {name[:7]}" for name in PANELS] + [f"jitter {name[:7]} (static)" for name in PANELS]
            + ["jitter 4491301_unal", "4491301_unal vs GT"])
    print(f"{'stabiliser':40s}" + "".join(f"{c:>24s}" for c in cols))
    for method in METHODS:
        row = [err("fast_" + name, name, A_fast, method) for name in PANELS]
        row += [jitter_ratio(name, method) for name in PANELS] + [jitter_ratio(unaligned, method)]
        row += [err(unaligned, "4491301_aligned.mp4", A_fixture, method)]
        print(f"{stabs[method].describe():40s}" + "".join(f"{c:>24s}" for c in row))


if __name__ == "__main__":
    main()
