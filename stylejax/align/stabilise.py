"""Temporal stabilisation of the per-frame FFHQ crop frame (centre c, half-axis x) of a video.

The default, 'poly', fits a quadratic to each frame's neighbourhood (tricube weights, a LOESS-style local
polynomial fit) of four trajectories: the centre's x and y, log |x| (scale) and the unwrapped angle of x
(roll). A local quadratic passes genuine head motion (constant velocity and acceleration) through without
lag, while the landmark jitter, which changes from frame to frame, is averaged out. The Gaussian that the
stage used before ('gaussian', STIT's σ 1 frame on c, 3 on x) attenuates fast real motion as much as jitter:
on a clip rolling ±14° in 2 s and scaling ±20% in 1.5 s it puts the crop ~10 px (at 1024) away from the face.

End of clip: near the first and last frames the fit uses the frames that exist (a one-sided window), so
the ends neither lag nor get pulled back towards the interior. Every output frame depends only on the
input frames within its window, which lets a streaming caller emit frame t once frame t + `reach` is known.

Methods: 'poly' (tricube-weighted local polynomial, default), 'savgol' (the same fit with equal weights,
i.e. a Savitzky–Golay filter), 'gaussian' (the stage's previous filter: `smooth` below on the
components of c and x), 'none' (per-frame values).
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from stylejax.errors import UserError

METHODS = ("poly", "savgol", "gaussian", "none")
# Windows (frames, odd) and order of the default: measured on the fixtures (docs/alignment.md), these remove ~90% of
# the corner jitter of a static face while the crop stays within ~1 px of fast-moving ones.
CENTER_WINDOW, AXES_WINDOW, ORDER = 9, 19, 2
CENTER_SIGMA, AXES_SIGMA = 1.0, 3.0


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing over time (axis 0, truncate 4 as STIT's scipy call); σ=0 returns the values as is.

    STIT pads the ends by even reflection, which pulls the first and last frames of a face that moves
    steadily back towards the interior (a lag of ~0.8σ·velocity). Here the ends are padded with the linear
    trend of the nearest 2σ+1 frames plus the reflected residuals, so steady motion passes through unchanged
    while noise at the ends is still averaged.
    """
    values = np.asarray(values, np.float64)
    if sigma <= 0 or len(values) < 3:
        return values
    from scipy.ndimage import gaussian_filter1d

    n = len(values)
    radius = int(4 * sigma + 0.5)
    pad = min(radius, n - 1)
    m = min(n, max(3, int(2 * sigma) + 1))
    t = np.arange(m, dtype=np.float64)
    flat = values.reshape(n, -1)

    def extend(block):  # block [m, k] at the start; returns [pad, k] for times -pad..-1
        slope, icpt = np.polyfit(t, block, 1)
        trend = lambda tt: icpt + np.outer(tt, slope)
        k = np.arange(pad, 0, -1)  # times -pad..-1 mirror to pad..1
        mirrored = flat_block_src[k]
        return trend(-k.astype(np.float64)) + (mirrored - trend(k.astype(np.float64)))

    flat_block_src = flat
    head = extend(flat[:m])
    flat_block_src = flat[::-1]
    tail = extend(flat[::-1][:m])[::-1]
    padded = np.concatenate([head, flat, tail], 0)
    out = gaussian_filter1d(padded, sigma, axis=0, mode="nearest", truncate=4.0)[pad:pad + n]
    return out.reshape(values.shape)


class StabiliserError(UserError, ValueError):
    """Stabiliser settings that cannot work; the message is one line naming the problem and what to do."""


