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
it, so `forward`/`reverse` drop it. In torchdiffeq that extra state enters the step-size error norm,
so our dopri5 takes slightly different (typically larger) steps; results differ at tolerance level.
`log_likelihood` integrates it (RK4, with the exact divergence or Hutchinson's estimate with fixed
probes): log p(w | c) = log N(z; 0, I) + log|det dz/dw|, z = forward(w, c), per W+ row — the
reference's training objective (`train_flow.py`: log N(z) - delta_logp, delta_logp = -log|det|).
"""
import dataclasses
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from stylejax.nets.base import Network
from stylejax.nets.ode import dopri5_solve, rk4_solve

YAW_INDEX = 11
PITCH_INDEX = 12
NUM_ROWS = 18
DEFAULT_RK4_STEPS = 8  # see docs/networks.md: RK4 error vs dopri5 as a function of N
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


def moving_batch_norm(bn, x, reverse=False, eps=BN_EPS):
    """MovingBatchNorm1d in eval mode (running statistics, exp-parameterised affine)."""
    log_scale = -0.5 * jnp.log(bn["running_var"] + eps) + bn["weight"]
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


def _forward(params, ws, cond, solver, steps, rtol, atol, bn_eps=BN_EPS):
    x = moving_batch_norm(params["bn_in"], ws, eps=bn_eps)
    x, nfe = _integrate(params, x, _flatten_cond(cond), False, solver, steps, rtol, atol)
    return moving_batch_norm(params["bn_out"], x, eps=bn_eps), nfe


def _reverse(params, z, cond, solver, steps, rtol, atol, bn_eps=BN_EPS):
    x = moving_batch_norm(params["bn_out"], z, reverse=True, eps=bn_eps)
    x, nfe = _integrate(params, x, _flatten_cond(cond), True, solver, steps, rtol, atol)
    return moving_batch_norm(params["bn_in"], x, reverse=True, eps=bn_eps), nfe


def forward(params, ws, cond, solver="dopri5", steps=DEFAULT_RK4_STEPS, rtol=1e-5, atol=1e-5,
            return_nfe=False, bn_eps=BN_EPS):
    """w -> z. ws [B, R, D] (R = 18 W+ rows), cond [B, 17] or [B, 17, 1, 1]."""
    z, nfe = _forward(params, ws, cond, solver, steps, rtol, atol, bn_eps)
    return (z, nfe) if return_nfe else z


def reverse(params, z, cond, solver="dopri5", steps=DEFAULT_RK4_STEPS, rtol=1e-5, atol=1e-5,
            return_nfe=False, bn_eps=BN_EPS):
    """z -> w, the inverse of `forward` for the same cond."""
    ws, nfe = _reverse(params, z, cond, solver, steps, rtol, atol, bn_eps)
    return (ws, nfe) if return_nfe else ws


def _divergence(f, t, x, probes):
    """(f(t, x), tr(df/dx) per row [B, R]) for x [B, R, D]; the flow acts on each row alone, so one JVP
    with the same tangent on every row gives every row's Jacobian-vector product at once.
    probes None: exact, one JVP per input dimension (D of them). probes [K, D]: Hutchinson's estimate
    mean_k v_kᵀ J v_k (unbiased for Rademacher or Gaussian v_k; exact for the D vectors √D·e_i)."""
    d = x.shape[-1]
    fx, jvp = jax.linearize(lambda y: f(t, y), x)
    if probes is None:
        # column i of J on every row; the trace sums the diagonal entries J_ii
        cols = jax.vmap(lambda e: jvp(jnp.broadcast_to(e, x.shape)))(jnp.eye(d, dtype=x.dtype))  # [D, B, R, D]
        return fx, jnp.einsum("ibri->br", cols)
    probes = jnp.asarray(probes, x.dtype)
    jv = jax.vmap(lambda v: jvp(jnp.broadcast_to(v, x.shape)))(probes)  # [K, B, R, D]
    return fx, jnp.einsum("kbrd,kd->br", jv, probes) / probes.shape[0]


def log_likelihood(params, ws, cond, steps=DEFAULT_RK4_STEPS, probes=None, bn_eps=BN_EPS):
    """log p(w | c) per W+ row [B, R] (nats) of ws [B, R, D] under condition cond [B, 17]: the flow's
    density, log N(z; 0, I) + log|det dz/dw| with z = forward(w, c), as StyleFlow is trained. The log
    determinant is the two batch norms' log scales plus the integral of tr(df/dx) over the ODE, integrated
    with the same RK4 as the state (`steps` steps); `probes` see `_divergence`. Differentiable in
    everything (jit it at the call site); cost ~D (exact) or ~K (probes) times a forward pass."""
    cond = _flatten_cond(cond)
    f = _dynamics(params, cond)

    # d(x, logdet)/dt = (f, tr df/dx); rematerialised in the backward pass (the D JVPs would be stored otherwise)
    augmented = jax.checkpoint(lambda t, state: _divergence(f, t, state[0], probes))
    bn_logdet = lambda bn: jnp.sum(-0.5 * jnp.log(bn["running_var"] + bn_eps) + bn["weight"])  # sum of log scales
    x = moving_batch_norm(params["bn_in"], ws, eps=bn_eps)
    end_time = jnp.square(params["sqrt_end_time"]).astype(x.dtype)
    x, logdet = rk4_solve(augmented, (x, jnp.zeros(x.shape[:-1], x.dtype)), jnp.zeros_like(end_time), end_time,
                          steps)
    z = moving_batch_norm(params["bn_out"], x, eps=bn_eps)
    logdet = logdet + bn_logdet(params["bn_in"]) + bn_logdet(params["bn_out"])
    log_normal = -0.5 * jnp.sum(jnp.square(z), axis=-1) - 0.5 * z.shape[-1] * np.log(2 * np.pi)
    return log_normal + logdet


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
              steps=DEFAULT_RK4_STEPS, rtol=1e-5, atol=1e-5, bn_eps=BN_EPS):
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
        return _pose_edit_rk4(params, ws, cond_src, cond_tgt, keep, steps, bn_eps)
    z, _ = _forward(params, ws, cond_src, solver, steps, rtol, atol, bn_eps)
    w_edit, _ = _reverse(params, z, cond_tgt, solver, steps, rtol, atol, bn_eps)
    mask = np.zeros((1, ws.shape[1], 1), bool)
    mask[:, list(keep)] = True
    return jnp.where(mask, w_edit, ws)


def _pose_edit_rk4(params, ws, cond_src, cond_tgt, keep, steps, bn_eps):
    sel = np.asarray(keep)
    z, _ = _forward(params, ws[:, sel], cond_src, "rk4", steps, None, None, bn_eps)
    w_edit, _ = _reverse(params, z, cond_tgt, "rk4", steps, None, None, bn_eps)
    return ws.at[:, sel].set(w_edit)


# ----------------------------------------------------------------------------- the network object

@dataclasses.dataclass(frozen=True)
class StyleFlowConfig:
    dim: int = 512                    # W row width
    hidden_dims: Tuple[int, ...] = (512, 512, 512, 512, 512)  # ODE net hidden widths ('512-512-512-512-512')
    cond_dim: int = 17                # 9 SH lighting + 8 attributes
    bn_eps: float = BN_EPS            # MovingBatchNorm1d's eps on the running variance

    def __post_init__(self):
        object.__setattr__(self, "hidden_dims", tuple(int(d) for d in self.hidden_dims))


@jax.tree_util.register_pytree_node_class
class StyleFlow(Network):
    """StyleFlow CNF: `forward(ws, cond)` (w -> z), `reverse(z, cond)`, `pose_edit(ws, cond_src, yaw, pitch)`.
    Methods default to the differentiable RK4 solver; pass solver="dopri5" for reference parity."""

    kind = "styleflow"
    config_class = StyleFlowConfig

    @classmethod
    def init(cls, config, key):
        k_net = key
        dims = tuple(config.hidden_dims) + (config.dim,)
        w = jnp.zeros((1, 1, config.dim))
        odenet = ODENet(dims).init(k_net, jnp.zeros(()), w, jnp.zeros((1, config.cond_dim)))["params"]
        bn = lambda: {name: jnp.zeros((config.dim,)) for name in ("weight", "bias", "running_mean")} | {
            "running_var": jnp.ones((config.dim,))}
        return {"params": {"bn_in": bn(), "bn_out": bn(), "odenet": odenet,
                           "sqrt_end_time": jnp.ones(())}}

    def forward(self, ws, cond, solver="rk4", steps=DEFAULT_RK4_STEPS, rtol=1e-5, atol=1e-5, return_nfe=False):
        return forward(self.params, ws, cond, solver, steps, rtol, atol, return_nfe, self.config.bn_eps)

    def reverse(self, z, cond, solver="rk4", steps=DEFAULT_RK4_STEPS, rtol=1e-5, atol=1e-5, return_nfe=False):
        return reverse(self.params, z, cond, solver, steps, rtol, atol, return_nfe, self.config.bn_eps)

    def log_likelihood(self, ws, cond, steps=DEFAULT_RK4_STEPS, probes=None):
        """log p(w | c) per W+ row [B, R]; see the module function."""
        return log_likelihood(self.params, ws, cond, steps, probes, self.config.bn_eps)

    def pose_edit(self, ws, cond_src, yaw_deg=None, pitch_deg=None, rows=slice(0, 4), solver="rk4",
                  steps=DEFAULT_RK4_STEPS, rtol=1e-5, atol=1e-5):
        """See the module function `pose_edit`; yaw/pitch in degrees, scalar or per frame [B]."""
        return pose_edit(self.params, ws, cond_src, yaw_deg, pitch_deg, rows, solver, steps, rtol, atol,
                         self.config.bn_eps)
