"""StyleFlow (Abdal et al. 2021): a conditional continuous normalising flow on W+ rows.

Chain (as RameenAbdal/StyleFlow `cnf(512, '512-512-512-512-512', 17, 1)`):
MovingBatchNorm1d -> CNF -> MovingBatchNorm1d. The CNF's dynamics are an ODE net of
ConcatSquashLinear layers (tanh between, none after the last) with context [t, cond(17)],
integrated over [0, T] with a learned end time T = sqrt_end_time**2. The same flow acts on
each of the 18 W+ rows independently, all rows of a frame sharing that frame's condition.

cond = 9 spherical-harmonic lighting coefficients + 8 attributes
(Gender, Glasses, Yaw, Pitch, Baldness, Beard, Age, Expression); yaw (index 11) and pitch
(index 12) are in degrees.

Solvers
- 'dopri5': adaptive Dormand-Prince with torchdiffeq 0.0.1's step control (the version
  StyleFlow pins), atol = rtol = 1e-5, in a `lax.while_loop` (jit-able, not reverse-mode
  differentiable). Used for parity with the reference.
- 'rk4': classic fixed-step Runge-Kutta with `steps` steps (`lax.scan`): jit/vmap/grad-friendly,
  the one to optimise through.

The reference also integrates log p with a Hutchinson divergence estimate; editing does not need
it, so it is dropped here. In torchdiffeq that extra state enters the step-size error norm, so our
dopri5 takes slightly different (typically larger) steps; results differ at tolerance level.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

YAW_INDEX = 11
PITCH_INDEX = 12
NUM_ROWS = 18
DEFAULT_RK4_STEPS = 8  # see README: RK4 error vs dopri5 as a function of N
BN_EPS = 1e-4
_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- network

class ConcatSquashLinear(nn.Module):
    """Linear(x) * sigmoid(Linear_gate(ctx)) + Linear_bias(ctx); ctx is per frame, x per row."""
    features: int

    @nn.compact
    def __call__(self, ctx, x):
        gate = jax.nn.sigmoid(nn.Dense(self.features, precision=_HI, name="hyper_gate")(ctx))
        bias = nn.Dense(self.features, use_bias=False, precision=_HI, name="hyper_bias")(ctx)
        # ctx [B, C] -> broadcast over the W+ rows of x [B, R, D]
        return nn.Dense(self.features, precision=_HI, name="layer")(x) * gate[:, None] + bias[:, None]


class ODENet(nn.Module):
    """dw/dt = f(t, w; cond) for w [B, R, D], cond [B, C]."""
    dims: Sequence[int]  # output width of every layer; the last equals the input width

    @nn.compact
    def __call__(self, t, w, cond):
        t_col = jnp.broadcast_to(jnp.asarray(t, w.dtype), (w.shape[0], 1))
        ctx = jnp.concatenate([t_col, cond.astype(w.dtype)], axis=1)
        h = w
        for i, d in enumerate(self.dims):
            h = ConcatSquashLinear(d, name=f"layers_{i}")(ctx, h)
            if i < len(self.dims) - 1:
                h = jnp.tanh(h)
        return h


def moving_batch_norm(bn, x, reverse=False):
    """MovingBatchNorm1d in eval mode (running statistics, exp-parameterised affine)."""
    log_scale = -0.5 * jnp.log(bn["running_var"] + BN_EPS) + bn["weight"]
    if reverse:
        return (x - bn["bias"]) * jnp.exp(-log_scale) + bn["running_mean"]
    return (x - bn["running_mean"]) * jnp.exp(log_scale) + bn["bias"]


def _odenet_dims(params):
    layers = params["odenet"]
    return tuple(int(layers[f"layers_{i}"]["layer"]["kernel"].shape[1]) for i in range(len(layers)))


def _dynamics(params, cond):
    net = ODENet(_odenet_dims(params))
    odenet_params = {"params": params["odenet"]}
    return lambda t, w: net.apply(odenet_params, t, w, cond)


# ----------------------------------------------------------------------------- solvers

def rk4_solve(f, y0, t0, t1, steps):
    """Classic RK4 with `steps` equal steps from t0 to t1 (either direction)."""
    h = (t1 - t0) / steps

    def step(y, i):
        t = t0 + i * h
        k1 = f(t, y)
        k2 = f(t + h / 2, y + (h / 2) * k1)
        k3 = f(t + h / 2, y + (h / 2) * k2)
        k4 = f(t + h, y + h * k3)
        return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4), None

    y, _ = jax.lax.scan(step, y0, jnp.arange(steps, dtype=y0.dtype))
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


# ----------------------------------------------------------------------------- flow

def _flatten_cond(cond):
    cond = jnp.asarray(cond)
    return cond.reshape(cond.shape[0], -1)  # accepts [B, 17] and the reference's [B, 17, 1, 1]


def _integrate(params, w, cond, reverse, solver, steps, rtol, atol):
    """Integrates the CNF over [0, T] (reverse: T -> 0). Returns (w(T or 0), nfe)."""
    f = _dynamics(params, cond)
    end_time = jnp.square(params["sqrt_end_time"]).astype(w.dtype)
    if reverse:  # like torchdiffeq: s in [-T, 0], ds = -dt
        g = lambda s, y: -f(-s, y)
        t0, t1 = -end_time, jnp.zeros_like(end_time)
    else:
        g, t0, t1 = f, jnp.zeros_like(end_time), end_time
    if solver == "rk4":
        return rk4_solve(g, w, t0, t1, steps), jnp.asarray(4 * steps)
    if solver == "dopri5":
        return dopri5_solve(g, w, t0, t1, rtol=rtol, atol=atol)
    raise ValueError(f"unknown solver {solver!r}; use 'dopri5' or 'rk4'")


def _forward(params, ws, cond, solver, steps, rtol, atol):
    x = moving_batch_norm(params["bn_in"], ws)
    x, nfe = _integrate(params, x, _flatten_cond(cond), False, solver, steps, rtol, atol)
    return moving_batch_norm(params["bn_out"], x), nfe


def _reverse(params, z, cond, solver, steps, rtol, atol):
    x = moving_batch_norm(params["bn_out"], z, reverse=True)
    x, nfe = _integrate(params, x, _flatten_cond(cond), True, solver, steps, rtol, atol)
    return moving_batch_norm(params["bn_in"], x, reverse=True), nfe


_STATIC = ("solver", "steps", "rtol", "atol")
_forward_jit = jax.jit(_forward, static_argnames=_STATIC)
_reverse_jit = jax.jit(_reverse, static_argnames=_STATIC)


def forward(params, ws, cond, solver="dopri5", steps=DEFAULT_RK4_STEPS, rtol=1e-5, atol=1e-5,
            return_nfe=False):
    """w -> z. ws [B, R, D] (R = 18 W+ rows), cond [B, 17] or [B, 17, 1, 1]."""
    z, nfe = _forward_jit(params, ws, cond, solver=solver, steps=steps, rtol=rtol, atol=atol)
    return (z, nfe) if return_nfe else z


def reverse(params, z, cond, solver="dopri5", steps=DEFAULT_RK4_STEPS, rtol=1e-5, atol=1e-5,
            return_nfe=False):
    """z -> w, the inverse of `forward` for the same cond."""
    ws, nfe = _reverse_jit(params, z, cond, solver=solver, steps=steps, rtol=rtol, atol=atol)
    return (ws, nfe) if return_nfe else ws


def _row_indices(rows, num_rows):
    if isinstance(rows, slice):
        return tuple(range(num_rows)[rows])
    return tuple(int(r) for r in rows)


def set_pose(cond, yaw_deg=None, pitch_deg=None):
    """cond [B, 17(,1,1)] -> [B, 17] with yaw/pitch (degrees, scalar or [B]) replaced."""
    cond = _flatten_cond(cond)
    for index, value in ((YAW_INDEX, yaw_deg), (PITCH_INDEX, pitch_deg)):
        if value is not None:
            value = jnp.broadcast_to(jnp.asarray(value, cond.dtype), cond.shape[:1])
            cond = cond.at[:, index].set(value)
    return cond


def pose_edit(params, ws, cond_src, yaw_deg=None, pitch_deg=None, rows=slice(0, 4), solver="rk4",
              steps=DEFAULT_RK4_STEPS, rtol=1e-5, atol=1e-5):
    """StyleFlow head-pose edit of W+ latents ws [B, 18, D].

    z = forward(ws, cond_src); w' = reverse(z, cond_src with yaw/pitch replaced); rows outside
    `rows` are restored from ws (StyleFlow keeps rows 0-3 for yaw and pitch). yaw_deg / pitch_deg:
    degrees, scalar or per frame [B]; None keeps the source value. Differentiable w.r.t. yaw,
    pitch and ws with solver='rk4' (jit it at the call site).

    With 'rk4' only the edited rows are integrated (the flow is row-wise, so this is exact). With
    'dopri5' all rows are integrated, because the reference's adaptive step control sees all rows.
    """
    ws = jnp.asarray(ws)
    keep = _row_indices(rows, ws.shape[1])
    cond_src = _flatten_cond(cond_src)
    cond_tgt = set_pose(cond_src, yaw_deg, pitch_deg)
    if solver == "rk4":
        return _pose_edit_rk4(params, ws, cond_src, cond_tgt, keep=keep, steps=steps)
    z, _ = _forward_jit(params, ws, cond_src, solver=solver, steps=steps, rtol=rtol, atol=atol)
    w_edit, _ = _reverse_jit(params, z, cond_tgt, solver=solver, steps=steps, rtol=rtol, atol=atol)
    mask = np.zeros((1, ws.shape[1], 1), bool)
    mask[:, list(keep)] = True
    return jnp.where(mask, w_edit, ws)


def _pose_edit_rk4_fn(params, ws, cond_src, cond_tgt, keep, steps):
    sel = np.asarray(keep)
    z, _ = _forward(params, ws[:, sel], cond_src, "rk4", steps, None, None)
    w_edit, _ = _reverse(params, z, cond_tgt, "rk4", steps, None, None)
    return ws.at[:, sel].set(w_edit)


_pose_edit_rk4 = jax.jit(_pose_edit_rk4_fn, static_argnames=("keep", "steps"))


# ----------------------------------------------------------------------------- checkpoint

def load_styleflow(path):
    """Parameters from a stylejax checkpoint made by `python -m convert styleflow`."""
    from stylejax import checkpoint

    config, params = checkpoint.load(path, "styleflow")
    params = jax.tree_util.tree_map(jnp.asarray, params)
    dims = _odenet_dims(params)
    if list(dims) != list(config["hidden_dims"]) + [config["dim"]]:
        raise checkpoint.CheckpointError(f"{path}: parameter shapes {dims} disagree with config.json")
    return params
