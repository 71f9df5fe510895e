"""The per-frame optimiser: microbatched steps give every frame the trajectory it has alone.

Tolerances. Grouping the frames (`lax.map`), the chunk size and the CPU change the shapes of the float32
reductions, and so their rounding, never the arithmetic: a frame's loss sums 768 squared errors after two
72-term convolutions, and a float32 sum of K terms is off by at most K * 2**-24 relative (1e-4 for K = 1.7e3:
ROUNDING). Adam divides the first moment of the gradient by the root of its second: a relative change r of a
gradient element changes that ratio by at most 2r, so each update moves by at most 2 r lr and N steps by
2 r lr N (`adam_tol`). That holds while rounding is small against each gradient element, i.e. away from flat
directions; the toy loss has none (its smallest unmasked gradient element stays above 3e-5 over the 4 steps).
The encoder's stages do have flat directions, which is why tests/stages/test_encoder.py compares what a user
sees instead. Measured here, default and `STYLEJAX_VARY_NUMERICS=1` numerics: parameters <= 5e-7 apart, losses
<= 1e-6 relative.
"""
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax import optimize

T, SIZE, CH = 8, 16, 8
LR = {"code": 0.05, "scale": 0.1}
ROUNDING = 1e-4  # relative float32 rounding of a sum of <= 1.7e3 terms (worst case K * 2**-24)


def adam_tol(name, steps):
    """How far `steps` Adam steps of parameter `name` can drift apart under gradients rounded differently."""
    return 2 * ROUNDING * LR[name] * steps


def conv_loss(params, nets, batch):
    """A small nonlinear per-frame loss: a per-frame code drives two convs; L2 to the frame's target."""
    x = jnp.tanh(params["code"])[:, None, None, :] * batch["grid"]  # [T, S, S, CH]
    dn = ("NHWC", "HWIO", "NHWC")
    for w in nets["kernels"]:
        x = jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn))
    return jnp.mean((x[..., :3] - batch["target"]) ** 2, axis=(1, 2, 3)) + 0.1 * jnp.sum(params["scale"] ** 2, -1)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.RandomState(0)
    nets = {"kernels": [jnp.asarray(rng.randn(3, 3, CH, CH).astype(np.float32) * 0.3) for _ in range(2)]}
    params = {"code": rng.randn(T, CH).astype(np.float32), "scale": rng.randn(T, 2).astype(np.float32)}
    mask = np.ones(T, np.float32)
    mask[-1] = 0.0  # a padded frame
    batch = {"grid": rng.randn(T, SIZE, SIZE, 1).astype(np.float32),
             "target": rng.uniform(-1, 1, (T, SIZE, SIZE, 3)).astype(np.float32), "mask": mask}
    return nets, params, batch


def run(nets, params, batch, microbatch, steps=4):
    opt = optimize.adam(LR, steps)
    step = jax.jit(optimize.make_step(conv_loss, opt, microbatch))
    state = opt.init(params)
    for _ in range(steps):
        params, state, per = step(params, state, nets, batch)
    return jax.tree_util.tree_map(np.asarray, params), np.asarray(per)


@pytest.mark.parametrize("microbatch", [1, 2, 4])
def test_grouped_step_matches_whole_batch(problem, microbatch):
    nets, params, batch = problem
    whole_params, whole_loss = run(nets, params, batch, 0)
    grouped_params, grouped_loss = run(nets, params, batch, microbatch)
    # each loss is one such sum, at parameters adam_tol (<= 8e-5) apart
    np.testing.assert_allclose(grouped_loss, whole_loss, rtol=ROUNDING)
    for k in whole_params:
        np.testing.assert_allclose(grouped_params[k], whole_params[k], rtol=0, atol=adam_tol(k, 4))
    # the masked (padded) frame is never updated; the others moved
    np.testing.assert_array_equal(grouped_params["code"][-1], params["code"][-1])
    assert np.all(np.abs(grouped_params["code"][:-1] - params["code"][:-1]).max(axis=1) > 1e-3)


