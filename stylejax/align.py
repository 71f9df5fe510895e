"""Stage 1: FFHQ face alignment of a video, temporal stabilisation, roll, paste-back.

    python -m stylejax.align --video IN --out DIR [--size 1024] [--stabiliser poly|savgol|gaussian|none]
                             [--center-window 9 --axes-window 19 --order 2] [--center-sigma 1 --axes-sigma 3]
                             [--keep-roll] [--preview] [--max-gap 15]
    python -m stylejax.align paste --video ORIG --aligned DIR_OR_FRAMES --transforms DIR/transforms.npz --out OUT.mp4

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

import argparse
import os
import shutil
import sys
from typing import Callable

import numpy as np

from stylejax.landmarks import LandmarkError, log_stderr
from stylejax.video import VideoError, VideoWriter, iter_frames, load_frames, probe
from stylejax.errors import UserError
from stylejax.stabilise import METHODS, Stabiliser, StabiliserError, make_stabiliser


class AlignError(UserError, ValueError):
    """Alignment cannot proceed; the message is one line naming the problem and what to do."""


# --------------------------------------------------------------------------------------------------------
# FFHQ geometry
# --------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------------

_INTERP = {"cubic": 2, "lanczos": 4, "linear": 1}  # cv2.INTER_* codes
# Shrinking by more than this first area-averages the source down to crop resolution (no aliasing).
SHRINK_PREFILTER = 1.25


def _prefilter(src: np.ndarray, affine: np.ndarray, out_w: int, out_h: int):
    """If `affine` (dst pixel -> src pixel) shrinks by more than SHRINK_PREFILTER, crop the source to the
    needed window (reflect-padded) and area-resize it to about the output's sampling rate; returns the new
    (src, affine)."""
    import cv2

    step = max(np.hypot(affine[0, 0], affine[1, 0]), np.hypot(affine[0, 1], affine[1, 1]))
    if step <= SHRINK_PREFILTER:
        return src, affine
    corners = np.array([[0, 0, 1], [out_w, 0, 1], [0, out_h, 1], [out_w, out_h, 1]], np.float64) - [0.5, 0.5, 0]
    pts = corners @ affine.T
    margin = 4 * step + 4
    x0, y0 = np.floor(pts.min(0) - margin).astype(int)
    x1, y1 = np.ceil(pts.max(0) + margin).astype(int)
    h, w = src.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:  # window entirely outside: keep the plain warp (reflect border)
        return src, affine
    window = src[cy0:cy1, cx0:cx1]
    pads = (cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1)
    if any(pads):
        window = cv2.copyMakeBorder(window, *pads, cv2.BORDER_REFLECT_101)
    wh, ww = window.shape[:2]
    nw, nh = max(1, int(round(ww / step))), max(1, int(round(wh / step))),
    small = cv2.resize(window, (nw, nh), interpolation=cv2.INTER_AREA)
    fx, fy = ww / nw, wh / nh
    # src pixel p -> window pixel p - (x0, y0) -> small pixel (q + 0.5) / f - 0.5
    to_small = np.array([[1 / fx, 0, (-x0 + 0.5) / fx - 0.5], [0, 1 / fy, (-y0 + 0.5) / fy - 0.5], [0, 0, 1]])
    return small, (to_small @ np.vstack([affine, [0, 0, 1]]))[:2]


def render_crop(frame: np.ndarray, quad: np.ndarray, size: int, resample: str = "cubic") -> np.ndarray:
    """The size² crop of `frame` inside `quad`, reflect-padded where the quad leaves the frame."""
    import cv2

    src, affine = _prefilter(frame, quad_affine(quad, size), size, size)
    return cv2.warpAffine(src, affine, (size, size), flags=_INTERP[resample] | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def face_mask(size: int, kind: str = "ellipse", feather: float = 0.04) -> np.ndarray:
    """Soft float32 mask [size, size] in aligned-crop coordinates, 1 on the face, 0 outside.

    'ellipse' covers an FFHQ-aligned face from forehead to chin (centre (0.5, 0.55)·S, semi-axes
    (0.34, 0.42)·S); 'square' is the whole crop inset by 2·feather. `feather` is the Gaussian blur σ as a
    fraction of S; the hard shape is shrunk by 2σ first so the mask is ~0 at the shape's edge.
    """
    import cv2

    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    inset = 2 * feather
    if kind == "ellipse":
        hard = ((xx - 0.5) / (0.34 - inset)) ** 2 + ((yy - 0.55) / (0.42 - inset)) ** 2 <= 1
    elif kind == "square":
        hard = (np.abs(xx - 0.5) <= 0.5 - 2 * inset) & (np.abs(yy - 0.5) <= 0.5 - 2 * inset)
    else:
        raise AlignError(f"unknown mask kind {kind!r}; use 'ellipse' or 'square'")
    mask = hard.astype(np.float32)
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), feather * size)
    return mask


def paste_back(frame: np.ndarray, crop: np.ndarray, quad: np.ndarray, mask: np.ndarray | None = None,
               resample: str = "cubic", return_mask: bool = False):
    """Composite the aligned `crop` [S,S,3] into `frame` through the inverse of the crop's quad transform,
    blended with the feathered `mask` (default `face_mask(S)`); returns the new uint8 frame."""
    import cv2

    size = crop.shape[0]
    if mask is None:
        mask = face_mask(size)
    h, w = frame.shape[:2]
    to_frame = np.vstack([quad_affine(quad, size), [0, 0, 1]])
    to_crop = np.linalg.inv(to_frame)[:2]  # frame pixel -> crop pixel
    # Only the quad's bounding box of the frame changes.
    q = np.asarray(quad)
    x0, y0 = np.clip(np.floor(q.min(0)).astype(int) - 2, 0, [w, h])
    x1, y1 = np.clip(np.ceil(q.max(0)).astype(int) + 2, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return (frame.copy(), np.zeros((h, w), np.float32)) if return_mask else frame.copy()
    to_crop_roi = (np.vstack([to_crop, [0, 0, 1]]) @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]]))[:2]
    stack = np.concatenate([crop.astype(np.float32), mask[..., None].astype(np.float32)], -1)
    src, affine = _prefilter(stack, to_crop_roi, x1 - x0, y1 - y0)
    warped = cv2.warpAffine(src, affine, (x1 - x0, y1 - y0), flags=_INTERP[resample] | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = np.clip(warped[..., 3:], 0, 1)
    out = frame.copy()
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(np.rint(roi * (1 - alpha) + warped[..., :3] * alpha), 0, 255).astype(np.uint8)
    if return_mask:
        full = np.zeros((h, w), np.float32)
        full[y0:y1, x0:x1] = alpha[..., 0]
        return out, full
    return out


# --------------------------------------------------------------------------------------------------------
# Video pipeline
# --------------------------------------------------------------------------------------------------------

def _landmark_stream(video: str, info, max_frames: int | None, max_gap: int, min_eye_dist: float,
                     detect_long_side: int, refine: int, log: Callable[[str], None]):
    """Yield (t, frame, landmarks [68,2] or None) for each frame, failing fast (AlignError) as soon as the
    face has been missing for more than `max_gap` frames or is too small to align."""
    from stylejax.landmarks import FaceTracker

    tracker = FaceTracker(detect_long_side=detect_long_side, refine=refine, log=log)
    frames = iter_frames(video, info)
    last_valid, seen_face = -1, False
    try:
        for t, frame in enumerate(frames):
            if max_frames is not None and t >= max_frames:
                break
            lm = tracker(frame)
            if lm is not None:
                eyes = float(eye_distance(lm))
                if eyes < min_eye_dist:
                    raise AlignError(f"face too small to align in {video}: eye-to-eye distance {eyes:.1f} px "
                                     f"in frame {t} (need >= {min_eye_dist:g} px; use a higher-resolution video)")
                last_valid, seen_face = t, True
            elif t - last_valid > max_gap:
                if not seen_face:
                    raise AlignError(f"no face found in {video}: none in its first {t + 1} frames "
                                     f"(more than --max-gap {max_gap})")
                raise AlignError(f"face lost in {video} for more than --max-gap {max_gap} frames "
                                 f"(missing from frame {last_valid + 1})")
            yield t, frame, lm
    finally:
        frames.close()
    if not seen_face:
        raise AlignError(f"no face found in {video}")


def track_landmarks(video: str, max_frames: int | None = None, max_gap: int = 15, min_eye_dist: float = 32.0,
                    detect_long_side: int = 480, refine: int = 1, log: Callable[[str], None] = log_stderr):
    """Landmarks [T,68,2] (gaps interpolated), valid [T], and the video's `VideoInfo` (no rendering)."""
    info = probe(video)
    landmarks, valid = [], []
    for _, _, lm in _landmark_stream(video, info, max_frames, max_gap, min_eye_dist, detect_long_side, refine, log):
        landmarks.append(lm if lm is not None else np.zeros((68, 2)))
        valid.append(lm is not None)
    landmarks, valid = np.stack(landmarks), np.asarray(valid)
    return fill_gaps(landmarks, valid), valid, info


