"""Devices, meshes and shardings for the per-frame optimisations.

Frames are the batch axis everywhere: a chunk of frames is split over all local devices along a 1-D
`frames` mesh; networks and shared parameters (the identity latent) are replicated. Chunks are padded to a
multiple of the device count with a `mask`, so one compiled step serves every chunk.
"""
import os

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


MEMORY_FRACTION = 0.8  # of a device's free memory (of the host's available memory on CPU) a chunk may use


def memory_budget(mesh):
    """(bytes one device of `mesh` may give a compiled step, description), or (None, why) where the backend
    reports no memory. Accelerators: free = bytes_limit - bytes_in_use of the first device (the networks are
    already there); CPU: the host's MemAvailable shared by the CPU devices. Either times MEMORY_FRACTION."""
    dev = mesh.devices.flat[0]
    if dev.platform == "cpu":
        avail = _host_available_bytes()
        if avail is None:
            return None, "the host reports no available memory"
        n = mesh.devices.size
        return int(MEMORY_FRACTION * avail / n), (f"{MEMORY_FRACTION:.0%} of the host's {avail / 2 ** 30:.1f} GiB "
                                                 f"available" + (f" / {n} CPU devices" if n > 1 else ""))
    stats = dev.memory_stats() or {}
    if "bytes_limit" not in stats:
        return None, f"{dev.device_kind} reports no memory limit"
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return int(MEMORY_FRACTION * free), f"{MEMORY_FRACTION:.0%} of {free / 2 ** 30:.1f} GiB free on {dev.device_kind}"


def _host_available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def is_out_of_memory(error):
    """Whether an exception from a jitted call is XLA running out of device memory."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


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
