"""The per-frame optimiser shared by the invert, head-pose and attribute stages.

Every frame of a chunk is its own problem (parameters `[T, ...]`, loss `[T]`). The objective of one step is
the *sum* of the per-frame losses and Adam is element-wise, so each frame follows the trajectory it would
follow alone, and one jitted step does all frames at once (no Python loop over frames). Alone up to float32
rounding: the same chunk size and device count give the same bits, another chunk size, device count or CPU
runs other kernels that round differently, and Adam amplifies that where a frame's gradient is near zero
(docs/encoder.md, "Batching and determinism").

A `coupling` term (e.g. the temporal prior of the attributes stage: a penalty on frame-to-frame changes) joins
neighbouring frames. Then a frame no longer follows its own trajectory; what holds instead: frame t's gradient
depends on frames t-1..t+1, so after n steps frame t depends on the frames within n of it (a light cone). A
chunk optimised with at least `steps` frames of context on each side therefore gives the frames it keeps
as the whole video in one chunk would, up to the rounding above (`stages.base.run_chunks`' `overlap`); with
less context the difference shrinks with the overlap (docs/encoder.md).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from stylejax.errors import UserError


class NonFiniteLossError(UserError):
    """An optimisation produced NaN or inf."""


def adam(lr, steps):
    """Adam with a cosine decay to 10% of `lr` over `steps` (stable final iterates for the encoding).
    `lr` may be a dict {parameter name: lr} for parameters of different units (degrees, style offsets)."""
    make = lambda rate: optax.adam(optax.cosine_decay_schedule(float(rate), max(int(steps), 1), alpha=0.1))
    if isinstance(lr, dict):
        return optax.multi_transform({k: make(v) for k, v in lr.items()}, lambda params: {k: k for k in params})
    return make(lr)


def _grouping(tree, microbatch):
    """(group, ungroup) for sequential groups of `microbatch` frames, or None when the whole batch runs at
    once (no microbatch, or one that does not tile the frames)."""
    t = jax.tree_util.tree_leaves(tree)[0].shape[0]
    if not microbatch or microbatch >= t or t % microbatch:
        return None
    group = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((t // microbatch, microbatch) + a.shape[1:]), x)
    ungroup = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((t,) + a.shape[2:]), x)
    return group, ungroup


def per_frame_losses(loss_fn, params, nets, batch, microbatch):
    """loss_fn(params, nets, batch) -> [T]. With `microbatch` m (dividing T) the frames are evaluated in
    sequential groups of m inside the same program (`lax.map`), which is faster on CPU for large T."""
    grouping = _grouping(batch, microbatch)
    if grouping is None:
        return loss_fn(params, nets, batch)
    group, ungroup = grouping
    return ungroup(jax.lax.map(lambda pb: loss_fn(pb[0], nets, pb[1]), (group(params), group(batch))))


def make_step(loss_fn, optimizer, microbatch=0, coupling=None):
    """(params, opt_state, nets, batch) -> (params, opt_state, per-frame loss [T]); `batch["mask"]` [T]
    zeroes padded frames. Jit it once per stage (the caller chooses shardings and donation).

    With `microbatch` m (dividing T) each group of m frames takes its loss *and gradient* inside one
    `lax.map` iteration: frame t's loss depends only on frame t's parameters, so the gradient of the sum
    splits exactly into per-group gradients. Differentiating through the map instead would keep every
    group's forward activations alive until the backward loop (memory O(T), the working set of the whole
    batch); this way only one group's forward and backward are live at a time, which is what keeps a
    large chunk as fast per frame as a small one on CPU (scripts/bench_encode.py).

    `coupling(params, batch) -> scalar` is added to the objective; its gradient is taken over the whole batch
    (it is cheap: a function of the parameters, not of the images), outside the groups."""
    def total(params, nets, batch):
        per = loss_fn(params, nets, batch)
        return jnp.sum(per * batch["mask"]), per

    loss_and_grad = jax.value_and_grad(total, has_aux=True)

    def step(params, opt_state, nets, batch):
        grouping = _grouping(batch, microbatch)
        if grouping is None:
            (_, per), grads = loss_and_grad(params, nets, batch)
        else:
            group, ungroup = grouping
            (_, per), grads = jax.lax.map(lambda pb: loss_and_grad(pb[0], nets, pb[1]), (group(params), group(batch)))
            per, grads = ungroup(per), ungroup(grads)
        if coupling is not None:
            grads = jax.tree_util.tree_map(jnp.add, grads, jax.grad(coupling)(params, batch))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, per

    return step


def with_early_stopping(step, tol, patience):
    """A step that stops frames once they have converged: (params, opt_state, nets, batch, track) ->
    (params, opt_state, per-frame loss [T], track), `track` = {"best": [T] the lowest loss so far, "stall": [T]
    steps since the loss last fell below best · (1 - tol)}. A frame whose stall has reached `patience` keeps
    its parameters (its update is dropped); padded frames (mask 0) count as stopped. Per frame, as everything
    else: a frame stops on its own losses only, whatever the chunk holds."""
    def tracked(params, opt_state, nets, batch, track):
        active = (track["stall"] < patience) & (batch["mask"] > 0)
        new, opt_state, per = step(params, opt_state, nets, batch)
        keep = lambda n, o: jnp.where(active.reshape(active.shape + (1,) * (n.ndim - 1)), n, o)
        params = jax.tree_util.tree_map(keep, new, params)
        improved = per < track["best"] * (1.0 - tol)  # per: the loss of the parameters this step started from
        track = {"best": jnp.where(improved, per, track["best"]),
                 "stall": jnp.where(improved, 0, track["stall"] + 1)}
        return params, opt_state, per, track

    return tracked


def start_track(mask):
    """The early-stopping state of a chunk, sharded like its mask."""
    like = lambda v, dtype: jax.device_put(np.full(mask.shape, v, dtype), getattr(mask, "sharding", None))
    return {"best": like(np.inf, np.float32), "stall": like(0, np.int32)}


CHECK_EVERY = 10  # steps between the host's checks whether every frame of a chunk has stopped (a device sync)


class Optimiser:
    """Runs `steps` Adam steps of a per-frame loss on chunks; compiles once per chunk shape.

    `coarse_loss_fn`, `coarse_steps`: the first `coarse_steps` steps optimise a cheaper loss (e.g. the generator
    synthesised only up to the loss size), the rest `loss_fn`; one Adam state and learning-rate schedule runs
    through both. `tol` > 0: per-frame early stopping in the `loss_fn` steps (`with_early_stopping`: a frame
    stops when its loss has not fallen by a fraction `tol` of its best for `patience` steps), and the chunk stops
    when all its frames have. The final per-frame loss is always `loss_fn`'s.
    `coupling(params, batch) -> scalar`: a term joining frames (the temporal prior; `make_step`), in every step.
    `stats` counts what ran: chunks, steps (coarse and full) and chunk frames x steps."""

    def __init__(self, loss_fn, lr, steps, microbatch=0, coarse_loss_fn=None, coarse_steps=0, tol=0.0, patience=10,
                 coupling=None):
        self.steps = int(steps)
        self.coarse_steps = min(int(coarse_steps), self.steps) if coarse_loss_fn is not None else 0
        self.tol, self.patience = float(tol), int(patience)
        self.optimizer = adam(lr, steps)
        step = make_step(loss_fn, self.optimizer, microbatch, coupling)
        if self.tol > 0:
            step = with_early_stopping(step, self.tol, self.patience)
        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._coarse = (jax.jit(make_step(coarse_loss_fn, self.optimizer, microbatch, coupling), donate_argnums=(0, 1))
                        if self.coarse_steps else None)
        self._loss = jax.jit(lambda params, nets, batch: per_frame_losses(loss_fn, params, nets, batch, microbatch))
        self.stats = {"chunks": 0, "steps": 0, "coarse_steps": 0, "frame_steps": 0}

    def run(self, params, nets, batch, stage="optimisation", bar=None):
        """Returns (params, per-frame loss of the final params) as numpy arrays."""
        opt_state = on_mesh_of(self.optimizer.init(params), params)
        track = start_track(batch["mask"]) if self.tol > 0 else None
        done = 0
        for i in range(self.steps):
            if i < self.coarse_steps:
                params, opt_state, _ = self._coarse(params, opt_state, nets, batch)
            elif track is None:
                params, opt_state, _ = self._step(params, opt_state, nets, batch)
            else:
                params, opt_state, _, track = self._step(params, opt_state, nets, batch, track)
            done += 1
            if bar is not None:
                bar.update(1)
            if track is not None and (i + 1 - self.coarse_steps) % CHECK_EVERY == 0 and not self.any_active(track, batch):
                break
        if bar is not None:
            bar.update(self.steps - done)
        n = int(np.asarray(batch["mask"]).shape[0])
        self.stats["chunks"] += 1
        self.stats["steps"] += done
        self.stats["coarse_steps"] += min(done, self.coarse_steps)
        self.stats["frame_steps"] += n * done
        loss = np.asarray(self._loss(params, nets, batch))
        check_finite(loss, np.asarray(batch["mask"]), stage)
        return jax.tree_util.tree_map(np.asarray, params), loss

    def any_active(self, track, batch):
        return bool(np.any((np.asarray(track["stall"]) < self.patience) & (np.asarray(batch["mask"]) > 0)))

    def loss(self, params, nets, batch):
        return np.asarray(self._loss(params, nets, batch))

    def programs(self, params, nets, batch):
        """{"loss", "step", "coarse_step"}: every program `run` uses, compiled for arguments shaped (and sharded)
        like these (arrays or `jax.ShapeDtypeStruct`s). jit keeps the executables, so `run` on such arguments
        compiles nothing more."""
        mask = batch["mask"]
        # Adam's moments are per frame (sharded like the frames), its step counts replicated (`on_mesh_of`)
        opt_state = jax.tree_util.tree_map(lambda s: _like(s, mask), jax.eval_shape(self.optimizer.init, params))
        out = {"loss": self._loss.lower(params, nets, batch).compile()}
        if self.steps:
            args = (params, opt_state, nets, batch)
            if self.tol > 0:
                track = {"best": _like(jax.ShapeDtypeStruct(mask.shape, jnp.float32), mask),
                         "stall": _like(jax.ShapeDtypeStruct(mask.shape, jnp.int32), mask)}
                args = args + (track,)
            out["step"] = self._step.lower(*args).compile()
            if self._coarse is not None:
                out["coarse_step"] = self._coarse.lower(params, opt_state, nets, batch).compile()
        return out

    def compile(self, params, nets, batch):
        """Compiles `programs`; returns the largest one's device memory in bytes (`program_bytes`), or None
        where the backend gives no memory analysis."""
        sizes = [program_bytes(p) for p in self.programs(params, nets, batch).values()]
        return None if any(v is None for v in sizes) else max(sizes)


def _like(struct, ref):
    """`struct` with the sharding of `ref` (an array or ShapeDtypeStruct), or replicated on its mesh when
    `struct` is a scalar."""
    sharding = getattr(ref, "sharding", None)
    if sharding is None:
        return struct
    if not len(struct.shape) and hasattr(sharding, "mesh"):
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=sharding)


def program_bytes(compiled):
    """Device memory of a compiled program: arguments + outputs + temporaries, donated buffers once (None
    where the backend has no memory analysis)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
               - getattr(m, "alias_size_in_bytes", 0))


def on_mesh_of(state, params):
    """`state` with its scalars (Adam's step counts) replicated on the mesh of `params`. `init` leaves them
    uncommitted while the step returns them on the mesh, so the second step would trace and compile the step
    again."""
    mesh = getattr(getattr(jax.tree_util.tree_leaves(params)[0], "sharding", None), "mesh", None)
    if mesh is None:
        return state
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, replicated) if jnp.ndim(a) == 0 else a, state)


def check_finite(loss, mask, stage):
    bad = np.flatnonzero(~np.isfinite(loss) & (mask > 0))
    if len(bad):
        raise NonFiniteLossError(f"{stage}: non-finite loss at {len(bad)} frame(s) of the chunk (first: chunk "
                                 f"frame {bad[0]}); lower the stage's learning rate or check the networks")