def _draw_preview(frame: np.ndarray, landmarks: np.ndarray, quad: np.ndarray, valid: bool,
                  level_quad: np.ndarray | None) -> np.ndarray:
    import cv2

    img = np.ascontiguousarray(frame.copy())
    thick = max(1, int(round(max(frame.shape[:2]) / 500)))
    colour = (0, 255, 0) if valid else (255, 160, 0)  # orange: interpolated frame
    if level_quad is not None:
        cv2.polylines(img, [np.rint(level_quad).astype(np.int32)], True, (120, 120, 255), thick, cv2.LINE_AA)
    cv2.polylines(img, [np.rint(quad).astype(np.int32)], True, colour, thick, cv2.LINE_AA)
    cv2.line(img, tuple(np.rint(quad[0]).astype(int)), tuple(np.rint(quad[3]).astype(int)), (255, 0, 0),
             thick + 1, cv2.LINE_AA)  # top edge in red: shows the crop's orientation
    for p in landmarks:
        cv2.circle(img, tuple(np.rint(p).astype(int)), thick + 1, colour, -1, cv2.LINE_AA)
    return img


def align_video(video: str, out_dir: str, size: int = 1024, center_sigma: float | None = None,
                axes_sigma: float | None = None, keep_roll: bool = False, preview: bool = False, max_gap: int = 15,
                min_eye_dist: float = 32.0, max_frames: int | None = None, resample: str = "cubic",
                overwrite: bool = False, detect_long_side: int = 480, refine: int = 1,
                log: Callable[[str], None] = log_stderr, stabiliser: str | Stabiliser | None = None) -> dict:
    """Align every frame of `video` into `out_dir` (frames.npy, transforms.npz, preview.mp4 if asked).

    One decoding pass: frame t is rendered as soon as the (smoothed) transform of t is final, i.e. once a
    face has been seen at or after t + the stabiliser's reach; the crops of frames waiting for that
    are the only frames held in memory. Rendering runs on a worker thread (OpenCV releases the GIL) while
    dlib tracks the next frames. Everything is written to a temporary sibling directory that is renamed to
    `out_dir` at the end, so a failure never leaves a complete-looking output. Returns the transforms dict
    (also with `timing_s`).
    """
    import collections
    import time
    from concurrent.futures import ThreadPoolExecutor

    from stylejax.video import FrameFileWriter

    video, out_dir = os.path.abspath(video), os.path.abspath(out_dir.rstrip("/"))
    if size < 16 or size % 2:
        raise AlignError(f"--size must be an even number >= 16, got {size}")
    if resample not in _INTERP:
        raise AlignError(f"unknown resampler {resample!r}; use one of {sorted(_INTERP)}")
    if os.path.exists(out_dir):
        if not overwrite:
            raise AlignError(f"output {out_dir} already exists; choose another --out or pass --overwrite")
        if os.path.commonpath([video, out_dir]) == out_dir:
            raise AlignError(f"refusing to overwrite {out_dir}: it contains the input video {video}")
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise AlignError(f"cannot write {out_dir}: the parent directory {parent} does not exist")
    stab = make_stabiliser(stabiliser, center_sigma=center_sigma, axes_sigma=axes_sigma)
    info = probe(video)

    reach = stab.reach
    tmp = f"{out_dir}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    store = FrameFileWriter(os.path.join(tmp, "frames.npy"), size, size)
    writer = VideoWriter(os.path.join(tmp, "preview.mp4"), info.fps) if preview else None
    pool = ThreadPoolExecutor(max_workers=1)
    in_flight = collections.deque()
    landmarks, valid = [], []
    c_raw, x_raw = [], []  # per-frame crop frames; gaps filled as soon as the face is back
    pending = collections.deque()  # (t, frame) decoded but not yet rendered
    # wall time, and CPU time of the main (decode + dlib) thread and of the render thread
    timing = {"wall": 0.0, "main_thread_cpu": 0.0, "render_thread_cpu": 0.0}
    t_start, cpu_start = time.perf_counter(), time.thread_time()

    def emit(t, frame, quad, level):
        cpu0 = time.thread_time()
        store.write(render_crop(frame, quad, size, resample))
        if writer is not None:
            writer.write(_draw_preview(frame, landmarks[t], quad, valid[t], level))
        timing["render_thread_cpu"] += time.thread_time() - cpu0

    def submit(upto: int, final: bool):
        """Render pending frames whose transform is final given raw values up to index `upto`."""
        while pending and (final or pending[0][0] + reach <= upto):
            t, frame = pending.popleft()
            lo = max(0, t - 2 * reach)
            hi = len(c_raw) if final else upto + 1
            c, x = stab(np.asarray(c_raw[lo:hi]), np.asarray(x_raw[lo:hi]))
            c, x = c[t - lo], x[t - lo]
            quad = quad_from_frame(c, level_axis(x) if keep_roll else x)
            level = quad_from_frame(c, x) if keep_roll else None
            in_flight.append(pool.submit(emit, t, frame, quad, level))
            while len(in_flight) > 3:  # bound memory and surface render errors early
                in_flight.popleft().result()

    try:
        for t, frame, lm in _landmark_stream(video, info, max_frames, max_gap, min_eye_dist, detect_long_side,
                                             refine, log):
            valid.append(lm is not None)
            landmarks.append(lm if lm is not None else np.zeros((68, 2)))
            pending.append((t, frame))
            if lm is None:
                c_raw.append(None), x_raw.append(None)
                continue
            c, x = crop_frame(lm)
            c_raw.append(c), x_raw.append(x)
            # the face is back: fill the gap behind it (leading gap: hold the first detection)
            k = t - 1
            while k >= 0 and not valid[k]:
                k -= 1
            if k < t - 1:
                idx = list(range(k + 1, t))
                for arr, cur in ((c_raw, c), (x_raw, x), (landmarks, lm)):
                    prev = arr[k] if k >= 0 else cur
                    for i in idx:
                        w = (i - k) / (t - k) if k >= 0 else 1.0
                        arr[i] = (1 - w) * prev + w * cur
            submit(t, final=False)
        # end of video: hold the last detection over a trailing gap, then flush
        last = max(i for i, v in enumerate(valid) if v)
        for arr in (c_raw, x_raw, landmarks):
            for i in range(last + 1, len(arr)):
                arr[i] = arr[last]
        submit(len(c_raw) - 1, final=True)
        while in_flight:
            in_flight.popleft().result()
        pool.shutdown()
        timing["wall"] = time.perf_counter() - t_start
        timing["main_thread_cpu"] = time.thread_time() - cpu_start
        count = len(valid)
        landmarks_arr, valid_arr = np.stack(landmarks), np.asarray(valid)
        tf = transforms_from_landmarks(landmarks_arr, valid_arr, keep_roll=keep_roll, stabiliser=stab)
        store.close()
        if writer is not None:
            writer.close()
        if (~valid_arr).any():
            log(f"face missing in {int((~valid_arr).sum())} of {count} frames; transforms interpolated there")
        np.savez(os.path.join(tmp, "transforms.npz"), quad=tf["quad"],
                 roll_deg=tf["roll_deg"].astype(np.float32), landmarks=landmarks_arr.astype(np.float32),
                 valid=valid_arr, fps=np.float64(info.fps), frame_size=np.array(info.frame_size, np.int32),
                 size=np.int32(size), keep_roll=np.bool_(keep_roll), center=tf["center"].astype(np.float32),
                 x_axis=tf["x_axis"].astype(np.float32),
                 **stab.as_arrays())
        if os.path.exists(out_dir):
            old = f"{out_dir}.old-{os.getpid()}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        store.abort()
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tf.update(landmarks=landmarks_arr, valid=valid_arr, fps=info.fps, frame_size=info.frame_size, timing_s=timing)
    return tf


