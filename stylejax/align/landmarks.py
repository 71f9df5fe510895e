"""dlib face detection and 68-point landmarks, following one face through a video.

The model files come from the `face_recognition_models` package, located with `importlib.util.find_spec`
instead of being imported: its `__init__` imports `pkg_resources`, which current setuptools no longer ships.

Speed: the HOG detector runs on a downscaled copy of the frame (long side `detect_long_side`). Once a face
is tracked, the detector runs only on a small window around the previous face, rescaled so the face is about
`TRACK_FACE_PX` wide (a few ms), and falls back to the whole frame when the face is not found there. The
68-point predictor always runs on the full-resolution frame, inside the detection box mapped back to it.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable

import numpy as np
from stylejax.align.geometry import crop_frame
from stylejax.align.warp import _prefilter
from stylejax.errors import UserError

# dlib's HOG detector finds faces from about 80 px wide; tracking windows are rescaled to put the face here.
TRACK_FACE_PX = 100
# Refinement: the predictor re-runs on an upright copy of the face scaled so the FFHQ half-axis |x| is this
# many px, in a box placed from the landmarks (centre c + 0.2|x| down, side 1.25|x|: the mean dlib detector
# box relative to the FFHQ frame, measured on the fixtures). This removes the detector box's quantisation and
# the head's roll from what the predictor sees, so landmarks follow the face (near-)equivariantly.
REFINE_AXIS_PX = 256
REFINE_BOX = (0.2, 1.25)
REFINE_JITTER = lambda half: [(0, 0, 1)] + [(a * 0.04 * half, b * 0.04 * half, 1.0) for a, b in ((1, 1), (-1, 1), (1, -1), (-1, -1))]
# A tracked face may move this many box widths (plus the same per missed frame) between detections.
TRACK_GATE = 1.0


class LandmarkError(UserError, ValueError):
    """The landmark models cannot be found or loaded."""


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> str:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkError("the face_recognition_models package is not installed; pip install face_recognition_models")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", name)
    if not os.path.exists(path):
        raise LandmarkError(f"face_recognition_models has no {name} (looked in {path})")
    return path


_MODELS = {}


def _models():
    if not _MODELS:
        try:
            import dlib
        except ImportError:
            raise LandmarkError("dlib is not installed; pip install dlib-bin") from None
        _MODELS["detector"] = dlib.get_frontal_face_detector()
        _MODELS["predictor"] = dlib.shape_predictor(model_path())
        _MODELS["rect"] = dlib.rectangle
    return _MODELS


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    if scale == 1.0:
        return img
    h, w = img.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def detect_faces(gray: np.ndarray, long_side: int = 480) -> np.ndarray:
    """Face boxes [N, 4] (x0, y0, x1, y1) in `gray`'s pixels, found on a copy downscaled to `long_side`.

    If nothing is found there, retry at full resolution (upsampled 2× if the frame is already small), so
    small faces are still found, and then rejected with their size by the caller, rather than missed.
    """
    det = _models()["detector"]
    h, w = gray.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in det(_resize(gray, scale), 0)]
    if boxes:
        return np.asarray(boxes, np.float64) / scale
    upsample = 1 if scale == 1.0 else 0
    boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in det(gray, upsample)]
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def _center(box):
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def predict_landmarks(frame: np.ndarray, box) -> np.ndarray:
    """68 landmarks [68, 2] (x, y), float, in `frame`'s pixels, for the face in `box` (x0, y0, x1, y1)."""
    m = _models()
    rect = m["rect"](*(int(round(v)) for v in box))
    shape = m["predictor"](frame, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


def refine_landmarks(frame: np.ndarray, landmarks: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Re-run the predictor on a roll-free, scale-normalised copy of the face around `landmarks`.

    `frame` may be RGB or grayscale (the predictor works on intensity; gray is 3× cheaper to warp)."""
    import cv2

    side = int(2 * REFINE_BOX[1] * REFINE_AXIS_PX)
    for _ in range(iterations):
        c, x = crop_frame(landmarks)
        r = float(np.hypot(*x))
        k = REFINE_AXIS_PX / r
        cos, sin = x / r
        # canonical pixel q -> frame pixel p = c + (R(theta) (q - centre)) / k
        centre = side / 2
        to_frame = np.array([[cos / k, -sin / k, 0.0], [sin / k, cos / k, 0.0]])
        to_frame[:, 2] = c - to_frame[:, :2] @ [centre, centre]
        src, affine = _prefilter(frame, to_frame, side, side)
        upright = cv2.warpAffine(src, affine, (side, side), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REFLECT_101)
        bc = centre + REFINE_BOX[0] * REFINE_AXIS_PX
        half = REFINE_BOX[1] * REFINE_AXIS_PX / 2
        # Average over a few slightly shifted/scaled boxes: the predictor's answer depends on where its mean
        # shape starts, and averaging those starts cancels much of that per-frame noise.
        lm = np.mean([predict_landmarks(upright, (centre + dx - half * ds, bc + dy - half * ds,
                                                  centre + dx + half * ds, bc + dy + half * ds))
                      for dx, dy, ds in REFINE_JITTER(half)], axis=0)
        landmarks = lm @ to_frame[:, :2].T + to_frame[:, 2]
    return landmarks


class FaceTracker:
    """Per-frame 68-point landmarks of one face: the largest in the first frame that has a face, then in
    every frame the detection nearest the previous one (within a gate, so it does not jump to another face)."""

    def __init__(self, detect_long_side: int = 480, refine: int = 1, log: Callable[[str], None] = log_stderr):
        self.detect_long_side = detect_long_side
        self.refine = refine
        self.log = log
        self.box = None  # last tracked box, full-frame pixels
        self.missed = 0
        self.frame_index = -1
        self.reported_faces = False

    def _track_window(self, gray: np.ndarray):
        """Detections in a window around the previous box, in full-frame pixels."""
        x0, y0, x1, y1 = self.box
        bw = max(x1 - x0, y1 - y0, 1.0)
        cx, cy = _center(self.box)
        half = 1.0 * bw  # faces move far less than a box width between frames
        h, w = gray.shape
        wx0, wy0 = int(max(0, cx - half)), int(max(0, cy - half))
        wx1, wy1 = int(min(w, cx + half)), int(min(h, cy + half))
        if wx1 - wx0 < 16 or wy1 - wy0 < 16:
            return np.zeros((0, 4))
        scale = TRACK_FACE_PX / bw
        window = _resize(gray[wy0:wy1, wx0:wx1], scale)
        det = _models()["detector"]
        boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in det(window, 0)]
        if not boxes:
            return np.zeros((0, 4))
        return np.asarray(boxes, np.float64) / scale + np.array([wx0, wy0, wx0, wy0])

    def detect(self, gray: np.ndarray):
        """The tracked face's box (x0, y0, x1, y1) in this grayscale frame, or None if it is not found. This
        is the sequential part of tracking (each search starts from the previous box); the landmarks inside
        the box (`frame_landmarks`) depend on this frame alone, so they can be computed in parallel."""
        self.frame_index += 1
        chosen = None
        if self.box is not None:
            boxes = self._track_window(gray)
            if len(boxes) == 0:
                boxes = detect_faces(gray, self.detect_long_side)
            if len(boxes):
                dist = np.linalg.norm([_center(b) - _center(self.box) for b in boxes], axis=1)
                bw = self.box[2] - self.box[0]
                k = int(np.argmin(dist))
                if dist[k] <= TRACK_GATE * bw * (1 + self.missed):
                    chosen = boxes[k]
        else:
            boxes = detect_faces(gray, self.detect_long_side)
            if len(boxes):
                areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                k = int(np.argmax(areas))
                chosen = boxes[k]
                if len(boxes) > 1 and not self.reported_faces:
                    x0, y0, x1, y1 = chosen
                    self.log(f"{len(boxes)} faces found in frame {self.frame_index}, tracking the largest "
                             f"({x1 - x0:.0f}x{y1 - y0:.0f} px at x={x0:.0f}, y={y0:.0f})")
                    self.reported_faces = True
        if chosen is None:
            self.missed += 1
            return None
        self.box = chosen
        self.missed = 0
        return chosen

    def __call__(self, frame: np.ndarray):
        """Landmarks [68, 2] of the tracked face in this frame, or None if it is not found."""
        gray = _gray(frame) if frame.ndim == 3 else frame
        box = self.detect(gray)
        return None if box is None else frame_landmarks(gray, box, self.refine)


def frame_landmarks(gray: np.ndarray, box, refine: int = 1) -> np.ndarray:
    """68 landmarks [68, 2] of the face in `box` of one grayscale frame: the predictor inside the detector's
    box, then `refine` rounds of `refine_landmarks`. Depends on this frame and box only."""
    landmarks = predict_landmarks(gray, box)
    return refine_landmarks(gray, landmarks, refine) if refine else landmarks


# ------------------------------------------------------------------------------------------------ aligned crops

def crop_landmarks(crop: np.ndarray, refine: int = 1) -> np.ndarray:
    """68 landmarks [68, 2] of the face in an FFHQ-aligned crop [S, S, 3], in the crop's pixels.

    No detector: in an aligned crop the face sits where the FFHQ frame puts it (centre (S/2, S/2), half-axis
    S/2), so the predictor starts from the refinement box of that frame (REFINE_BOX) and is then refined as in
    tracking. The same start for an input crop and its re-synthesis, so their landmarks are comparable."""
    s = crop.shape[0]
    gray = _gray(crop) if crop.ndim == 3 else crop
    scale = REFINE_AXIS_PX / (s / 2)  # the predictor sees the face at the size refinement uses
    big = _resize(gray, scale)
    half = REFINE_BOX[1] * REFINE_AXIS_PX / 2
    cx, cy = big.shape[1] / 2, big.shape[0] / 2 + REFINE_BOX[0] * REFINE_AXIS_PX
    lm = predict_landmarks(big, (cx - half, cy - half, cx + half, cy + half))
    if refine:
        lm = refine_landmarks(big, lm, refine)
    return (lm + 0.5) / scale - 0.5


def face_in_crop(crop: np.ndarray) -> bool:
    """Whether dlib's HOG detector finds a face in an aligned crop (at 256 px): False for the demo's textures."""
    gray = _gray(crop) if crop.ndim == 3 else crop
    small = _resize(gray, 256 / gray.shape[0])
    return len(_models()["detector"](small, 1)) > 0


def face_descriptor(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """dlib's 128-d face-recognition embedding [128] (dlib_face_recognition_resnet_model_v1, from the
    face_recognition_models package) of the face with 68 `landmarks` in the uint8 RGB `image`. Two photos of
    one person are at Euclidean distance < 0.6 (dlib's threshold, 99.38% on LFW)."""
    import dlib

    m = _models()
    if "recognition" not in m:
        m["recognition"] = dlib.face_recognition_model_v1(model_path("dlib_face_recognition_resnet_model_v1.dat"))
    pts = [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks]
    x0, y0 = np.floor(landmarks.min(0)).astype(int)
    x1, y1 = np.ceil(landmarks.max(0)).astype(int)
    shape = dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)), pts)
    return np.asarray(m["recognition"].compute_face_descriptor(np.ascontiguousarray(image), shape, 0), np.float32)
