"""FFHQ crop geometry from 68 landmarks: crop frame (centre, axes), quads, roll, temporal smoothing.

Conventions (all coordinates are original-frame pixels with pixel centres at integers, x right, y down):
* crop frame: centre `c`, horizontal half-axis `x`, vertical half-axis `y = (-x_y, x_x)` (x turned 90° so it
  points down the face). `quad = [c-x-y, c-x+y, c+x+y, c+x-y]` = top-left, bottom-left, bottom-right,
  top-right corners of the crop, as in the FFHQ script. Corner k sits at the outer edge of the crop's corner
  pixel (the FFHQ script's `quad + 0.5` passed to PIL), so the crop pixel (col j, row i) samples the frame
  at `TL + (TR-TL)·(j+0.5)/S + (BL-TL)·(i+0.5)/S`.
* `roll_deg = degrees(atan2(x_y, x_x))`: the angle of the eye line against the image horizontal. Positive
  = clockwise on screen (the line falls towards the image's right side: the head leans towards the
  viewer's right). Level eyes give 0.
"""
from __future__ import annotations

import numpy as np

from stylejax.align.stabilise import Stabiliser, make_stabiliser, smooth  # noqa: F401 (smooth: re-export)
from stylejax.errors import UserError


class AlignError(UserError, ValueError):
    """Alignment cannot proceed; the message is one line naming the problem and what to do."""


def eye_distance(landmarks: np.ndarray) -> np.ndarray:
    """|eye_right - eye_left| (px) for landmarks [..., 68, 2]."""
    lm = np.asarray(landmarks, np.float64)
    return np.linalg.norm(lm[..., 42:48, :].mean(-2) - lm[..., 36:42, :].mean(-2), axis=-1)


def crop_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FFHQ crop centre c [..., 2] and half-axis x [..., 2] from dlib-68 landmarks [..., 68, 2]."""
    lm = np.asarray(landmarks, np.float64)
    eye_left = lm[..., 36:42, :].mean(-2)
    eye_right = lm[..., 42:48, :].mean(-2)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[..., 48, :] + lm[..., 54, :]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # x = eye_to_eye - R(eye_to_mouth), R(v) = (-v_y, v_x): the horizontal axis from both eye and mouth cues.
    x = eye_to_eye - np.stack([-eye_to_mouth[..., 1], eye_to_mouth[..., 0]], -1)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    scale = np.maximum(np.linalg.norm(eye_to_eye, axis=-1) * 2.0, np.linalg.norm(eye_to_mouth, axis=-1) * 1.8)
    c = eye_avg + 0.1 * eye_to_mouth
    return c, x * scale[..., None]


def y_axis(x: np.ndarray) -> np.ndarray:
    return np.stack([-x[..., 1], x[..., 0]], -1)


def quad_from_frame(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Corners [..., 4, 2] in the order TL, BL, BR, TR."""
    y = y_axis(x)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y], -2)


def roll_degrees(x: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(x[..., 1], x[..., 0]))


def level_axis(x: np.ndarray) -> np.ndarray:
    """The same-length axis turned to the image horizontal (roll removed from the crop)."""
    return np.stack([np.linalg.norm(x, axis=-1), np.zeros(x.shape[:-1])], -1)


def jitter(quads: np.ndarray) -> float:
    """Mean frame-to-frame second difference |q[t+1] - 2 q[t] + q[t-1]| of the corners (px)."""
    q = np.asarray(quads, np.float64)
    if len(q) < 3:
        return 0.0
    return float(np.linalg.norm(q[2:] - 2 * q[1:-1] + q[:-2], axis=-1).mean())


def quad_affine(quad: np.ndarray, size: int) -> np.ndarray:
    """2×3 matrix mapping crop pixel (col, row) of a size² crop to frame pixel coordinates."""
    tl, bl, _, tr = np.asarray(quad, np.float64)
    ex, ey = (tr - tl) / size, (bl - tl) / size
    t = tl + 0.5 * (ex + ey)
    return np.array([[ex[0], ey[0], t[0]], [ex[1], ey[1], t[1]]])


def _gap_runs(valid: np.ndarray):
    """(start, length) of every run of False in `valid`."""
    runs, start = [], None
    for i, v in enumerate(list(valid) + [True]):
        if not v and start is None:
            start = i
        elif v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def fill_gaps(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear interpolation over time of the frames where `valid` is False (held constant at the ends)."""
    values = np.asarray(values, np.float64)
    idx = np.flatnonzero(valid)
    flat = values.reshape(len(values), -1)
    out = np.empty_like(flat)
    for k in range(flat.shape[1]):
        out[:, k] = np.interp(np.arange(len(values)), idx, flat[idx, k])
    return out.reshape(values.shape)


def transforms_from_landmarks(landmarks: np.ndarray, valid: np.ndarray, center_sigma: float | None = None,
                              axes_sigma: float | None = None, keep_roll: bool = False,
                              stabiliser: str | Stabiliser | None = None) -> dict:
    """Per-frame crop quads and roll from landmarks [T, 68, 2] (invalid frames are interpolated first).

    `stabiliser`: a `stabilise.Stabiliser` or method name (default 'poly'); giving only σ values selects the
    Gaussian with those σ (0, 0: per-frame quads), as before the stage had other stabilisers.

    Returns `quad` [T,4,2] (the crop to render: level-eyed, or keeping the roll), `roll_deg` [T] (of the
    smoothed axis), `center` [T,2], `x_axis` [T,2] (smoothed, with roll).
    """
    valid = np.asarray(valid, bool)
    c, x = np.zeros((len(valid), 2)), np.zeros((len(valid), 2))
    c[valid], x[valid] = crop_frame(np.asarray(landmarks)[valid])  # missing frames may hold garbage
    c, x = fill_gaps(c, valid), fill_gaps(x, valid)
    # smooth c and x over time; y is derived from x, so the crop stays square.
    c, x = make_stabiliser(stabiliser, center_sigma=center_sigma, axes_sigma=axes_sigma)(c, x, valid)
    roll = roll_degrees(x)
    render_x = level_axis(x) if keep_roll else x
    return {"quad": quad_from_frame(c, render_x), "roll_deg": roll, "center": c, "x_axis": x}
