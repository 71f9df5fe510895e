"""Encoder optimisation steps, batched over T frames vs the same work one frame at a time.

  python scripts/bench_encode.py --config small64 --T 1,8,32,64        # CPU: 64 px generator
  python scripts/bench_encode.py --config f --dtype bfloat16 --T 1,8,32,128,256   # GPU, config-f 1024
  python scripts/bench_encode.py --config f --dtype bfloat16 --encode-300         # GPU: a 300-frame clip
  python scripts/bench_encode.py --config tiny --encode-300 --encode-frames 16 --stages none   # code path

For each stage (invert refinement, head pose, attributes) and each T it builds the stage's real step
(`optimize.make_step` with the stage's `loss_fn` and `optimize.adam`, jitted with donation as the stages do)
on random networks and random targets:

  batched  one step of T frames, timed over --steps steps after warm-up   -> frame-steps/s
  loop     the same step jitted for T = 1, called once per frame           -> frame-steps/s
  ratio    batched / loop (> 1: batching wins)

Batched and loop are timed alternately for --rounds rounds over the same work (T frame-steps; --loop-frames
caps the loop's share) and the best round of each is kept: the machine may be shared, and the fastest round
is the least disturbed one. `cpu-ratio` is the same ratio in process CPU seconds per frame-step, which
descheduling by other processes does not inflate (but it counts both cores of a parallel op).

Also per T: XLA's FLOP count per frame-step (cost_analysis of the step; for a microbatched step, marked *,
the T = 1 program's count, because XLA counts a `lax.map` body once, not once per group), the step's memory,
and on GPU/TPU the MFU against the bf16 dense peak (from the device kind, or --peak-tflops). Memory: on CPU
the compiled program's memory_analysis() (arguments + outputs + temporaries); on GPU
memory_stats()['peak_bytes_in_use'] after the step (a process-wide high-water mark, so T runs in increasing
order; the compiled figure is in the --json rows too).

--microbatch: -1 (default) = what the encoder uses (`parallel.default_microbatch`); 0 = the whole batch at
once; m = sequential groups of m frames inside the step. --compare-microbatch 0,8,old8 times several
settings of the batched step side by side (the loop is the same for all; oldM = the step as it was before
this benchmark, differentiated through the lax.map). Findings: docs/benchmarks.md.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from stylejax import optimize, parallel  # noqa: E402

# dense bf16 peak TFLOP/s per device kind (substring of jax's device_kind), for the MFU column
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0,
                    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0}
STAGES = ("invert", "head_pose", "attributes")


# ------------------------------------------------------------------------------------------------ networks

def build_networks(name, seed=0):
    """(generator, e4e, styleflow, lpips, lpips_note) for 'tiny' (the demo's 32 px nets), 'small64'
    (configs/stylegan2_small_64.json with small e4e/StyleFlow built like the demo's) or 'f' (config-f 1024,
    full e4e and StyleFlow)."""
    from stylejax import demo

    lp, note = demo.lpips_network()
    if name == "tiny":
        return (*demo.tiny_networks(seed), lp, note)
    from stylejax.nets.base import config_from_dict
    from stylejax.nets.e4e import E4E, E4EConfig
    from stylejax.nets.generator import Generator, GeneratorConfig, config_f
    from stylejax.nets.irse import IRSEConfig
    from stylejax.nets.styleflow import StyleFlow, StyleFlowConfig

    k_g, k_e, k_f = jax.random.split(jax.random.PRNGKey(seed), 3)
    if name == "small64":
        with open(os.path.join(REPO, "configs", "stylegan2_small_64.json")) as f:
            gcfg = config_from_dict(GeneratorConfig, json.load(f))
        ecfg = E4EConfig(body=IRSEConfig(stem_width=16, widths=(16, 16, 32, 32), units_per_stage=(1, 1, 2, 1)),
                         n_styles=gcfg.num_ws)
        fcfg = StyleFlowConfig(dim=gcfg.w_dim, hidden_dims=(64, 64))
    elif name == "f":
        gcfg, ecfg, fcfg = config_f(1024), E4EConfig(), StyleFlowConfig()
    else:
        fail(f"--config must be tiny, small64 or f, got {name!r}")
    g = jax.jit(Generator.random, static_argnums=0)(gcfg, k_g)
    # scale ToRGB so random images stay about [-1, 1] (as the demo does): the losses see realistic ranges
    synthesis = {k: ({**b, "torgb": {**b["torgb"], "weight": b["torgb"]["weight"] * 0.2,
                                     "bias": b["torgb"]["bias"] * 0.2}} if isinstance(b, dict) and "torgb" in b else b)
                 for k, b in g.params["synthesis"].items()}
    g = Generator(gcfg, {**g.params, "synthesis": synthesis}, g.buffers)
    e4e = jax.jit(E4E.random, static_argnums=0)(ecfg, k_e)
    flow = jax.jit(StyleFlow.random, static_argnums=0)(fcfg, k_f)
    return g, e4e, flow, lp, note


def encode_config(name):
    from stylejax.demo import load_config

    return load_config(os.path.join(REPO, "configs", "encode_tiny.py" if name == "tiny" else "encode.py"))


# ------------------------------------------------------------------------------------------------ problems

def stage_problem(stage, g, flow, lp, config, t, dtype, seed=0):
    """(loss_fn, lr, nets, params [T...], batch [T...]) of one stage on random inputs, as its `run` builds them."""
    from stylejax.stages import attributes, head_pose, invert
    from stylejax.stages.attributes import channel_pool

    rng = np.random.RandomState(seed)
    size = min(int(config.loss_size), g.config.resolution)
    num_ws, w_dim = g.config.num_ws, g.config.w_dim
    z = rng.randn(t + 1, g.config.z_dim).astype(np.float32)
    ws = np.asarray(jax.jit(lambda g, z: g.mapping(z, truncation_psi=0.7))(g, jnp.asarray(z)))
    target = rng.uniform(-1, 1, (t, size, size, 3)).astype(np.float32)
    batch = {"target": target, "mask": np.ones(t, np.float32)}
    pose_nets = {"styleflow": flow, "id_latent": jnp.asarray(ws[-1]), "cond_src": jnp.zeros(17, jnp.float32)}
    nets = {"generator": g, "lpips": lp}
    rk4 = int(config.head_pose.rk4_steps)
    if stage == "invert":
        cfg = config.invert
        loss = invert.loss_fn(cfg, size, dtype)
        params = {"ws": ws[:t]} if str(cfg.space).lower() == "w+" else {"w": ws[:t, 0]}
        lr = cfg.lr
    elif stage == "head_pose":
        cfg = config.head_pose
        loss = head_pose.loss_fn(cfg, size, dtype)
        nets.update(pose_nets)
        params = {"yaw": rng.uniform(-5, 5, t).astype(np.float32), "pitch": rng.uniform(-5, 5, t).astype(np.float32)}
        lr = cfg.lr
    elif stage == "attributes":
        cfg = config.attributes
        pool = channel_pool(g.config)
        flat_index = np.sort(rng.choice(pool, int(cfg.num_channels), replace=False))
        use_weights = bool(cfg.eye_weight or cfg.mouth_weight)
        refine = bool(cfg.refine_pose)
        loss = attributes.loss_fn(cfg, size, dtype, flat_index, use_weights, False, rk4)
        batch["ws"] = ws[:t]
        if use_weights:  # eye/mouth boxes weighted up, as region_weights makes them (mean about 1)
            w = np.ones((t, size, size), np.float32)
            w[:, size // 3:size // 2, size // 5:4 * size // 5] += float(cfg.eye_weight)
            w[:, 2 * size // 3:5 * size // 6, size // 3:2 * size // 3] += float(cfg.mouth_weight)
            batch["weights"] = w / w.mean(axis=(1, 2), keepdims=True)
        params = {"offsets": np.zeros((t, len(flat_index)), np.float32)}
        lr = cfg.lr
        if refine:
            nets.update(pose_nets)
            params.update(yaw=rng.uniform(-5, 5, t).astype(np.float32), pitch=rng.uniform(-5, 5, t).astype(np.float32))
            lr = {"offsets": cfg.lr, "yaw": cfg.pose_lr, "pitch": cfg.pose_lr}
    else:
        fail(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    return loss, lr, cfg, nets, params, batch


def fail(message):
    """A user error: one line, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def take(tree, lo, hi):
    return jax.tree_util.tree_map(lambda a: a[lo:hi], tree)


class Steps:
    """One stage's jitted steps, one per microbatch setting, shared by every frame count (jit caches per shape),
    so the batched T = 1 step and the per-frame loop are the same compiled program."""

    def __init__(self, loss, lr, steps, nets):
        self.opt = optimize.adam(lr, steps)
        self.loss, self.nets, self._jitted = loss, nets, {}

    def jitted(self, microbatch):
        if microbatch not in self._jitted:
            make = legacy_make_step if str(microbatch).startswith("old") else optimize.make_step
            self._jitted[microbatch] = jax.jit(make(self.loss, self.opt, micro_size(microbatch)), donate_argnums=(0, 1))
        return self._jitted[microbatch]

    def runner(self, params, batch, microbatch):
        t = len(batch["mask"])
        m = micro_size(microbatch)
        whole = not m or m >= t or t % m  # no groups: the whole-batch program (shared with the loop at T = 1)
        return Runner(self.jitted(0 if whole else microbatch), self.opt, self.nets, params, batch)


def micro_size(setting):
    return int(str(setting)[3:]) if str(setting).startswith("old") else int(setting)


def legacy_make_step(loss_fn, optimizer, microbatch):
    """The step as it was before this benchmark (for comparison only): the per-frame losses in lax.map
    groups, differentiated *through* the map, so every group's activations stay alive for the backward."""
    import optax

    def total(params, nets, batch):
        per = optimize.per_frame_losses(loss_fn, params, nets, batch, microbatch)
        return jnp.sum(per * batch["mask"]), per

    def step(params, opt_state, nets, batch):
        (_, per), grads = jax.value_and_grad(total, has_aux=True)(params, nets, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, per

    return step


class Runner:
    """A jitted step with its own state (params, opt_state, batch) for a fixed frame count."""

    def __init__(self, step, opt, nets, params, batch):
        self.step, self.nets = step, nets
        self.params = jax.device_put(params)
        self.opt_state = opt.init(self.params)
        self.batch = jax.device_put(batch)

    def __call__(self):
        self.params, self.opt_state, per = self.step(self.params, self.opt_state, self.nets, self.batch)
        return per

    def compiled(self):
        return self.step.lower(self.params, self.opt_state, self.nets, self.batch).compile()


def cost_flops(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def compiled_bytes(compiled):
    """Arguments + outputs + temporaries of a compiled program (donated arguments counted once)."""
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    return float(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
                 - getattr(m, "alias_size_in_bytes", 0))


def timed(fn):
    """(wall seconds, process CPU seconds) of fn() until its results are ready."""
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0, time.process_time() - c0


def bench_stage(stage, nets_all, config, ts, args, micro_settings, out_rows, log):
    g, flow, lp = nets_all
    dtype = jnp.dtype(args.dtype)
    dev = jax.devices()[0]
    gpu = dev.platform != "cpu"
    peak = args.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in dev.device_kind), None)
    loss, lr, cfg, nets, params, batch = stage_problem(stage, g, flow, lp, config, max(ts), dtype)
    steps = Steps(loss, lr, int(cfg.steps), jax.device_put(nets))
    # the per-frame loop: the T = 1 program, one state per frame (as if each frame were its own clip)
    loop_frames = max(1, min(max(ts), args.loop_frames))
    loop = [steps.runner(take(params, i, i + 1), take(batch, i, i + 1), 0) for i in range(loop_frames)]
    t0 = time.perf_counter()
    jax.block_until_ready([r() for r in loop])
    log(f"[{stage}] T=1 step compiled and run on {loop_frames} frames in {time.perf_counter() - t0:.1f} s")
    flops_1 = cost_flops(loop[0].compiled())
    for t in ts:
        runs = {}
        t0 = time.perf_counter()
        for m in micro_settings:
            try:
                runs[m] = steps.runner(take(params, 0, t), take(batch, 0, t), m)
                jax.block_until_ready(runs[m]())  # compile + first step
            except Exception as e:  # out of device memory: report it, go on with the other settings
                if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                    raise
                runs.pop(m, None)
                out_rows.append({"stage": stage, "T": t, "microbatch": m, "error": "out of memory"})
                log(f"{stage:>10} {t:>4} {str(m):>4}  out of device memory (try --microbatch)")
        if not runs:
            continue
        compile_s = time.perf_counter() - t0
        mem_device = (dev.memory_stats() or {}).get("peak_bytes_in_use") if gpu else None
        n_loop = min(t, loop_frames)
        # steps per round: at least --steps, and enough for --min-window seconds (short windows are noise);
        # the loop does as many frame-steps per round as the batched step
        reps = {m: max(args.steps, math.ceil(args.min_window / timed(r)[0])) for m, r in runs.items()}
        loop_reps = max(1, math.ceil(max(reps.values()) * t / n_loop))
        best = {m: float("inf") for m in runs}
        best_cpu = {m: float("inf") for m in runs}
        best_loop = best_loop_cpu = float("inf")
        for _ in range(args.rounds):  # alternate batched and loop; the least disturbed round of each counts
            for m, r in runs.items():
                wall, cpu = timed(lambda: [r() for _ in range(reps[m])])
                best[m] = min(best[m], wall / (reps[m] * t))
                best_cpu[m] = min(best_cpu[m], cpu / (reps[m] * t))
            wall, cpu = timed(lambda: [loop[i]() for _ in range(loop_reps) for i in range(n_loop)])
            best_loop = min(best_loop, wall / (loop_reps * n_loop))
            best_loop_cpu = min(best_loop_cpu, cpu / (loop_reps * n_loop))
        loop_rate = 1.0 / best_loop
        for m, r in runs.items():
            comp = r.compiled()
            mb = micro_size(m)
            grouped = bool(mb) and mb < t and t % mb == 0
            # XLA counts a lax.map body once, not once per group: use the T = 1 program's count there
            flops = flops_1 if grouped else cost_flops(comp) / t
            rate = 1.0 / best[m]
            row = {"stage": stage, "T": t, "microbatch": m, "batched_fs": rate, "loop_fs": loop_rate,
                   "ratio": rate / loop_rate, "cpu_ratio": best_loop_cpu / best_cpu[m],
                   "batched_cpu_ms": 1e3 * best_cpu[m], "loop_cpu_ms": 1e3 * best_loop_cpu, "loop_frames": n_loop,
                   "gflop_per_fs": flops / 1e9, "gflop_from_T1": grouped,
                   "mem_compiled_mb": compiled_bytes(comp) / 2 ** 20,
                   "mem_device_peak_mb": None if mem_device is None else mem_device / 2 ** 20,
                   "mfu": (flops * rate / (peak * 1e12)) if (gpu and peak) else None,
                   "loop_mfu": (flops_1 * loop_rate / (peak * 1e12)) if (gpu and peak) else None,
                   "compile_s": compile_s}
            out_rows.append(row)
            log(format_row(row) + f"  [compile + 1st step {compile_s:.0f} s]")
        del runs


HEADER = (f"{'stage':>10} {'T':>4} {'mb':>4} {'batched f-s/s':>13} {'loop f-s/s':>10} {'ratio':>6} {'cpu-ratio':>9} "
          f"{'GFLOP/f-s':>9} {'mem MiB':>8} {'MFU':>6}")


def format_row(r):
    mem = r["mem_device_peak_mb"] if r["mem_device_peak_mb"] is not None else r["mem_compiled_mb"]
    mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   n/a"
    flops = f"{r['gflop_per_fs']:8.3f}" + ("*" if r["gflop_from_T1"] else " ")
    return (f"{r['stage']:>10} {r['T']:>4} {str(r['microbatch']):>4} {r['batched_fs']:13.2f} {r['loop_fs']:10.2f} "
            f"{r['ratio']:5.2f}x {r['cpu_ratio']:8.2f}x {flops} {mem:8.1f} {mfu:>6}")


# ------------------------------------------------------------------------------------------------ encode

def encode_clip(config_name, g, e4e, flow, lp, frames_n, dtype, log):
    """Wall time of pipeline.encode (default settings, configs/encode.py) on a synthetic clip of random
    generator samples with synthetic landmarks; returns the summary (with stage_seconds)."""
    from stylejax import pipeline
    from stylejax.demo import load_config, synthetic_alignment

    config = load_config(os.path.join(REPO, "configs", "encode.py"))
    config.dtype = str(jnp.dtype(dtype))
    res = g.config.resolution
    rng = np.random.RandomState(1)
    z = jnp.asarray(rng.randn(frames_n, g.config.z_dim).astype(np.float32))
    render = jax.jit(lambda g, z: g.synthesize(g.mapping(z, truncation_psi=0.5)))
    frames = np.concatenate([np.asarray(jnp.clip(render(g, z[i:i + 8]) * 127.5 + 128, 0, 255)).astype(np.uint8)
                             for i in range(0, frames_n, 8)])
    t = np.arange(frames_n) / max(frames_n, 1)
    pose = np.stack([8 * np.sin(2 * np.pi * t), 4 * np.sin(4 * np.pi * t), 2 * np.sin(2 * np.pi * t)], 1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pipeline.Workdir(os.path.join(tmp, "workdir"))
        pipeline.write_aligned(workdir, frames, **synthetic_alignment(pose, res, tilt_deg=0.0))
        nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp, paths={}).check()
        t0 = time.perf_counter()
        _, summary = pipeline.encode(workdir, nets, config, out=os.path.join(tmp, "clip.enc"), log=log)
        summary["wall_s"] = time.perf_counter() - t0
    return summary


# ------------------------------------------------------------------------------------------------ main

def parse_ints(text, name):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{name} must be comma-separated integers, got {text!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small64", choices=["tiny", "small64", "f"])
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated, or 'none' (only --encode-300)")
    p.add_argument("--T", default=None, help="frame counts (default 1,8,32,128,256 on GPU, 1,8,32,64 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round, at least (default 5 on GPU, "
                   "1 on CPU; more when a step is shorter than --min-window)")
    p.add_argument("--min-window", type=float, default=None,
                   help="seconds a timed round lasts at least (default 0.5 on CPU, 0.2 on GPU)")
    p.add_argument("--rounds", type=int, default=None, help="alternating timing rounds, the best is kept "
                   "(default 2 on GPU, 3 on CPU)")
    p.add_argument("--loop-frames", type=int, default=None,
                   help="frames the per-frame loop is timed on, at most (default: T on CPU, the same work as "
                        "the batched step: short loop rounds would dodge noise that long batched rounds catch; "
                        "32 on GPU)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--microbatch", type=int, default=-1, help="-1 = parallel.default_microbatch(), 0 = whole batch")
    p.add_argument("--compare-microbatch", default=None,
                   help="e.g. 0,8,old8: time several microbatch settings (oldM: the pre-fix step, gradient "
                        "through the lax.map)")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU (default: by device)")
    p.add_argument("--encode-300", action="store_true", help="time a full encode (default settings)")
    p.add_argument("--encode-frames", type=int, default=300)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    dev = jax.devices()[0]
    gpu = dev.platform != "cpu"
    ts = parse_ints(args.T, "--T") if args.T else ([1, 8, 32, 128, 256] if gpu else [1, 8, 32, 64])
    if not ts or min(ts) < 1:
        fail("--T needs frame counts >= 1")
    args.steps = args.steps or (5 if gpu else 1)
    args.rounds = args.rounds or (2 if gpu else 3)
    args.min_window = args.min_window if args.min_window is not None else (0.2 if gpu else 0.5)
    args.loop_frames = args.loop_frames or (min(max(ts), 32) if gpu else max(ts))
    default_micro = parallel.default_microbatch()
    if args.compare_microbatch:
        items = [v.strip() for v in args.compare_microbatch.split(",") if v.strip()]
        if not items or not all(v.isdigit() or (v.startswith("old") and v[3:].isdigit()) for v in items):
            fail(f"--compare-microbatch takes integers or oldN, got {args.compare_microbatch!r}")
        micro_settings = [v if v.startswith("old") else int(v) for v in items]
    else:
        micro_settings = [default_micro if args.microbatch < 0 else args.microbatch]
    stages = [] if args.stages == "none" else [s.strip() for s in args.stages.split(",") if s.strip()]
    for s in stages:
        if s not in STAGES:
            fail(f"unknown stage {s!r}; choose from {', '.join(STAGES)} or none")

    g, e4e, flow, lp, note = build_networks(args.config)
    config = encode_config(args.config)
    start = time.perf_counter()
    log = lambda msg: print(f"{msg}  [{time.perf_counter() - start:.0f} s]" if msg.startswith("[") else msg, flush=True)
    log(f"device {dev.device_kind} ({dev.platform}, {jax.device_count()} device(s), {os.cpu_count()} CPU cores); "
        f"generator {g.config.resolution}px, {g.config.num_ws} ws; {note}; dtype {args.dtype}; "
        f"microbatch {micro_settings} (default here: {default_micro}); {args.steps} steps x {args.rounds} rounds")
    rows = []
    if stages:
        log(HEADER)
    for stage in stages:
        bench_stage(stage, (g, flow, lp), config, ts, args, micro_settings, rows, log)
    result = {"device": dev.device_kind, "platform": dev.platform, "config": args.config, "dtype": args.dtype,
              "rows": rows}
    if args.encode_300:
        summary = encode_clip(args.config, g, e4e, flow, lp, args.encode_frames, args.dtype, lambda m: None)
        result["encode"] = {"frames": args.encode_frames, "wall_s": summary["wall_s"],
                            "stage_seconds": summary["stage_seconds"], "chunk_size": summary["chunk_size"],
                            "psnr_db": summary["psnr_db"]}
        log(f"[encode] {args.encode_frames} frames at {g.config.resolution}px, default settings: "
            f"{summary['wall_s']:.1f} s wall ({summary['wall_s'] / args.encode_frames:.2f} s/frame), chunk "
            f"{summary['chunk_size']}; stage seconds {summary['stage_seconds']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