def load_transforms(path: str) -> dict:
    """transforms.npz (or a directory holding one) as a dict of arrays."""
    if os.path.isdir(path):
        path = os.path.join(path, "transforms.npz")
    if not os.path.exists(path):
        raise AlignError(f"cannot read transforms {path}: no such file")
    try:
        with np.load(path) as data:
            tf = {k: data[k] for k in data.files}
    except Exception as err:
        raise AlignError(f"cannot read transforms {path}: not a valid .npz ({err})") from None
    for key in ("quad", "frame_size"):
        if key not in tf:
            raise AlignError(f"cannot read transforms {path}: it has no '{key}' array")
    return tf


def paste_video(video: str, aligned: str, transforms: str, out: str, mask_kind: str = "ellipse",
                feather: float = 0.04, resample: str = "cubic") -> int:
    """Composite aligned frames (frames.npy / its directory / a video) back into `video`; writes `out` mp4."""
    tf = load_transforms(transforms)
    quads = tf["quad"]
    if os.path.abspath(out) == os.path.abspath(video):
        raise AlignError(f"refusing to overwrite the input video {video}; choose another --out")
    info = probe(video)
    if tuple(int(v) for v in tf["frame_size"]) != info.frame_size:
        raise AlignError(f"transforms are for {tuple(tf['frame_size'])} frames but {video} is {info.frame_size}")
    use_npy = aligned.endswith(".npy") or os.path.isdir(aligned)
    crops = iter(load_frames(aligned)) if use_npy else iter_frames(aligned)
    mask = None
    n = 0
    with VideoWriter(out, info.fps) as writer:
        frames = iter_frames(video, info)
        try:
            for t, (frame, crop) in enumerate(zip(frames, crops)):
                if t >= len(quads):
                    break
                if mask is None:
                    mask = face_mask(crop.shape[0], mask_kind, feather)
                writer.write(paste_back(frame, np.asarray(crop), quads[t], mask, resample))
                n += 1
        finally:
            frames.close()
        if n == 0:
            raise AlignError(f"nothing to paste: no aligned frames in {aligned}")
    return n


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------

