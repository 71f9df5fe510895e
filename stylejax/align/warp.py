"""Resampling: render a crop from a frame through its quad, face masks, and paste-back."""
from __future__ import annotations

import numpy as np

from stylejax.align.geometry import AlignError, quad_affine


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
