"""The resumable work directory of an encode: one folder per stage, markers written last.

Every stage writes its outputs into `WORKDIR/<stage>/` and its marker `done.json` last; chunked stages also
mark each finished chunk. `WORKDIR/workdir.json` marks the folder as ours (and records the video it belongs
to), so a rerun may replace what is inside it and nothing else.
"""
import hashlib
import json
import os
import shutil

import numpy as np

from stylejax.errors import PipelineError
from stylejax.io import atomic

MARKER = "workdir.json"


def digest(obj):
    """16 hex digits of SHA-256 over `obj` as canonical JSON: what a stage signature is made of."""
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
        """Starts or resumes a chunked stage: keeps finished chunks only if signature and chunk size match (the
        chunk size the stage was started with; the chunk loops record the sizes they run, `use_chunk`)."""
        p = self.file(stage, "progress.json")
        state = atomic.read_json(p, "stage progress") if os.path.isfile(p) else None
        if not isinstance(state, dict) or state.get("signature") != signature or state.get("chunk") != chunk:
            self.reset(stage)
            self.dir(stage)
            atomic.write_json(p, {"signature": signature, "chunk": chunk})

    def recorded_chunk(self, stage, part=""):
        """The chunk size a chunk loop (`part` of the stage) last ran with, or None."""
        p = self.file(stage, "progress.json")
        state = atomic.read_json(p, "stage progress") if os.path.isfile(p) else {}
        return (state.get("loops") or {}).get(part)

    def use_chunk(self, stage, chunk, part=""):
        """Records the chunk size of a chunk loop; a size other than the recorded one drops the loop's chunk
        markers (its chunks are computed again at the new size)."""
        p = self.file(stage, "progress.json")
        state = atomic.read_json(p, "stage progress") if os.path.isfile(p) else {}
        loops = dict(state.get("loops") or {})
        if loops.get(part) == chunk:
            return
        for name in os.listdir(self.dir(stage)):
            if name.startswith(f"{part}chunk-") and name.endswith(".done"):
                os.remove(self.file(stage, name))
        loops[part] = chunk
        atomic.write_json(p, {**state, "loops": loops})

    def chunk_done(self, stage, lo, part=""):
        return os.path.isfile(self.file(stage, f"{part}chunk-{lo:07d}.done"))

    def mark_chunk(self, stage, lo, part=""):
        atomic.write_bytes(self.file(stage, f"{part}chunk-{lo:07d}.done"), b"")

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
    workdir.mark_done("align", digest({"synthetic": True, "frames": int(len(frames))}), frames=int(len(frames)))
