"""The per-frame optimiser shared by the invert, head-pose and attribute stages.

Every frame of a chunk is its own problem (parameters `[T, ...]`, loss `[T]`). The objective of one step is
the *sum* of the per-frame losses and Adam is element-wise, so each frame follows the trajectory it would
follow alone, and one jitted step does all frames at once (no Python loop over frames). Alone up to float32
rounding: the same chunk size and device count give the same bits, another chunk size, device count or CPU
runs other kernels that round differently, and Adam amplifies that where a frame's gradient is near zero
(docs/encoder.md, "Batching and determinism").
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


def make_step(loss_fn, optimizer, microbatch=0):
    """(params, opt_state, nets, batch) -> (params, opt_state, per-frame loss [T]); `batch["mask"]` [T]
    zeroes padded frames. Jit it once per stage (the caller chooses shardings and donation).

    With `microbatch` m (dividing T) each group of m frames takes its loss *and gradient* inside one
    `lax.map` iteration: frame t's loss depends only on frame t's parameters, so the gradient of the sum
    splits exactly into per-group gradients. Differentiating through the map instead would keep every
    group's forward activations alive until the backward loop (memory O(T), the working set of the whole
    batch); this way only one group's forward and backward are live at a time, which is what keeps a
    large chunk as fast per frame as a small one on CPU (scripts/bench_encode.py)."""
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
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, per

    return step


class Optimiser:
    """Runs `steps` Adam steps of a per-frame loss on chunks; compiles once per chunk shape."""

    def __init__(self, loss_fn, lr, steps, microbatch=0):
        self.steps = int(steps)
        self.optimizer = adam(lr, steps)
        step = make_step(loss_fn, self.optimizer, microbatch)
        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._loss = jax.jit(lambda params, nets, batch: per_frame_losses(loss_fn, params, nets, batch, microbatch))

    def run(self, params, nets, batch, stage="optimisation", bar=None):
        """Returns (params, per-frame loss of the final params) as numpy arrays."""
        opt_state = on_mesh_of(self.optimizer.init(params), params)
        for _ in range(self.steps):
            params, opt_state, _ = self._step(params, opt_state, nets, batch)
            if bar is not None:
                bar.update(1)
        loss = np.asarray(self._loss(params, nets, batch))
        check_finite(loss, np.asarray(batch["mask"]), stage)
        return jax.tree_util.tree_map(np.asarray, params), loss

    def loss(self, params, nets, batch):
        return np.asarray(self._loss(params, nets, batch))


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
