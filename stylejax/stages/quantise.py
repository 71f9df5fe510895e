"""Quantisation steps of the compact motion coding ("delta-zstd", docs/encoding-format.md), from each
trajectory's sensitivity.

Quantising column j of the motion (yaw, pitch, roll in degrees; the K offsets in channel standard deviations)
with step q_j adds uniform noise of variance q_j²/12 to it, which changes the image by about q_j·s_j in RMS,
where s_j = RMS over pixels of ∂image/∂x_j (images in [-1, 1]) is the column's sensitivity. For a budget D on
the added mean squared error, the steps that spend the fewest bits make every column contribute equally
(reverse water-filling): q_j = sqrt(12·D / C) / s_j for C columns. D comes from the PSNR the user may lose:
a re-synthesis with error mse loses 10·log10(1 + D/mse) dB, so D = mse·(10^(loss_db/10) - 1), with mse the
re-synthesis error measured on a few frames. A column that barely changes the image gets a large step, capped
(`max_step_deg`, `max_step_std`) so the motion still means something when it drives another face.

Sensitivities come from forward-mode derivatives of the decoder (`stylejax.decoder.decode`) at a few frames:
yaw, pitch and each offset exactly; roll, which is re-applied in the image plane, from the image gradient of
the rendered frame (a rotation by dθ moves the pixel at r from the centre by r·dθ).
"""
import jax
import jax.numpy as jnp
import numpy as np

from stylejax.decoder import decode, flat_indices


def sample_frames(num_frames, count):
    return np.unique(np.linspace(0, num_frames - 1, max(1, min(int(count), num_frames))).round().astype(int))


def _roll_sensitivity(images):
    """RMS image change per degree of in-plane rotation about the centre, of images [B, S, S, 3]."""
    s = images.shape[1]
    gy, gx = np.gradient(np.asarray(images, np.float64), axis=(1, 2))
    yy, xx = np.mgrid[0:s, 0:s] - (s - 1) / 2.0
    # d/dθ of I(R_θ p) at θ = 0: ∇I · (-y, x), per radian
    change = (gx * (-yy)[None, :, :, None] + gy * xx[None, :, :, None]) * (np.pi / 180.0)
    return float(np.sqrt(np.mean(change ** 2)))


def sensitivities(enc, g, flow, frames, target=None):
    """(s [3 + K], mse or None): each column's RMS image change per unit at the given frame indices, and the
    re-synthesis MSE against `target` (uint8 [len(frames), S, S, 3], aligned frames) when given."""
    idx = np.asarray(frames)
    flat_index = flat_indices(enc.channels, g.config)
    yaw, pitch = jnp.asarray(enc.pose_deg[idx, 0]), jnp.asarray(enc.pose_deg[idx, 1])
    offsets = jnp.asarray(enc.offsets[idx])
    args = (jnp.asarray(enc.id_latent), jnp.asarray(enc.cond_src), jnp.asarray(enc.offset_scale))

    @jax.jit
    def jvp_rms(g, flow, yaw, pitch, offsets, tangent, args):
        id_latent, cond, scale = args
        f = lambda y, p, o: decode(g, flow, id_latent, cond, y, p, o, flat_index, enc.rk4_steps, scale)
        img, d = jax.jvp(f, (yaw, pitch, offsets), tangent)
        return img, jnp.sqrt(jnp.mean(d ** 2))

    n, k = len(idx), len(enc.channels)
    zeros = (jnp.zeros(n), jnp.zeros(n), jnp.zeros((n, k)))
    out = np.zeros(3 + k)
    img, out[0] = jvp_rms(g, flow, yaw, pitch, offsets, (jnp.ones(n),) + zeros[1:], args)
    _, out[1] = jvp_rms(g, flow, yaw, pitch, offsets, (zeros[0], jnp.ones(n), zeros[2]), args)
    for j in range(k):
        _, out[3 + j] = jvp_rms(g, flow, yaw, pitch, offsets, zeros[:2] + (zeros[2].at[:, j].set(1.0),), args)
    img = np.asarray(img)
    out[2] = _roll_sensitivity(img)
    mse = None
    if target is not None:
        ref = np.asarray(target, np.float32) / 127.5 - 1.0
        if ref.shape[1] != img.shape[1]:
            from stylejax import losses
            img = np.asarray(losses.resize(jnp.asarray(img), ref.shape[1]))
        mse = float(np.median(np.mean((img - ref) ** 2, axis=(1, 2, 3))))
    return out, mse


def choose_steps(sens, mse, psnr_loss_db, max_step_deg=0.5, max_step_std=0.25):
    """Quantisation steps [3 + K] that add at most `psnr_loss_db` to a re-synthesis of error `mse` (see above),
    capped at `max_step_deg` for the pose and `max_step_std` for the offsets."""
    sens = np.asarray(sens, np.float64)
    budget = float(mse) * (10 ** (float(psnr_loss_db) / 10) - 1)
    with np.errstate(divide="ignore"):
        step = np.sqrt(12 * budget / len(sens)) / sens
    cap = np.full(len(sens), float(max_step_std))
    cap[:3] = float(max_step_deg)
    return np.minimum(np.nan_to_num(step, nan=np.inf, posinf=np.inf), cap).astype(np.float32)


def compact(enc, g, flow, aligned, config):
    """`enc` with the quantisation steps of the compact coding (`config`: the `coding` section), chosen from
    its sensitivities at `config.sample_frames` frames and its re-synthesis error against `aligned` (uint8
    [T, S, S, 3]); and a record of how they were chosen."""
    import dataclasses

    idx = sample_frames(enc.num_frames, config.sample_frames)
    sens, mse = sensitivities(enc, g, flow, idx, np.asarray(aligned[idx]) if aligned is not None else None)
    mse = mse if mse else 4.0 / 10 ** (float(config.reference_psnr_db) / 10)  # a perfect fit: assume this PSNR
    step = choose_steps(sens, mse, config.psnr_loss_db, config.max_step_deg, config.max_step_std)
    record = {"coding": "delta-zstd", "psnr_loss_db": float(config.psnr_loss_db), "mse": mse,
              "sample_frames": [int(i) for i in idx], "key_interval": int(config.key_interval)}
    return dataclasses.replace(enc, motion_step=step, key_interval=int(config.key_interval)), record