@dataclasses.dataclass(frozen=True)
class Stabiliser:
    """Validated settings of one stabiliser. Windows apply to 'poly'/'savgol', σ to 'gaussian'."""

    method: str = "poly"
    center_window: int = CENTER_WINDOW
    axes_window: int = AXES_WINDOW
    order: int = ORDER
    center_sigma: float = CENTER_SIGMA
    axes_sigma: float = AXES_SIGMA

    def __post_init__(self):
        if self.method not in METHODS:
            raise StabiliserError(f"unknown stabiliser {self.method!r}; use one of {', '.join(METHODS)}")
        for name in ("center_window", "axes_window"):
            w = getattr(self, name)
            if int(w) != w or w < 1 or w % 2 == 0:
                raise StabiliserError(f"--{name.replace('_', '-')} must be an odd number of frames >= 1, got {w}")
        if int(self.order) != self.order or not 0 <= self.order <= 6:
            raise StabiliserError(f"--order must be an integer from 0 to 6, got {self.order}")
        for name in ("center_sigma", "axes_sigma"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise StabiliserError(f"--{name.replace('_', '-')} must be a finite number >= 0 (frames), got {getattr(self, name)}")

    @property
    def reach(self) -> int:
        """Frames after t that frame t's output depends on (and, symmetrically, before it)."""
        if self.method in ("poly", "savgol"):
            return max(self.center_window, self.axes_window) // 2
        if self.method == "gaussian":
            return max(int(4 * s + 0.5) for s in (self.center_sigma, self.axes_sigma))
        return 0

    def __call__(self, center: np.ndarray, x_axis: np.ndarray, valid: np.ndarray | None = None):
        return stabilise(center, x_axis, valid, **dataclasses.asdict(self))

    def as_arrays(self) -> dict:
        """The settings as transforms.npz arrays: `stabiliser` (method), `sigmas` (NaN unless gaussian),
        `windows` (centre, axes; 0 unless poly/savgol), `order` (-1 unless poly/savgol)."""
        fit, gauss = self.method in ("poly", "savgol"), self.method == "gaussian"
        return {"stabiliser": np.str_(self.method),
                "sigmas": np.array([self.center_sigma, self.axes_sigma] if gauss else [np.nan] * 2, np.float32),
                "windows": np.array([self.center_window, self.axes_window] if fit else [0, 0], np.int32),
                "order": np.int32(self.order if fit else -1)}

    def describe(self) -> str:
        if self.method in ("poly", "savgol"):
            return f"{self.method} (windows {self.center_window}/{self.axes_window} frames, order {self.order})"
        if self.method == "gaussian":
            return f"gaussian (σ {self.center_sigma:g}/{self.axes_sigma:g} frames)"
        return "none"


def make_stabiliser(method: str | Stabiliser | None = None, *, center_window: int | None = None,
                    axes_window: int | None = None, order: int | None = None, center_sigma: float | None = None,
                    axes_sigma: float | None = None) -> Stabiliser:
    """Settings from options where None means 'not given'. A σ without a method selects 'gaussian' (how the
    stage was called before it had other methods); options that do not apply to the method are an error."""
    sigmas = {"center_sigma": center_sigma, "axes_sigma": axes_sigma}
    windows = {"center_window": center_window, "axes_window": axes_window, "order": order}
    if isinstance(method, Stabiliser):
        base, method = method, method.method
    else:
        if method is None:
            method = "gaussian" if any(v is not None for v in sigmas.values()) else "poly"
        base = Stabiliser(method)
    given = {k: v for k, v in {**sigmas, **windows}.items() if v is not None}
    wrong = [k for k in given if (k in sigmas) != (method == "gaussian")]
    if wrong:
        flags = " and ".join("--" + k.replace("_", "-") for k in wrong)
        fits = "gaussian" if wrong[0] in sigmas else "poly or savgol"
        raise StabiliserError(f"{flags} {'applies' if len(wrong) == 1 else 'apply'} only to --stabiliser {fits}, "
                              f"not {method}; drop {'it' if len(wrong) == 1 else 'them'} or change --stabiliser")
    return dataclasses.replace(base, **given)


def stabilise(center: np.ndarray, x_axis: np.ndarray, valid: np.ndarray | None = None, *, method: str = "poly",
              center_window: int = CENTER_WINDOW, axes_window: int = AXES_WINDOW, order: int = ORDER,
              center_sigma: float = CENTER_SIGMA, axes_sigma: float = AXES_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Stabilised crop frames: (center [T,2], x_axis [T,2]) float64 from per-frame ones.

    Frames where `valid` is False are first replaced by linear interpolation of c and x between the nearest
    valid frames (held at the ends). 'poly'/'savgol' smooth c with a `center_window`-frame local polynomial
    fit and log|x| and the angle of x with an `axes_window`-frame one, both of degree `order` (lowered where
    the clip is shorter than order + 1 frames).
    """
    settings = Stabiliser(method, center_window, axes_window, order, center_sigma, axes_sigma)
    c, x = np.array(center, np.float64), np.array(x_axis, np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or x.shape != c.shape:
        raise ValueError(f"center and x_axis must both be [T, 2], got {c.shape} and {x.shape}")
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != (len(c),) or not valid.any():
            raise ValueError(f"valid must be [T] with at least one True, got shape {valid.shape}")
        c, x = _fill(c, valid), _fill(x, valid)
    if len(c) == 0 or settings.method == "none":
        return c, x
    if settings.method == "gaussian":
        return smooth(c, center_sigma), smooth(x, axes_sigma)
    scale = np.linalg.norm(x, axis=-1)
    if not np.all(scale > 0) or not np.isfinite(c).all():
        raise ValueError("x_axis must be non-zero and all values finite")
    kernel = "tricube" if settings.method == "poly" else "box"
    angle = np.unwrap(np.arctan2(x[:, 1], x[:, 0]))
    c = local_polynomial(c, center_window // 2, order, kernel)
    log_scale, angle = local_polynomial(np.stack([np.log(scale), angle], -1), axes_window // 2, order, kernel).T
    scale = np.exp(log_scale)
    return c, np.stack([scale * np.cos(angle), scale * np.sin(angle)], -1)


def local_polynomial(values: np.ndarray, half_width: int, order: int, kernel: str = "tricube") -> np.ndarray:
    """Each frame t of `values` [T, ...] replaced by the value at t of the weighted least-squares polynomial
    of degree `order` through frames t-h..t+h (h = half_width, clipped at the clip's ends).

    Weights: 'tricube' (1 - |k/(h+1)|³)³ for offset k, or 'box' (equal). The result at t is the same whatever
    lies outside t-h..t+h, bit for bit (each output is the same sequence of multiply-adds), so a streaming
    caller can compute it from any slice that contains that window.
    """
    values = np.asarray(values, np.float64)
    n, h = len(values), int(half_width)
    out = np.empty_like(values)
    if n == 0:
        return out
    # interior frames, vectorised over time: out[t] = sum_j w[j] values[t - h + j]
    if n > 2 * h:
        weights = _fit_weights(h, h, h, order, kernel)
        acc = weights[0] * values[0:n - 2 * h]
        for j in range(1, 2 * h + 1):
            acc = acc + weights[j] * values[j:n - 2 * h + j]
        out[h:n - h] = acc
    for t in [t for t in range(n) if t < h or t >= n - h]:  # the ends: one-sided windows
        left, right = min(h, t), min(h, n - 1 - t)
        weights = _fit_weights(left, right, h, order, kernel)
        acc = weights[0] * values[t - left]
        for j in range(1, left + right + 1):
            acc = acc + weights[j] * values[t - left + j]
        out[t] = acc
    return out


@lru_cache(maxsize=512)
def _fit_weights(left: int, right: int, h: int, order: int, kernel: str) -> np.ndarray:
    """w such that w · v[t-left..t+right] is the value at t of the weighted polynomial fit to those frames."""
    u = np.arange(-left, right + 1, dtype=np.float64) / (h + 1)  # in (-1, 1): a well-conditioned Vandermonde
    if kernel == "tricube":
        w = (1 - np.abs(u) ** 3) ** 3
    elif kernel == "box":
        w = np.ones_like(u)
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    degree = min(order, len(u) - 1)
    basis = np.vander(u, degree + 1, increasing=True)  # [k, degree+1]
    weighted = basis.T * w
    # value at u=0 is the constant coefficient: row 0 of (Bᵀ W B)⁻¹ Bᵀ W
    out = np.linalg.solve(weighted @ basis, weighted)[0]
    out.flags.writeable = False
    return out


def _fill(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear interpolation over time of the frames where `valid` is False (held constant at the ends)."""
    idx, t = np.flatnonzero(valid), np.arange(len(values))
    return np.stack([np.interp(t, idx, values[idx, k]) for k in range(values.shape[1])], -1)
