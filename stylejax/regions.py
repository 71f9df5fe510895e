"""Per-pixel loss weights on the eyes and mouth of aligned crops, from dlib-68 landmarks.

Crop geometry is the align stage's: `quad` holds the corners TL, BL, BR, TR in original-frame pixels
(pixel centres at integers), on the outer edges of the crop's corner pixels, so crop pixel (col j, row i)
samples the frame at TL + (TR-TL)·(j+0.5)/S + (BL-TL)·(i+0.5)/S. Crop coordinates here use the same
pixel-centre-at-integer convention: the quad's corners map to (-0.5, -0.5) ... (S-0.5, S-0.5).
"""
from __future__ import annotations

import numpy as np

RIGHT_EYE, LEFT_EYE, MOUTH = slice(36, 42), slice(42, 48), slice(48, 60)  # dlib-68 (subject's right/left)


def landmarks_to_crop(landmarks: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Frame-pixel landmarks [T, 68, 2] -> crop-pixel (col, row) [T, 68, 2] of the size² crops of `quad`
    [T, 4, 2]. The map is the affine one through TL, TR and BL (align's quads are squares)."""
    lm, q = np.asarray(landmarks, np.float64), np.asarray(quad, np.float64)
    tl, bl, tr = q[:, 0], q[:, 1], q[:, 3]
    # frame p = tl + [ex ey] @ (crop + 0.5), with ex, ey the frame step of one crop pixel along a row, a column
    steps = np.stack([(tr - tl) / size, (bl - tl) / size], axis=-1)  # [T, 2, 2], columns ex, ey
    rel = (lm - tl[:, None, :]).transpose(0, 2, 1)  # [T, 2, 68]
    return np.linalg.solve(steps, rel).transpose(0, 2, 1) - 0.5


def _dilated_hull(points: np.ndarray, size: int, margin_px: float) -> np.ndarray:
    """uint8 mask [size, size]: 1 within `margin_px` of the convex hull of `points` (crop px)."""
    import cv2

    hull = np.zeros((size, size), np.uint8)
    shift = 4  # fillConvexPoly takes fixed-point vertices: 4 fractional bits keep sub-pixel placement
    pts = np.rint(cv2.convexHull(points.astype(np.float32))[:, 0] * (1 << shift)).astype(np.int32)
    cv2.fillConvexPoly(hull, pts, 1, cv2.LINE_8, shift)
    if margin_px <= 0:
        return hull
    # Distance of every outside pixel to the hull: a true disc dilation, whatever the eye's aspect ratio.
    dist = cv2.distanceTransform(1 - hull, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return (dist <= margin_px).astype(np.uint8)


def region_weights(crop_landmarks: np.ndarray, size: int, eye_weight: float, mouth_weight: float,
                   feather: float, eye_margin: float = 0.3, mouth_margin: float = 0.15) -> np.ndarray:
    """Loss weights [T, size, size] float32: 1 everywhere, plus `eye_weight` on the eyes and `mouth_weight`
    on the mouth.

    Eyes: the convex hull of each eye's six landmarks grown by `eye_margin` × that eye's corner-to-corner
    width (lids and lashes, not brows). Mouth: the hull of the outer lip (48-59) grown by `mouth_margin` ×
    mouth width. Each region is then blurred with a Gaussian of σ = `feather` × size (0: hard edges), so the
    full weight holds inside a region wider than ~4σ and falls off smoothly at its edge. Frames whose
    landmarks are not finite get weight 1 everywhere.
    """
    import cv2

    lm = np.asarray(crop_landmarks, np.float64)
    out = np.ones((len(lm), size, size), np.float32)
    for t, pts in enumerate(lm):
        if not np.isfinite(pts).all():
            continue
        eyes = np.zeros((size, size), np.uint8)
        for eye in (RIGHT_EYE, LEFT_EYE):
            width = np.linalg.norm(pts[eye][3] - pts[eye][0])  # outer corner to inner corner
            eyes |= _dilated_hull(pts[eye], size, eye_margin * width)
        mouth = _dilated_hull(pts[MOUTH], size, mouth_margin * np.linalg.norm(pts[54] - pts[48]))
        regions = np.stack([eyes, mouth], -1).astype(np.float32)
        if feather > 0:
            regions = cv2.GaussianBlur(regions, (0, 0), feather * size)
        out[t] += eye_weight * regions[..., 0] + mouth_weight * regions[..., 1]
    return out
