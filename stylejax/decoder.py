"""The decoder: an encoding's numbers -> latents -> styles -> image.

One model, shared by every stage that optimises it (`head_pose`, `attributes`), by `render` and the encode
metrics, and by what comes next (puppeteering, fine-tuning):

    ws_t     = pose_latents(flow, id_latent, cond_src, yaw_t, pitch_t)      StyleFlow pose edit, rows 0-3
    styles_t = apply_offsets(g, ws_t, offsets_t, flat_index)                 StyleSpace channel offsets
    image_t  = g.synthesize_from_styles(styles_t)                            roll is re-applied in the image

Pure functions of networks passed as arguments (pytrees); nothing here reads files.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from stylejax.errors import UserError
from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX
from stylejax.nets.stylespace import channel_to_flat_index, flatten_styles, unflatten_styles

POSE_ROWS = (0, 4)  # [start, stop) of the W+ rows StyleFlow edits for yaw and pitch: 0-3 (reference facts 4.3)
COND_DIM = 17  # StyleFlow's condition: 9 lighting + 8 attributes


def pose_latents(flow, id_latent, cond_src, yaw_deg, pitch_deg, rk4_steps, rows=POSE_ROWS):
    """Head-adjusted latents [T, num_ws, w_dim] for relative yaw/pitch [T] (degrees); the edit acts on the W+
    rows [start, stop) = `rows` (a static tuple; the encoding's `settings.pose_rows`).

    StyleFlow's edit w' = R(F(w, c_src), c_tgt) on rows 0-3, applied as w + R(z, c_tgt) - R(z, c_src) with
    z = F(w, c_src): identical for an exact ODE solve (R(F(w, c), c) = w), and with RK4 it cancels the
    solver's round-trip error, so a zero edit returns the identity latent exactly (the identity frame
    renders as its own inversion)."""
    t = yaw_deg.shape[0]
    ws = jnp.broadcast_to(id_latent, (t,) + id_latent.shape)
    cond = jnp.broadcast_to(cond_src, (t, COND_DIM))
    target = cond.at[:, YAW_INDEX].add(yaw_deg).at[:, PITCH_INDEX].add(pitch_deg)
    edited = slice(*rows)
    z = flow.forward(ws[:, edited], cond, solver="rk4", steps=rk4_steps)
    delta = flow.reverse(z, target, solver="rk4", steps=rk4_steps) - flow.reverse(z, cond, solver="rk4", steps=rk4_steps)
    return ws.at[:, edited].add(delta)


def row_range(rows, num_ws, what="rows"):
    """A range of W+ rows (e.g. the edited ones) as a (start, stop) tuple, checked against the generator's `num_ws`; `what` names
    where they came from in the error."""
    try:
        start, stop = (int(v) for v in rows)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be two integers (start, stop), got {rows!r}") from None
    if not 0 <= start < stop <= num_ws:
        raise UserError(f"{what} ({start}, {stop}) is not a range of W+ rows inside [0, {num_ws}): give start < stop "
                        f"<= {num_ws}")
    return start, stop


def apply_offsets(g, ws, offsets, flat_index):
    """Styles of ws [T, num_ws, w_dim] with offsets [T, K] added at flat StyleSpace indices [K]."""
    flat = flatten_styles(g.styles_from_ws(ws))
    return unflatten_styles(flat.at[:, flat_index].add(offsets), g.config)


def flat_indices(channels, gconfig):
    """Flat StyleSpace indices (a tuple: hashable, so it can be a static jit argument) of channel names."""
    return tuple(channel_to_flat_index(n, gconfig) for n in channels)


def decode(g, flow, id_latent, cond_src, yaw_deg, pitch_deg, offsets, flat_index, rk4_steps, noise_mode="const",
           dtype=jnp.float32, pose_rows=POSE_ROWS):
    """Images [T, res, res, 3] (about [-1, 1], level: roll not applied) of relative yaw/pitch [T] and offsets
    [T, K] at `flat_index`. Differentiable in every argument."""
    ws = pose_latents(flow, id_latent, cond_src, yaw_deg, pitch_deg, rk4_steps, pose_rows)
    styles = apply_offsets(g, ws, offsets, np.asarray(flat_index))
    return g.synthesize_from_styles(styles, noise_mode, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("flat_index", "rk4_steps", "noise_mode", "pose_rows"))
def render_frames(g, flow, id_latent, cond_src, yaw, pitch, offsets, flat_index, rk4_steps, noise_mode="const",
                  pose_rows=POSE_ROWS):
    """`decode`, jitted once per chunk shape (`flat_index` a tuple: static, so one compiled program serves
    every chunk and call)."""
    return decode(g, flow, id_latent, cond_src, yaw, pitch, offsets, flat_index, rk4_steps, noise_mode,
                  pose_rows=pose_rows)


def iter_renders(enc, g, flow, chunk=8):
    """Yields (lo, hi, images [B, res, res, 3] float32) of an encoding's level (roll-free) re-synthesis."""
    from stylejax.parallel import pad_frames

    flat_index = flat_indices(enc.channels, g.config)
    cond = jnp.asarray(np.asarray(enc.settings["cond_src"], np.float32))
    steps, noise = int(enc.settings.get("rk4_steps", 8)), enc.settings.get("noise_mode", "const")
    rows = row_range(enc.settings.get("pose_rows", POSE_ROWS), g.config.num_ws,
                     "the encoding's settings.pose_rows")
    pose, off = enc.pose_deg.astype(np.float32), enc.offsets.astype(np.float32)
    id_latent = jnp.asarray(enc.id_latent)
    for lo in range(0, enc.num_frames, chunk):
        hi = min(lo + chunk, enc.num_frames)
        (yaw, pitch, o), _ = pad_frames((pose[lo:hi, 0], pose[lo:hi, 1], off[lo:hi]), chunk)  # one shape
        images = render_frames(g, flow, id_latent, cond, jnp.asarray(yaw), jnp.asarray(pitch), jnp.asarray(o),
                               flat_index, steps, noise, rows)
        yield lo, hi, np.asarray(images)[:hi - lo]


def to_uint8(images):
    """Images about [-1, 1] -> uint8 [0, 255], rounded to nearest."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)
