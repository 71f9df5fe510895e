"""The decoder: an encoding's numbers -> latents -> styles -> image.

One model, shared by every stage that optimises it (`head_pose`, `attributes`), by `render` and the encode
metrics, and by what comes next (puppeteering, fine-tuning):

    ws_t     = pose_latents(flow, id_latent, cond_src, yaw_t, pitch_t)      StyleFlow pose edit, rows 0-3
    styles_t = apply_offsets(g, ws_t, offsets_t, flat_index, offset_scale)   StyleSpace channel offsets
    image_t  = g.synthesize_from_styles(styles_t)                            roll is re-applied in the image

Pure functions of networks passed as arguments (pytrees); nothing here reads files. `check_fits` refuses,
with one line, an encoding that is a valid file but cannot drive the given networks; `iter_renders` (and so
everything that decodes an encoding) runs it first.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from stylejax.errors import UserError
from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX
from stylejax.nets.stylespace import channel_to_flat_index, flatten_styles, layer_dims, unflatten_styles

POSE_ROWS = slice(0, 4)  # StyleFlow edits W+ rows 0-3 for yaw and pitch (reference facts 4.3)
COND_DIM = 17  # StyleFlow's condition: 9 lighting + 8 attributes


def pose_latents(flow, id_latent, cond_src, yaw_deg, pitch_deg, rk4_steps):
    """Head-adjusted latents [T, num_ws, w_dim] for relative yaw/pitch [T] (degrees).

    StyleFlow's edit w' = R(F(w, c_src), c_tgt) on rows 0-3, applied as w + R(z, c_tgt) - R(z, c_src) with
    z = F(w, c_src): identical for an exact ODE solve (R(F(w, c), c) = w), and with RK4 it cancels the
    solver's round-trip error, so a zero edit returns the identity latent exactly (the identity frame
    renders as its own inversion)."""
    t = yaw_deg.shape[0]
    ws = jnp.broadcast_to(id_latent, (t,) + id_latent.shape)
    cond = jnp.broadcast_to(cond_src, (t, COND_DIM))
    target = cond.at[:, YAW_INDEX].add(yaw_deg).at[:, PITCH_INDEX].add(pitch_deg)
    rows = ws[:, POSE_ROWS]
    z = flow.forward(rows, cond, solver="rk4", steps=rk4_steps)
    delta = flow.reverse(z, target, solver="rk4", steps=rk4_steps) - flow.reverse(z, cond, solver="rk4", steps=rk4_steps)
    return ws.at[:, POSE_ROWS].add(delta)


def apply_offsets(g, ws, offsets, flat_index, offset_scale=None):
    """Styles of ws [T, num_ws, w_dim] with offsets [T, K] added at flat StyleSpace indices [K]. Offsets are in
    units of `offset_scale` [K] (each channel's standard deviation over the generator's samples: StyleSpace's
    own unit, s += α·std), or raw style units when it is None."""
    flat = flatten_styles(g.styles_from_ws(ws))
    raw = offsets if offset_scale is None else offsets * offset_scale
    return unflatten_styles(flat.at[:, flat_index].add(raw), g.config)


def flat_indices(channels, gconfig):
    """Flat StyleSpace indices (a tuple: hashable, so it can be a static jit argument) of channel names."""
    return tuple(channel_to_flat_index(n, gconfig) for n in channels)


def decode(g, flow, id_latent, cond_src, yaw_deg, pitch_deg, offsets, flat_index, rk4_steps, offset_scale=None,
           noise_mode="const", dtype=jnp.float32):
    """Images [T, res, res, 3] (about [-1, 1], level: roll not applied) of relative yaw/pitch [T] and offsets
    [T, K] (units of `offset_scale`) at `flat_index`. Differentiable in every argument."""
    ws = pose_latents(flow, id_latent, cond_src, yaw_deg, pitch_deg, rk4_steps)
    styles = apply_offsets(g, ws, offsets, np.asarray(flat_index), offset_scale)
    return g.synthesize_from_styles(styles, noise_mode, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("flat_index", "rk4_steps", "noise_mode"))
def render_frames(g, flow, id_latent, cond_src, yaw, pitch, offsets, offset_scale, flat_index, rk4_steps,
                  noise_mode="const"):
    """`decode`, jitted once per chunk shape (`flat_index` a tuple: static, so one compiled program serves
    every chunk and call)."""
    return decode(g, flow, id_latent, cond_src, yaw, pitch, offsets, flat_index, rk4_steps, offset_scale, noise_mode)


class DecodeError(UserError):
    """An encoding (a valid file) that does not fit the networks asked to decode it."""


def check_fits(enc, g, flow, name="this encoding"):
    """Refuses an encoding that passes the file checks (`stylejax.io.encoding`, which also bounds its
    settings) but does not fit the generator `g` and StyleFlow `flow` that would decode it: its resolution,
    identity latent shape, channel names, StyleFlow's source condition (present; StyleFlow's width), and the
    flow against the generator.
    One line naming the problem, before anything is computed."""
    gc, fc = g.config, flow.config
    bad = lambda why: DecodeError(f"{name} does not fit the networks: {why}")
    if enc.resolution != gc.resolution:
        raise bad(f"it is for a {enc.resolution}px generator, this one renders {gc.resolution}px; render with the "
                  "generator used to encode")
    rows, width = enc.id_latent.shape
    if (rows, width) != (gc.num_ws, gc.w_dim):
        raise bad(f"its identity latent has {rows} W+ rows of {width}, the generator takes {gc.num_ws} of "
                  f"{gc.w_dim}")
    if gc.num_ws < POSE_ROWS.stop:
        raise bad(f"the generator has {gc.num_ws} W+ rows; the pose edit needs {POSE_ROWS.stop}")
    dims = layer_dims(gc)
    for ch in enc.channels:
        layer, channel = (int(v) for v in ch.split("_"))
        if layer >= len(dims):
            raise bad(f"channel {ch!r} names StyleSpace layer {layer}, the generator has layers 0-{len(dims) - 1}")
        if channel >= dims[layer]:
            raise bad(f"channel {ch!r} names channel {channel} of StyleSpace layer {layer}, which has {dims[layer]}")
    if enc.cond_src is None:  # a version-1 file whose settings lack it
        raise bad("it has no 'cond_src' (the identity frame's StyleFlow condition, which the pose edit starts "
                  "from); re-encode the video")
    if len(enc.cond_src) != fc.cond_dim or fc.cond_dim != COND_DIM:
        raise bad(f"its 'cond_src' has {len(enc.cond_src)} values, StyleFlow's condition has {fc.cond_dim} (the "
                  f"pose edit needs {COND_DIM})")
    if fc.dim != gc.w_dim:
        raise bad(f"StyleFlow acts on {fc.dim}-d W rows, the generator's are {gc.w_dim}-d")


def iter_renders(enc, g, flow, chunk=8):
    """Yields (lo, hi, images [B, res, res, 3] float32) of an encoding's level (roll-free) re-synthesis.
    Refuses first, with one line, an encoding that does not fit the networks (`check_fits`)."""
    from stylejax.parallel import pad_frames

    check_fits(enc, g, flow)
    flat_index = flat_indices(enc.channels, g.config)
    cond = jnp.asarray(enc.cond_src)
    steps, noise = enc.rk4_steps, enc.settings.get("noise_mode", "const")
    pose, off = enc.pose_deg.astype(np.float32), enc.offsets.astype(np.float32)
    id_latent, scale = jnp.asarray(enc.id_latent), jnp.asarray(enc.offset_scale)
    for lo in range(0, enc.num_frames, chunk):
        hi = min(lo + chunk, enc.num_frames)
        (yaw, pitch, o), _ = pad_frames((pose[lo:hi, 0], pose[lo:hi, 1], off[lo:hi]), chunk)  # one shape
        images = render_frames(g, flow, id_latent, cond, jnp.asarray(yaw), jnp.asarray(pitch), jnp.asarray(o),
                               scale, flat_index, steps, noise)
        yield lo, hi, np.asarray(images)[:hi - lo]


def to_uint8(images):
    """Images about [-1, 1] -> uint8 [0, 255], rounded to nearest."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)
