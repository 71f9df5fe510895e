"""How far encodes of one clip drift apart with the chunk size, the device count and the CPU's numerics.

  python scripts/encode_numerics.py                      # the default variants (about 4 min on 2 CPU cores)
  python scripts/encode_numerics.py --variants 10 4 4x4:other --keep out/numerics

Encodes the clip of the encoder comparison tests (tests/stages/test_encoder.py: the demo's 10-frame synthetic
clip with tests/tiny_encoder.py's few-step config) once per variant, each in its own process (XLA reads its
flags when JAX starts). A variant is CHUNK[xDEVICES][:other]; `other` adds tests/numerics.py's flags, which
make this CPU round like another one. Every run is compared with the first variant:

  yaw/pitch, offsets   max |difference| of the saved (float16) values, in degrees and offset units, and in
                       float16 steps
  ws                   max |difference| of the inversions (invert/ws.npy)
  RMS levels           the largest per-frame RMS difference of the two encodings' re-syntheses (rendered here
                       by one program), in 8-bit levels
  dPSNR                |difference| of the PSNR encode reports
  auto score           max relative change of the "auto" channel scores; the first run's line gives the
                       relative gap between its 32nd and 33rd scores instead (the margin of the choice)
  same                 channels, identity frame, roll (alignment bookkeeping) and crop quads equal

The encoder tests bound what a user sees (RMS levels, dPSNR) and require `same`: their reasoning and
thresholds are in tests/stages/test_encoder.py.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
sys.path[:0] = [REPO, TESTS]

import numpy as np  # noqa: E402

FRAMES = 10
DEFAULT_VARIANTS = ("10", "4", "1", "4x4", "10:other", "4:other", "4x4:other")


def parse_variant(text):
    """'4x4:other' -> (chunk 4, 4 devices, other numerics)."""
    try:
        head, _, numerics = text.partition(":")
        chunk, _, devices = head.partition("x")
        if numerics not in ("", "other"):
            raise ValueError
        return int(chunk), int(devices or 1), numerics == "other"
    except ValueError:
        raise SystemExit(f"error: bad variant {text!r}; use CHUNK[xDEVICES][:other], e.g. 4x4:other") from None


def child(outdir, chunk):
    """Runs in the variant's process: encodes the clip into `outdir` and writes summary.json."""
    import tiny_encoder
    from stylejax import demo, pipeline

    g, _, flow, _ = tiny_encoder.networks()
    truth = demo.ground_truth(g, flow, FRAMES)
    frames = demo.synthesise(g, flow, *truth, 8)
    workdir = demo.synthetic_workdir(os.path.join(outdir, "workdir"), frames, truth[1])
    _, summary = pipeline.encode(workdir, tiny_encoder.nets(), tiny_encoder.few_steps_config(chunk),
                                 out=os.path.join(outdir, "clip.enc"), log=lambda msg: None)
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(summary, f, default=str)


def run_variant(text, outdir):
    import numerics

    chunk, devices, other = parse_variant(text)
    flags = numerics.with_flags(os.environ.get("XLA_FLAGS", ""), numerics.accepted_flags() if other else ())
    if devices > 1:
        flags = numerics.with_flags(flags, [f"--xla_force_host_platform_device_count={devices}"])
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    os.makedirs(outdir, exist_ok=True)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", outdir, str(chunk)], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"error: variant {text} failed:\n{r.stderr[-3000:]}")
    with open(os.path.join(outdir, "summary.json")) as f:
        summary = json.load(f)
    assert (summary["chunk_size"], summary["devices"]) == (chunk, devices), summary
    return {"name": text, "dir": outdir, "summary": summary, "flags": flags}


def float16_steps(a, b):
    scale = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
    return np.abs(a - b) / scale


