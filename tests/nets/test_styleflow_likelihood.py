"""StyleFlow's density log p(w | c) (`stylejax.nets.styleflow.log_likelihood`) against references that do not
share its code: the log-determinant of the forward map's Jacobian by autodiff + LU (numpy's slogdet), the
density's integral over w (a 1-D flow on a grid), finite differences for the gradient in the condition."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax.nets.styleflow import StyleFlow, StyleFlowConfig


def small_flow(dim, seed=1):
    """A random flow whose batch norms are not the identity (their log scales enter the density) and whose end
    time is not 1."""
    cfg = StyleFlowConfig(dim=dim, hidden_dims=(16, 16))
    flow = StyleFlow.random(cfg, jax.random.PRNGKey(seed))
    rng = np.random.RandomState(seed)
    bn = lambda: {"weight": jnp.asarray(0.3 * rng.randn(dim), jnp.float32),
                  "bias": jnp.asarray(0.3 * rng.randn(dim), jnp.float32),
                  "running_mean": jnp.asarray(rng.randn(dim), jnp.float32),
                  "running_var": jnp.asarray(rng.rand(dim) + 0.2, jnp.float32)}
    return StyleFlow(cfg, {**flow.params, "bn_in": bn(), "bn_out": bn(), "sqrt_end_time": jnp.asarray(1.2)})


def test_log_likelihood_is_change_of_variables():
    """log N(z) + log|det dz/dw| with the determinant of the RK4 map's Jacobian (jacfwd + slogdet)."""
    dim, steps = 6, 64
    flow = small_flow(dim)
    rng = np.random.RandomState(0)
    w = jnp.asarray(rng.randn(1, 3, dim), jnp.float32)
    c = jnp.asarray(rng.randn(1, 17), jnp.float32)
    ll = np.asarray(flow.log_likelihood(w, c, steps=steps))[0]
    row = jax.jit(lambda x, r: flow.forward(w.at[0, r].set(x), c, steps=steps)[0, r])
    jac = jax.jit(jax.jacfwd(row))
    for r in range(3):
        sign, logdet = np.linalg.slogdet(np.asarray(jac(w[0, r], r), np.float64))
        z = np.asarray(row(w[0, r], r), np.float64)
        expected = -0.5 * np.sum(z ** 2) - 0.5 * dim * np.log(2 * np.pi) + logdet
        # both integrate the same ODE with 64 RK4 steps (truncation ~1e-7); float32 sums over 64 steps of
        # values ~10 leave ~1e-5: 1e-3 nats is far below any sign or factor error (tens of nats here)
        assert sign > 0 and ll[r] == pytest.approx(expected, abs=1e-3), (r, ll[r], expected)


def test_hutchinson_with_unit_probes_is_exact():
    dim = 6
    flow = small_flow(dim)
    rng = np.random.RandomState(2)
    w = jnp.asarray(rng.randn(2, 3, dim), jnp.float32)
    c = jnp.asarray(rng.randn(2, 17), jnp.float32)
    exact = flow.log_likelihood(w, c, steps=8)
    # mean_k v_kᵀ J v_k over v_k = √D e_k is tr(J) exactly; float32 rounding of the two sums only
    unit = flow.log_likelihood(w, c, steps=8, probes=np.sqrt(dim) * np.eye(dim, dtype=np.float32))
    np.testing.assert_allclose(np.asarray(unit), np.asarray(exact), rtol=0, atol=1e-4)
    # 4 Rademacher probes: a different (estimated) value, deterministic for fixed probes
    probes = np.sign(rng.randn(4, dim)).astype(np.float32)
    a, b = (np.asarray(flow.log_likelihood(w, c, steps=8, probes=probes)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - np.asarray(exact)).max() > 1e-3


def test_density_integrates_to_one():
    """A 1-D flow: the density exp(log p(w | c)) integrates to 1 over w (sign of the log-determinant and the
    normalising constant)."""
    flow = small_flow(1, seed=3)
    grid = np.linspace(-15.0, 15.0, 6001, dtype=np.float32)
    w = jnp.asarray(grid)[None, :, None]  # one frame, 6001 "rows" of a 1-d latent
    for c in (np.zeros((1, 17), np.float32), np.random.RandomState(4).randn(1, 17).astype(np.float32)):
        density = np.exp(np.asarray(flow.log_likelihood(w, c, steps=32), np.float64))[0]
        mass = np.trapezoid(density, grid)
        # the trapezoid rule on a 0.005 grid and the RK4 solve are accurate to ~1e-5; a wrong sign of the
        # log-determinant or a missing batch-norm scale changes the mass by tens of percent here
        assert mass == pytest.approx(1.0, abs=2e-3), mass


def test_gradient_in_the_condition_matches_finite_differences():
    jax.config.update("jax_enable_x64", True)
    try:
        flow = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), small_flow(6))
        rng = np.random.RandomState(5)
        w, c = jnp.asarray(rng.randn(1, 3, 6)), jnp.asarray(rng.randn(1, 17))
        f = jax.jit(lambda c: flow.log_likelihood(w, c, steps=16).sum())
        grad = np.asarray(jax.jit(jax.grad(f))(c))[0]
        eps = 1e-6
        fd = np.array([(f(c.at[0, i].add(eps)) - f(c.at[0, i].add(-eps))) / (2 * eps) for i in range(17)])
        # float64 central differences: error ~eps² f''' + 1e-16 f / eps ≈ 1e-9 on gradients of size ~1
        np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-6)
    finally:
        jax.config.update("jax_enable_x64", False)