def _align_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stylejax.align",
                                description="FFHQ-align the face in a video (see also: python -m stylejax.align paste -h)")
    p.add_argument("--video", required=True, help="input video (anything ffmpeg reads)")
    p.add_argument("--out", required=True, help="output directory: frames.npy, transforms.npz [, preview.mp4]")
    p.add_argument("--size", type=int, default=1024, help="aligned crop size in px (default 1024)")
    p.add_argument("--stabiliser", choices=METHODS, default=None,
                   help="temporal stabiliser of the crop: local quadratic fit with tricube weights (poly, default: "
                        "follows fast head motion), the same with equal weights (savgol), the previous Gaussian "
                        "(default when a σ is given), or none")
    p.add_argument("--center-window", type=int, default=None, help="poly/savgol window (odd, frames) for the centre (default 9)")
    p.add_argument("--axes-window", type=int, default=None, help="poly/savgol window (odd, frames) for scale and roll (default 19)")
    p.add_argument("--order", type=int, default=None, help="poly/savgol polynomial degree (default 2)")
    p.add_argument("--center-sigma", type=float, default=None, help="gaussian σ (frames) for the crop centre (default 1; 0 disables)")
    p.add_argument("--axes-sigma", type=float, default=None, help="gaussian σ (frames) for the crop axes (default 3; 0 disables)")
    p.add_argument("--keep-roll", action="store_true", help="crops keep the head's roll (default: level eyes)")
    p.add_argument("--preview", action="store_true", help="also write preview.mp4 with landmarks and crop quads")
    p.add_argument("--max-gap", type=int, default=15, help="interpolate over at most this many frames without a face")
    p.add_argument("--min-eye-dist", type=float, default=32.0, help="smallest eye-to-eye distance (px) accepted")
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames")
    p.add_argument("--resample", choices=sorted(_INTERP), default="cubic", help="crop resampler (default cubic)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--no-refine", action="store_true",
                   help="skip the upright 5-box landmark refinement: ~2x faster landmarks, ~2x noisier quads")
    return p