def test_each_frame_follows_its_own_trajectory(problem):
    nets, params, batch = problem
    chunk_params, _ = run(nets, params, batch, 4)
    for t in (0, 5):
        one = jax.tree_util.tree_map(lambda a: a[t:t + 1], (params, batch))
        alone, _ = run(nets, *one, 0)
        np.testing.assert_allclose(chunk_params["code"][t], alone["code"][0], rtol=0, atol=adam_tol("code", 4))


def test_microbatch_that_does_not_tile_runs_whole_batch(problem):
    nets, params, batch = problem
    whole_params, whole_loss = run(nets, params, batch, 0, steps=2)
    odd_params, odd_loss = run(nets, params, batch, 3, steps=2)  # 3 does not divide 8
    # the same program: the same bits
    np.testing.assert_array_equal(odd_loss, whole_loss)
    np.testing.assert_array_equal(odd_params["code"], whole_params["code"])


def loops_and_convs(jaxpr, inside=0, out=None):
    """[(loop depth, primitive)] for every scan/while loop and convolution in a jaxpr, sub-jaxprs included."""
    out = [] if out is None else out
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("scan", "while", "conv_general_dilated"):
            out.append((inside, name))
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if isinstance(sub, jax.extend.core.Jaxpr):
                    loops_and_convs(sub, inside + (name in ("scan", "while")), out)
    return out


def test_grouped_step_differentiates_inside_the_map(problem):
    """The gradient is taken inside the map: one loop over the groups holds each group's forward and backward
    convolutions, so only one group's activations are live at a time. Differentiating through the map would
    make a second loop (the transposed map) that needs every group's activations, saved by the first. (The
    memory this saves: scripts/bench_encode.py --compare-microbatch 0,8,old8, the `temp MiB` column.)"""
    nets, params, batch = problem
    opt = optimize.adam(LR, 4)
    found = {}
    for m in (0, 4):
        jaxpr = jax.make_jaxpr(optimize.make_step(conv_loss, opt, m))(params, opt.init(params), nets, batch)
        found[m] = loops_and_convs(jaxpr.jaxpr)
    convs = lambda m, depth: sum(1 for d, n in found[m] if n == "conv_general_dilated" and d == depth)
    # 2 convolutions forward and 2 backward (to the code through both layers; the kernels are not optimised)
    assert [n for _, n in found[0]].count("scan") == 0 and convs(0, 0) == 4
    assert [n for _, n in found[4]].count("scan") == 1 and convs(4, 1) == 4 and convs(4, 0) == 0, found[4]


def test_per_frame_losses_grouped_equals_whole(problem):
    nets, params, batch = problem
    whole = optimize.per_frame_losses(conv_loss, params, nets, batch, 0)
    grouped = optimize.per_frame_losses(conv_loss, params, nets, batch, 2)
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(whole), rtol=ROUNDING)  # one sum, other shapes


# ------------------------------------------------------------------------------------------------ coarse steps

