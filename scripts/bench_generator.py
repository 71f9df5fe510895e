"""Generator throughput: images/s and achieved TFLOP/s for forward and forward+backward w.r.t. styles.

  python scripts/bench_generator.py --config f --batches 1,8,32 --dtypes float32,bfloat16
  python scripts/bench_generator.py --config small        # 64 px, narrow: a CPU smoke run

Model FLOPs are counted analytically (multiply-add = 2 FLOPs) over the convolutions that StyleGAN2
defines: 3x3 convs (the 2x up-convs counted on their input grid, as a transposed conv), 1x1 ToRGB, the
[1,3,3,1] FIR filters, modulation/demodulation and the affines. Forward+backward w.r.t. the styles needs
the input gradient of every conv (about 1x the forward conv FLOPs) but no weight gradients, so it is
counted as 2x forward. XLA's own count (cost_analysis) is printed beside it. MFU = achieved / --peak.
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp

from stylejax.nets.base import config_from_dict
from stylejax.nets.generator import Generator, GeneratorConfig, config_f

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# dense peak TFLOP/s per device kind, for the MFU column (bf16 tensor cores / fp32 non-tensor)
PEAKS = {"H100": {"bfloat16": 989.0, "float32": 67.0}, "H200": {"bfloat16": 989.0, "float32": 67.0},
         "A100": {"bfloat16": 312.0, "float32": 19.5}}


def model_flops(cfg: GeneratorConfig, batch: int) -> float:
    f = 0.0
    w = cfg.w_dim
    for name, _, c_in, torgb in cfg.style_layers():
        res = int(name.split(".")[0][1:])
        f += 2 * w * c_in  # affine
        if torgb:
            f += 2 * res * res * c_in * 3 + res * res * c_in  # 1x1 conv + modulation
            if res > 4:
                f += 2 * 16 * res * res * 3 / 4  # skip upsampling FIR (3 channels, 1/4 nonzero taps)
            continue
        c_out = cfg.ch(res)
        is_up = name.endswith("conv0") and res > 4
        grid = (res // 2) ** 2 if is_up else res * res  # transposed conv counted on its input grid
        f += 2 * grid * c_in * c_out * 9
        f += (res // 2 if is_up else res) ** 2 * c_in  # modulate activations
        f += 2 * c_in * c_out + 4 * res * res * c_out  # demod coefficients, demod + noise + bias + act
        if is_up:
            f += 2 * 16 * (res + 1) ** 2 * c_out  # 4x4 blur
    f += cfg.mapping_layers * 2 * w * w
    return f * batch


def load_config(name):
    """'f', 'f512', 'f256', 'small' or a JSON file like configs/stylegan2_config_f_1024.json."""
    presets = {"f": "stylegan2_config_f_1024.json", "small": "stylegan2_small_64.json"}
    if name in ("f512", "f256"):
        return config_f(int(name[1:]))
    path = os.path.join(CONFIGS, presets[name]) if name in presets else name
    with open(path) as f:
        return config_from_dict(GeneratorConfig, json.load(f))


def bench(fn, args, iters, warmup=2):
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / iters


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small",
                   help="'f' (config-f 1024), 'f512', 'f256', 'small' (64 px) or a generator config JSON")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--peak", type=float, default=None, help="peak TFLOP/s for MFU (default: by device kind)")
    args = p.parse_args()

    cfg = load_config(args.config)
    g = Generator.random(cfg, jax.random.PRNGKey(0))
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}); config {args.config}: {cfg.resolution}px, "
          f"{cfg.num_ws} ws, {sum(d for _, _, d, _ in cfg.style_layers())} style channels")
    print(f"{'dtype':>9} {'batch':>5} {'pass':>8} {'ms/iter':>9} {'img/s':>9} {'model TF':>9} "
          f"{'XLA TF':>8} {'TFLOP/s':>8} {'MFU':>6}")
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        peak = args.peak or next((v[dtype_name] for k, v in PEAKS.items() if k in dev.device_kind), None)
        for batch in [int(b) for b in args.batches.split(",")]:
            ws = jax.random.normal(jax.random.PRNGKey(1), (batch, cfg.num_ws, cfg.w_dim))
            styles = g.styles_from_ws(ws)

            fwd = jax.jit(lambda g, s: g.synthesize_from_styles(s, dtype=dtype))

            def loss(s, g):
                return jnp.mean(g.synthesize_from_styles(s, dtype=dtype) ** 2)

            fwd_bwd = jax.jit(jax.value_and_grad(loss))
            for name, fn, fargs, mult in [("fwd", fwd, (g, styles), 1), ("fwd+bwd", fwd_bwd, (styles, g), 2)]:
                try:
                    xla = fn.lower(*fargs).compile().cost_analysis()
                    xla = (xla[0] if isinstance(xla, list) else xla).get("flops", float("nan"))
                except Exception:  # cost analysis is best effort
                    xla = float("nan")
                sec = bench(fn, fargs, args.iters)
                flops = model_flops(cfg, batch) * mult
                tflops = flops / sec / 1e12
                mfu = f"{100 * tflops / peak:5.1f}%" if peak else "   n/a"
                print(f"{dtype_name:>9} {batch:>5} {name:>8} {sec * 1e3:9.2f} {batch / sec:9.2f} "
                      f"{flops / 1e12:9.4f} {xla / 1e12:8.4f} {tflops:8.3f} {mfu:>6}", flush=True)


if __name__ == "__main__":
    main()
