"""The per-frame optimiser: microbatched steps give every frame the trajectory it has alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax import optimize

T, SIZE, CH = 8, 16, 8


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
    opt = optimize.adam({"code": 0.05, "scale": 0.1}, steps)
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
    np.testing.assert_allclose(grouped_loss, whole_loss, rtol=1e-5, atol=1e-7)
    for k in whole_params:
        np.testing.assert_allclose(grouped_params[k], whole_params[k], rtol=1e-5, atol=1e-6)
    # the masked (padded) frame is never updated; the others moved
    np.testing.assert_array_equal(grouped_params["code"][-1], params["code"][-1])
    assert np.all(np.abs(grouped_params["code"][:-1] - params["code"][:-1]).max(axis=1) > 1e-3)


def test_each_frame_follows_its_own_trajectory(problem):
    nets, params, batch = problem
    chunk_params, _ = run(nets, params, batch, 4)
    for t in (0, 5):
        one = jax.tree_util.tree_map(lambda a: a[t:t + 1], (params, batch))
        alone, _ = run(nets, *one, 0)
        np.testing.assert_allclose(chunk_params["code"][t], alone["code"][0], rtol=1e-5, atol=1e-6)


def test_microbatch_that_does_not_tile_runs_whole_batch(problem):
    nets, params, batch = problem
    whole_params, whole_loss = run(nets, params, batch, 0, steps=2)
    odd_params, odd_loss = run(nets, params, batch, 3, steps=2)  # 3 does not divide 8
    np.testing.assert_array_equal(odd_loss, whole_loss)
    np.testing.assert_array_equal(odd_params["code"], whole_params["code"])


def test_grouped_step_keeps_one_group_of_activations(problem):
    """Gradients taken inside the map: the step's temporaries scale with the group, not the chunk."""
    nets, params, batch = problem
    big = jax.tree_util.tree_map(lambda a: np.concatenate([a] * 8), (params, batch))  # T = 64
    opt = optimize.adam(0.1, 4)
    temp = {}
    for m in (0, 4):
        step = jax.jit(optimize.make_step(conv_loss, opt, m))
        temp[m] = step.lower(big[0], opt.init(big[0]), nets, big[1]).compile().memory_analysis().temp_size_in_bytes
    activation = 64 * SIZE * SIZE * CH * 4  # one conv activation of the whole chunk
    assert temp[0] > 2 * activation
    assert temp[4] < temp[0] / 4


def test_per_frame_losses_grouped_equals_whole(problem):
    nets, params, batch = problem
    whole = optimize.per_frame_losses(conv_loss, params, nets, batch, 0)
    grouped = optimize.per_frame_losses(conv_loss, params, nets, batch, 2)
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(whole), rtol=1e-6)
