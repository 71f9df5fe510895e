"""Fixed-step RK4 and adaptive Dormand-Prince 5(4) ODE solvers over pytrees of arrays (jit-able).

`rk4_solve` is a `lax.scan` (differentiable, vmap-able); `dopri5_solve` is a `lax.while_loop` with
torchdiffeq 0.0.1's step control (not reverse-mode differentiable), used for parity with StyleFlow.
"""
import jax
import jax.numpy as jnp


def rk4_solve(f, y0, t0, t1, steps):
    """Classic RK4 with `steps` equal steps from t0 to t1 (either direction)."""
    h = (t1 - t0) / steps
    axpy = lambda a, x, y: jax.tree_util.tree_map(lambda xi, yi: yi + a * xi, x, y)  # y + a x, leaf-wise

    def step(y, i):
        t = t0 + i * h
        k1 = f(t, y)
        k2 = f(t + h / 2, axpy(h / 2, k1, y))
        k3 = f(t + h / 2, axpy(h / 2, k2, y))
        k4 = f(t + h, axpy(h, k3, y))
        incr = jax.tree_util.tree_map(lambda a, b, c, d: a + 2 * b + 2 * c + d, k1, k2, k3, k4)
        return axpy(h / 6, incr, y), None

    dtype = jax.tree_util.tree_leaves(y0)[0].dtype
    y, _ = jax.lax.scan(step, y0, jnp.arange(steps, dtype=dtype))
    return y


# Dormand-Prince 5(4) tableau, error weights and dense-output mid-point weights (Shampine).
_DP_ALPHA = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_BETA = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_C_ERROR = (35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
               -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60)
_DP_C_MID = (6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2,
             -2691868925 / 45128329728 / 2, 187940372067 / 1594534317056 / 2,
             -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2)


def _combine(weights, ks):
    return sum(w * k for w, k in zip(weights, ks) if w != 0.0)


def dopri5_solve(f, y0, t0, t1, rtol=1e-5, atol=1e-5, max_steps=1000, safety=0.9, ifactor=10.0,
                 dfactor=0.2):
    """Adaptive Dormand-Prince from t0 to t1 > t0, as torchdiffeq 0.0.1 does it.

    Error norm: RMS over the whole state of err / (atol + rtol * max(|y0|, |y1|)); a step is
    accepted when its mean squared ratio is <= 1; next step = dt / clip(sqrt(msr)**(1/5) / safety,
    1/ifactor, 1/dfactor if rejected else 1). The solver steps past t1 and returns the 4th-order
    dense-output interpolant at t1. Returns (y(t1), number of function evaluations).

    Initial step: torchdiffeq's Hairer selection over StyleFlow's state tuple (w, logp, cond)
    degenerates, because cond has zero derivative: h0 = 0.01 * d0/d1 is infinite, the probe
    step is NaN and Python's `max` skips the NaNs, leaving h = (0.01 / d1) ** (1/5) with
    d1 = RMS(f(t0, y0) / (atol + rtol * |y0|)). We reproduce that (without the logp term).
    """
    dtype = y0.dtype
    rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(x)))
    f0 = f(t0, y0)
    d1 = rms(f0 / (atol + rtol * jnp.abs(y0)))
    dt0 = jnp.where(d1 < 1e-5, 1e-6, (0.01 / jnp.maximum(d1, 1e-30)) ** 0.2).astype(dtype)
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)

    def cond_fn(state):
        t, _, _, _, _, _, n, _ = state
        return (t < t1) & (n < max_steps)

    def body_fn(state):
        t, y, fy, dt, t_prev, coeffs, n, nfe = state
        ks = [fy]
        for alpha, beta in zip(_DP_ALPHA, _DP_BETA):
            ks.append(f(t + alpha * dt, y + dt * _combine(beta, ks)))
        y_new = y + dt * _combine(_DP_BETA[-1], ks)  # FSAL: the last stage is at y_new
        err = dt * _combine(_DP_C_ERROR, ks)
        tol = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y_new))
        msr = jnp.mean(jnp.square(err / tol))
        accept = msr <= 1.0
        # quartic dense output on [t, t + dt] (coefficients of x**4 .. x**0, x in [0, 1])
        y_mid = y + dt * _combine(_DP_C_MID, ks)
        f_new = ks[-1]
        new_coeffs = (
            -2 * dt * fy + 2 * dt * f_new - 8 * y - 8 * y_new + 16 * y_mid,
            5 * dt * fy - 3 * dt * f_new + 18 * y + 14 * y_new - 32 * y_mid,
            -4 * dt * fy + dt * f_new - 11 * y - 5 * y_new + 16 * y_mid,
            dt * fy,
            y,
        )
        shrink = jnp.where(accept, 1.0, 1.0 / dfactor)
        factor = jnp.clip(jnp.sqrt(msr) ** 0.2 / safety, 1.0 / ifactor, shrink)
        dt_next = jnp.where(msr == 0, dt * ifactor, dt / factor).astype(dtype)
        pick = lambda a, b: jnp.where(accept, a, b)
        return (pick(t + dt, t), pick(y_new, y), pick(f_new, fy), dt_next, pick(t, t_prev),
                tuple(pick(a, b) for a, b in zip(new_coeffs, coeffs)), n + 1, nfe + 6)

    state = (t0, y0, f0, dt0, t0, (y0,) * 5, jnp.asarray(0), jnp.asarray(1))
    t, y, _, _, t_prev, coeffs, _, nfe = jax.lax.while_loop(cond_fn, body_fn, state)
    x = (t1 - t_prev) / (t - t_prev)
    a, b, c, d, e = coeffs
    return (((a * x + b) * x + c) * x + d) * x + e, nfe