def coarse_loss(params, nets, batch):
    """A cheaper stand-in for `conv_loss`: its first conv only."""
    x = jnp.tanh(params["code"])[:, None, None, :] * batch["grid"]
    x = jnp.tanh(jax.lax.conv_general_dilated(x, nets["kernels"][0], (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jnp.mean((x[..., :3] - batch["target"]) ** 2, axis=(1, 2, 3)) + 0.1 * jnp.sum(params["scale"] ** 2, -1)


def test_coarse_steps_then_the_loss_share_one_adam_state(problem):
    """Optimiser(coarse_steps=2) of 5 steps = 2 steps of the coarse loss then 3 of the loss, one Adam state and
    schedule through both (built here from make_step by hand); its final loss is the loss's."""
    nets, params, batch = problem
    lr = {"code": 0.05, "scale": 0.1}
    opt = optimize.Optimiser(conv_loss, lr, 5, coarse_loss_fn=coarse_loss, coarse_steps=2)
    got, loss = opt.run(params, nets, batch)
    adam = optimize.adam(lr, 5)
    steps = [jax.jit(optimize.make_step(f, adam)) for f in (coarse_loss, coarse_loss, conv_loss, conv_loss, conv_loss)]
    p, state = params, adam.init(params)
    for step in steps:
        p, state, _ = step(p, state, nets, batch)
    for k in got:  # the same step programs on the same shapes: equal up to rounding, far inside 1e-6
        np.testing.assert_allclose(got[k], np.asarray(p[k]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(loss, np.asarray(conv_loss(p, nets, batch)), rtol=1e-6)
    # and the coarse steps mattered: all five steps on the loss end elsewhere
    fine, _ = optimize.Optimiser(conv_loss, lr, 5).run(params, nets, batch)
    assert np.abs(fine["code"] - got["code"]).max() > 1e-4
    assert opt.stats == {"chunks": 1, "steps": 5, "coarse_steps": 2, "frame_steps": 5 * T}


# ------------------------------------------------------------------------------------------------ early stopping

def quadratic(params, nets, batch):
    """Frame t: |x_t - target_t|² (its minimum, 0, is reached at a rate set by the frame's distance)."""
    return jnp.sum((params["x"] - batch["target"]) ** 2, axis=-1)


def stopping_problem():
    rng = np.random.RandomState(1)
    t = 6
    target = rng.randn(t, 3).astype(np.float32)
    start = target.copy()
    start[:3] += np.array([[0.01], [0.5], [3.0]], np.float32)  # three frames near, mid, far; the rest at the answer
    mask = np.ones(t, np.float32)
    mask[-1] = 0.0
    return {"x": start}, {"target": target, "mask": mask}


def test_early_stopping_freezes_converged_frames_and_stops_the_chunk():
    params, batch = stopping_problem()
    steps, patience = 200, 5
    opt = optimize.Optimiser(quadratic, 0.1, steps, tol=1e-2, patience=patience)
    got, loss = opt.run(params, {}, batch)
    # the chunk stopped once every real frame had stalled, at a check (every CHECK_EVERY steps)
    assert opt.stats["steps"] < steps and opt.stats["steps"] % optimize.CHECK_EVERY == 0
    # each frame as if alone: its own stopping rule (the stall counter of with_early_stopping, by hand)
    adam = optimize.adam(0.1, steps)
    step = jax.jit(optimize.make_step(quadratic, adam))
    for t in range(5):
        p = {"x": params["x"][t:t + 1]}
        b = {"target": batch["target"][t:t + 1], "mask": np.ones(1, np.float32)}
        state, best, stall = adam.init(p), np.inf, 0
        for _ in range(opt.stats["steps"]):
            if stall >= patience:
                break
            p, state, per = step(p, state, {}, b)
            improved = float(per[0]) < best * (1 - 1e-2)
            best, stall = (float(per[0]), 0) if improved else (best, stall + 1)
        # per frame a 3-term sum, and the masked total's gradient is exactly each frame's own: batched and
        # alone differ at most by the rounding of those sums (r = 3 * 2**-24 relative), which Adam turns into at
        # most 2 * r * lr a step (as adam_tol above)
        np.testing.assert_allclose(got["x"][t], np.asarray(p["x"][0]), rtol=0,
                                   atol=2 * 3 * 2.0 ** -24 * 0.1 * opt.stats["steps"] + 1e-7)
    # the far frame was still moving when the near ones stopped
    assert np.abs(got["x"][2] - batch["target"][2]).max() < 0.5
    np.testing.assert_array_equal(got["x"][5], params["x"][5])  # the padded frame never moves


def test_without_tolerance_every_step_runs():
    params, batch = stopping_problem()
    opt = optimize.Optimiser(quadratic, 0.1, 30)
    got, _ = opt.run(params, {}, batch)
    assert opt.stats["steps"] == 30
    stopped = optimize.Optimiser(quadratic, 0.1, 30, tol=1e-2, patience=10 ** 6)  # never stalls long enough
    same, _ = stopped.run(params, {}, batch)
    np.testing.assert_array_equal(same["x"], got["x"])