def auto_scores(g, ws, samples):
    """The "auto" channel scores of the pool channels (the formula of stages/attributes.auto_channels)."""
    import jax
    import jax.numpy as jnp

    from stylejax.nets.stylespace import flatten_styles
    from stylejax.stages.attributes import channel_pool

    video = np.asarray(flatten_styles(jax.jit(lambda g, w: g.styles_from_ws(w))(g, jnp.asarray(ws))))
    z = jax.random.normal(jax.random.PRNGKey(0), (int(samples), g.config.z_dim))
    rand = np.asarray(flatten_styles(jax.jit(lambda g, z: g.styles_from_ws(g.mapping(z)))(g, z)))
    return (video.std(axis=0) / (rand.std(axis=0) + 1e-8))[channel_pool(g.config)]


def compare(runs):
    import jax.numpy as jnp

    import tiny_encoder
    from stylejax.decoder import iter_renders
    from stylejax.io.encoding import load_encoding

    g, _, flow, _ = tiny_encoder.networks()
    config = tiny_encoder.few_steps_config(FRAMES).attributes
    for r in runs:
        r["enc"] = load_encoding(os.path.join(r["dir"], "clip.enc"))
        r["images"] = np.concatenate([np.asarray(img) for _, _, img in iter_renders(r["enc"], g, flow, chunk=FRAMES)])
        r["ws"] = np.load(os.path.join(r["dir"], "workdir", "invert", "ws.npy"))
        r["scores"] = auto_scores(g, r["ws"], config.auto_samples)
    del jnp
    first = runs[0]
    top = np.sort(first["scores"])[::-1]
    k = int(config.num_channels)
    print(f"{'variant':>10} {'yaw/pitch deg':>13} {'f16 steps':>9} {'offsets':>8} {'f16 steps':>9} {'ws':>8} "
          f"{'RMS levels':>10} {'dPSNR dB':>8} {'auto score':>10} same")
    for r in runs:
        a, b = first["enc"], r["enc"]
        pose = np.abs(a.pose_deg[:, :2] - b.pose_deg[:, :2]).max()
        pose_steps = float16_steps(a.pose_deg[:, :2], b.pose_deg[:, :2]).max()
        off = np.abs(a.offsets - b.offsets).max()
        off_steps = float16_steps(a.offsets, b.offsets).max()
        ws = np.abs(first["ws"] - r["ws"]).max()
        rms = (np.sqrt(np.mean((first["images"].astype(np.float64) - r["images"]) ** 2, axis=(1, 2, 3))) * 127.5).max()
        dpsnr = abs(first["summary"]["psnr_db"] - r["summary"]["psnr_db"])
        if r is first:
            score = f"gap {100 * (top[k - 1] - top[k]) / top[k - 1]:.2f}%"
        else:
            score = f"{np.abs(r['scores'] / first['scores'] - 1).max():.1e}"
        same = (a.channels == b.channels and first["summary"]["id_frame"] == r["summary"]["id_frame"]
                and np.array_equal(a.pose_deg[:, 2], b.pose_deg[:, 2]) and np.array_equal(a.quad, b.quad))
        print(f"{r['name']:>10} {pose:13.2e} {pose_steps:9.1f} {off:8.1e} {off_steps:9.1f} {ws:8.1e} {rms:10.3f} "
              f"{dpsnr:8.4f} {score:>10} {'yes' if same else 'NO'}")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], int(sys.argv[3]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help="CHUNK[xDEVICES][:other]; the first is the reference (default: %(default)s)")
    p.add_argument("--keep", default=None, help="keep the runs' work directories under this folder")
    args = p.parse_args()
    for v in args.variants:
        parse_variant(v)
    import numerics

    print(f"other numerics: XLA_FLAGS += {' '.join(numerics.accepted_flags())!r}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.abspath(args.keep) if args.keep else tmp
        runs = []
        for i, v in enumerate(args.variants):
            runs.append(run_variant(v, os.path.join(base, f"{i}-{v.replace(':', '-')}")))
            print(f"encoded {v}", flush=True)
        compare(runs)


if __name__ == "__main__":
    main()
