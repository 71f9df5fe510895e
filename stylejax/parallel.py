"""Devices, meshes and shardings for the per-frame optimisations.

Frames are the batch axis everywhere: a chunk of frames is split over all local devices along a 1-D
`frames` mesh; networks and shared parameters (the identity latent) are replicated. Chunks are padded to a
multiple of the device count with a `mask`, so one compiled step serves every chunk.

Many processes (hosts): each encodes whole videos on its own local devices, so processes never wait on each
other inside an encode; `init_processes` starts JAX's multi-controller runtime (`jax.distributed`) and
`meet` is the one place they wait for each other, at the end (`stylejax.batch`).
"""
import contextlib
import json
import os
import time

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


# ------------------------------------------------------------------------------------------------ many processes

class Processes:
    """Where this process stands among the processes of a run: `index` of `count`; `distributed` when they
    are connected by `jax.distributed` (and can meet at the end), `False` for one process or for processes
    started independently (e.g. the tasks of a job array), which share only the file system."""

    def __init__(self, index=0, count=1, distributed=False, how="single process"):
        self.index, self.count, self.distributed, self.how = int(index), int(count), bool(distributed), how

    def __repr__(self):
        return f"Processes(index={self.index}, count={self.count}, distributed={self.distributed}, how={self.how!r})"


def cluster_environment():
    """The multi-process launcher this process was started by, if `jax.distributed.initialize()` can find
    everything on its own there: "slurm" (srun with several tasks), "openmpi" (mpirun with several ranks),
    "tpu" (a Cloud TPU VM: one or more hosts), or None."""
    env = os.environ
    if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")) \
            and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "openmpi"
    try:
        from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm
    except ImportError:  # another jax layout: no TPU detection
        return None
    return "tpu" if running_in_cloud_tpu_vm else None


def init_processes(coordinator=None, num_processes=None, process_id=None, heartbeat_timeout_s=100):
    """Starts the multi-controller runtime when there is more than one process and returns `Processes`.

    - `coordinator` (HOST:PORT) with `num_processes` and `process_id`: `jax.distributed.initialize` with them;
    - `num_processes` and `process_id` alone: independent processes (no runtime; e.g. a SLURM job array);
    - nothing: `jax.distributed.initialize()` under SLURM (several tasks), Open MPI (several ranks) and on
      Cloud TPU VMs, which it configures itself; otherwise a single process.
    A process that dies does not take the others down (`jax_enable_recoverability`): they finish their work
    and meet without it. Each process computes on its local devices only."""
    from stylejax.errors import UserError

    if coordinator:
        if num_processes is None or process_id is None:
            raise UserError("--coordinator needs --num-processes and --process-id")
    if num_processes is not None or process_id is not None:
        if num_processes is None or process_id is None:
            raise UserError("--num-processes and --process-id go together")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserError(f"--process-id must be in 0..{num_processes - 1} for --num-processes {num_processes}, "
                            f"got {process_id}")
        if not coordinator:
            return Processes(process_id, num_processes, False, "independent processes (no coordinator)")
    kind = None if coordinator else cluster_environment()
    if not coordinator and kind is None:
        return Processes()
    with contextlib.suppress(AttributeError, KeyError):  # older jax: a dead process ends the others too
        jax.config.update("jax_enable_recoverability", True)
    kwargs = dict(heartbeat_timeout_seconds=int(heartbeat_timeout_s))
    if coordinator:
        kwargs.update(coordinator_address=coordinator, num_processes=int(num_processes), process_id=int(process_id))
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"cannot start jax.distributed ({kind or coordinator}): {str(e).splitlines()[0]}") from None
    how = f"jax.distributed via {kind}" if kind else f"jax.distributed, coordinator {coordinator}"
    return Processes(jax.process_index(), jax.process_count(), jax.process_count() > 1, how)


def meet(processes, name, payload=None):
    """Waits until every process of a `jax.distributed` run has called `meet(name)` or died, and returns
    {process index: payload} of those that came (JSON-able payloads). No timeout: a live process is still
    working; a dead one is noticed by the runtime's heartbeat. A single or independent process meets alone."""
    if not processes.distributed:
        return {processes.index: payload}
    from jax._src import distributed  # the coordination service's key-value store and barrier

    client = distributed.global_state.client
    client.key_value_set(f"stylejax/{name}/{processes.index}", json.dumps(payload))
    everyone = list(range(processes.count))
    while True:
        if hasattr(client, "get_live_nodes"):
            live = set(client.get_live_nodes(everyone))  # a barrier among the processes still alive
        else:  # older jax: a plain barrier (a dead process makes it fail)
            client.wait_at_barrier(f"stylejax/{name}", 7 * 24 * 3600 * 1000)
            live = set(everyone)
        came = {}
        for k in everyone:
            with contextlib.suppress(Exception):  # not there: that process has not come (yet)
                came[k] = json.loads(client.key_value_try_get(f"stylejax/{name}/{k}"))
        if all(k in came or k not in live for k in everyone):
            return came


def leave(processes):
    """Ends a `jax.distributed` run cleanly: the other processes disconnect first, process 0 (which serves
    the runtime) waits until they have, so nobody's last message goes to a closed service."""
    if not processes.distributed:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if processes.index == 0 and hasattr(client, "get_live_nodes"):
        while set(client.get_live_nodes(list(range(processes.count)))) - {0}:  # returns as the others leave
            time.sleep(0.2)
    jax.distributed.shutdown()
