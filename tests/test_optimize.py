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
