"""Devices, meshes and shardings for the per-frame optimisations.

Frames are the batch axis everywhere: a chunk of frames is split over all local devices along a 1-D
`frames` mesh; networks and shared parameters (the identity latent) are replicated. Chunks are padded to a
multiple of the device count with a `mask`, so one compiled step serves every chunk.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def frames_mesh(devices=None):
    devices = jax.local_devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("frames",))


def frame_sharding(mesh):
    return NamedSharding(mesh, P("frames"))


def replicated(mesh):
    return NamedSharding(mesh, P())


def shard_frames(tree, mesh):
    """Leading axis of every leaf split over the mesh (host numpy -> device arrays)."""
    return jax.device_put(tree, frame_sharding(mesh))


def replicate(tree, mesh):
    return jax.device_put(tree, replicated(mesh))


def default_chunk_size(num_devices=None, backend=None):
    """Frames per chunk: big enough to fill an accelerator, small enough for CPU caches."""
    backend = backend or jax.default_backend()
    num_devices = num_devices or jax.local_device_count()
    per_device = 8 if backend == "cpu" else 32
    return per_device * num_devices


def default_microbatch(backend=None):
    """Frames evaluated together inside a step; 0 = the whole chunk at once, on every backend. On CPU a
    step mapped over groups (`lax.map`) measured slower than both the whole chunk and the per-frame loop:
    XLA's CPU backend runs the backward convolutions inside the loop body outside its fast (YNNPACK) path
    (scripts/bench_encode.py, docs/benchmarks.md), while the whole chunk stays faster than
    one frame at a time up to T = 256. Set `config.microbatch` to bound memory, not for speed."""
    del backend
    return 0


def pad_to(n, multiple):
    return -(-n // multiple) * multiple


def pad_frames(arrays, size):
    """Pads the leading axis of every array to `size` by repeating the last frame; returns (padded, mask)."""
    n = len(next(iter(jax.tree_util.tree_leaves(arrays))))
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], size - n, axis=0)]) if size > n else a
    return jax.tree_util.tree_map(lambda a: pad(np.asarray(a)), arrays), mask