def _paste_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stylejax.align paste",
                                description="Paste aligned (e.g. re-rendered) crops back into the original video")
    p.add_argument("--video", required=True, help="the original video")
    p.add_argument("--aligned", required=True, help="frames.npy, a directory holding one, or a video of crops")
    p.add_argument("--transforms", required=True, help="transforms.npz written by the align step")
    p.add_argument("--out", required=True, help="output mp4")
    p.add_argument("--mask", choices=["ellipse", "square"], default="ellipse", help="face mask shape")
    p.add_argument("--feather", type=float, default=0.04, help="mask blur σ as a fraction of the crop size")
    p.add_argument("--resample", choices=sorted(_INTERP), default="cubic")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "paste":
            args = _paste_parser().parse_args(argv[1:])
            n = paste_video(args.video, args.aligned, args.transforms, args.out, args.mask, args.feather, args.resample)
            print(f"pasted {n} frames into {args.out}")
        else:
            args = _align_parser().parse_args(argv)
            stab = make_stabiliser(args.stabiliser, center_window=args.center_window, axes_window=args.axes_window,
                                   order=args.order, center_sigma=args.center_sigma, axes_sigma=args.axes_sigma)
            tf = align_video(args.video, args.out, size=args.size, stabiliser=stab, keep_roll=args.keep_roll,
                             preview=args.preview, max_gap=args.max_gap, min_eye_dist=args.min_eye_dist,
                             max_frames=args.max_frames, resample=args.resample, overwrite=args.overwrite,
                             refine=0 if args.no_refine else 1)
            print(f"aligned {len(tf['valid'])} frames ({int(tf['valid'].sum())} with a detected face) into {args.out}")
    except (AlignError, VideoError, LandmarkError, StabiliserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
