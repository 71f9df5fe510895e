"""Image quality metrics per frame: batch axis first, images [B, H, W, C] in [-1, 1] (data_range 2)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al. 2004


def _check(pred, target):
    pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred and target must be [B, H, W, C] of one shape, got {pred.shape} and {target.shape}")
    return pred, target


def psnr(pred, target, data_range: float = 2.0) -> jnp.ndarray:
    """Peak signal-to-noise ratio [B] in dB from each frame's MSE; identical frames give +inf."""
    pred, target = _check(pred, target)
    mse = jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range ** 2 / mse)  # mse = 0 -> log10(inf) = inf


def _gaussian_window() -> np.ndarray:
    x = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
    w = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur_valid(x: jnp.ndarray) -> jnp.ndarray:
    """Separable Gaussian window over H and W of [B, H, W, C], each channel alone, valid region only."""
    c = x.shape[-1]
    w = jnp.asarray(_gaussian_window())
    conv = lambda v, kernel: jax.lax.conv_general_dilated(
        v, jnp.tile(kernel, (1, 1, 1, c)), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c, precision=jax.lax.Precision.HIGHEST)
    return conv(conv(x, w.reshape(-1, 1, 1, 1)), w.reshape(1, -1, 1, 1))


def ssim(pred, target, data_range: float = 2.0) -> jnp.ndarray:
    """Structural similarity [B] (Wang et al. 2004): 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03,
    population (not sample) variances, each channel alone over the valid region (no padding), then the
    mean over positions and channels."""
    pred, target = _check(pred, target)
    if min(pred.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {pred.shape[1:3]}")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    n = pred.shape[-1]
    # One blur pass for all five local statistics.
    stats = _blur_valid(jnp.concatenate([pred, target, pred * pred, target * target, pred * target], -1))
    mu_p, mu_t, e_pp, e_tt, e_pt = (stats[..., k * n:(k + 1) * n] for k in range(5))
    var_p, var_t, cov = e_pp - mu_p ** 2, e_tt - mu_t ** 2, e_pt - mu_p * mu_t
    num = (2 * mu_p * mu_t + c1) * (2 * cov + c2)
    den = (mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2)
    return jnp.mean(num / den, axis=(1, 2, 3))


# ------------------------------------------------------------------------------------------------ video metrics
# Per frame of a re-synthesis g against its input o (both aligned crops, frames the batch axis), streamed chunk by
# chunk so memory is bounded by the chunk: PSNR, SSIM, LPIPS; identity (ArcFace cosine with an ArcFace network;
# always dlib's face-recognition embedding distance); dlib 68-point landmark distance in px at 1024; flicker as
# TecoGAN's tLP = 100·|LPIPS(g[t-1], g[t]) - LPIPS(o[t-1], o[t])| and its landmark analogue tLM.

LANDMARK_SCALE_PX = 1024  # landmark distances are reported in pixels of a 1024² crop


def temporal_difference(gen_change, orig_change, scale=1.0):
    """scale·|change of the re-synthesis - change of the input| per frame pair [T-1] (tLP with scale 100 and
    LPIPS between consecutive frames; tLM with landmark motion)."""
    return scale * np.abs(np.asarray(gen_change, np.float64) - np.asarray(orig_change, np.float64))


def landmark_distance(a, b):
    """Mean Euclidean distance [T] between landmark sets [T, 68, 2] (NaN rows stay NaN)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1).mean(axis=-1)


COLUMNS = ("frame", "psnr_db", "ssim", "lpips", "arcface_cos", "dlib_id_distance", "landmark_px", "tlp", "tlm_px")


class FrameMetrics:
    """Streams chunks of (re-synthesis, input) aligned crops and keeps one row of COLUMNS per frame.

        fm = FrameMetrics(lpips_net, lpips_size=256, arcface=None, faces=True)
        for gen, orig in chunks:          # [B, S, S, 3] each (uint8, or float in [-1, 1]), frames in order
            fm.add(gen, orig)
        fm.columns()                      # {column: [T]} (NaN where a metric does not apply)
        fm.summary()                      # means and extremes

    `faces`: dlib landmarks and identity embedding per frame (about 1 s a frame at 1024 on a CPU core); they are
    NaN in frames where dlib's detector finds no face in the input (e.g. the demo's random-weight textures)."""

    def __init__(self, lpips_net, lpips_size=256, arcface=None, faces=True):
        import jax
        from stylejax import losses

        self.lpips_net, self.arcface, self.faces = lpips_net, arcface, faces
        self._scores = jax.jit(lambda a, b: (psnr(a, b), ssim(a, b)))
        self._lpips = jax.jit(lambda net, a, b: net(losses.resize(a, lpips_size), losses.resize(b, lpips_size)))
        self._id = jax.jit(lambda af, a, b: 1.0 - af.id_loss_per_sample(a, b))
        self._rows = {k: [] for k in COLUMNS}
        self._prev = None  # (gen, orig, gen landmarks, orig landmarks) of the last frame seen
        self._count = 0

    def add(self, gen, orig):
        import jax.numpy as jnp

        gen, orig = np.asarray(gen), np.asarray(orig)
        if gen.shape != orig.shape or gen.ndim != 4:
            raise ValueError(f"gen and orig must be [B, S, S, 3] of one shape, got {gen.shape} and {orig.shape}")
        n, size = len(gen), gen.shape[1]
        # uint8 [0, 255] or float about [-1, 1] (a re-synthesis before rounding); dlib sees uint8
        g, o = (jnp.asarray(x, jnp.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else jnp.asarray(x, jnp.float32)
                for x in (gen, orig))
        to_uint8 = lambda x: x if x.dtype == np.uint8 else np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
        gen, orig = to_uint8(gen), to_uint8(orig)
        p, s = self._scores(g, o)
        lp = self._lpips(self.lpips_net, g, o)
        # consecutive pairs, the previous chunk's last frame first
        gp = g if self._prev is None else jnp.concatenate([jnp.asarray(self._prev[0])[None], g])
        op = o if self._prev is None else jnp.concatenate([jnp.asarray(self._prev[1])[None], o])
        change_g = np.asarray(self._lpips(self.lpips_net, gp[:-1], gp[1:])) if len(gp) > 1 else np.zeros(0)
        change_o = np.asarray(self._lpips(self.lpips_net, op[:-1], op[1:])) if len(op) > 1 else np.zeros(0)
        tlp = temporal_difference(change_g, change_o, 100.0)
        nan = np.full(n, np.nan)
        start = self._count
        cos = np.asarray(self._id(self.arcface, g, o)) if self.arcface is not None else nan
        ident, lm_dist, tlm = nan.copy(), nan.copy(), nan.copy()  # without `faces`
        lm_g, lm_o = np.full((n, 68, 2), np.nan), np.full((n, 68, 2), np.nan)
        if self.faces:
            from stylejax.align.landmarks import crop_landmarks, face_descriptor, face_in_crop

            scale = LANDMARK_SCALE_PX / size
            for i in range(n):
                if not face_in_crop(orig[i]):
                    continue
                lm_o[i], lm_g[i] = crop_landmarks(orig[i]), crop_landmarks(gen[i])
                ident[i] = np.linalg.norm(face_descriptor(gen[i], lm_g[i]) - face_descriptor(orig[i], lm_o[i]))
            lm_dist = landmark_distance(lm_g, lm_o) * scale
            prev_g = lm_g if self._prev is None else np.concatenate([self._prev[2][None], lm_g])
            prev_o = lm_o if self._prev is None else np.concatenate([self._prev[3][None], lm_o])
            tlm = temporal_difference(landmark_distance(prev_g[:-1], prev_g[1:]),
                                      landmark_distance(prev_o[:-1], prev_o[1:]), scale)
        elif self._prev is None:
            tlm = nan[1:]
        if self._prev is None:  # the first frame has no predecessor
            tlp, tlm = np.concatenate([[np.nan], tlp]), np.concatenate([[np.nan], tlm])
        for key, col in (("frame", np.arange(start, start + n)), ("psnr_db", p), ("ssim", s), ("lpips", lp),
                         ("arcface_cos", cos), ("dlib_id_distance", ident), ("landmark_px", lm_dist),
                         ("tlp", tlp), ("tlm_px", tlm)):
            self._rows[key].append(np.asarray(col, np.float64).reshape(n))
        self._prev = (np.asarray(g[-1]), np.asarray(o[-1]), lm_g[-1], lm_o[-1])
        self._count += n

    def columns(self):
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in self._rows.items()}

    def summary(self):
        return summarise(self.columns())


def _finite_mean(x):
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if len(x) else None


def summarise(cols):
    """Means over frames (over the frames where a metric applies), the worst PSNR, and how many frames had a
    face; None where no frame has a value."""
    psnr_col = np.asarray(cols["psnr_db"], np.float64)
    finite = psnr_col[np.isfinite(psnr_col)]
    out = {"frames": int(len(psnr_col)),
           "psnr_db": float(np.mean(finite)) if len(finite) else (float("inf") if len(psnr_col) else None),
           "psnr_db_min": float(np.min(psnr_col)) if len(psnr_col) else None}
    for key in COLUMNS[2:]:
        out[key] = _finite_mean(cols[key])
    lm = np.asarray(cols["landmark_px"], np.float64)
    out["face_frames"] = int(np.isfinite(lm).sum())
    out["landmark_px_max"] = float(np.nanmax(lm)) if out["face_frames"] else None
    ident = np.asarray(cols["dlib_id_distance"], np.float64)
    out["dlib_id_distance_max"] = float(np.nanmax(ident)) if out["face_frames"] else None
    return out
