"""Landmark pose -> StyleFlow pose, measured instead of assumed (`head_pose.yaw_sign` / `pitch_sign` = "auto").

`head_pose` starts every frame from its landmark pose relative to the identity frame, mapped into StyleFlow's
yaw and pitch, and puts the identity frame's landmark pose into the identity's StyleFlow source condition:
both need, per axis, the factor from landmark degrees (`stylejax.align.headpose` conventions) to StyleFlow
degrees. Taken as +1 (and 1:1) it is unverified on real weights, and a wrong sign starts every frame at the
mirror pose, further from the answer than the step budget can undo for |yaw| above about 16°.

"auto" measures it: the identity latent is rendered through the pose edit at several StyleFlow yaw edits
(pitch 0) and pitch edits (yaw 0), the landmark pose of every render is measured as `select_id` measures frames
(dlib 68 landmarks, the generic 3-D face), and per axis a straight line measured = intercept + slope · edit is
fitted by least squares. The factor is 1 / slope: its sign is the convention, its size the scale. An axis
falls back to +1 with a warning line when no face is found in the render of the identity itself (random
weights), when fewer than MIN_POINTS of its renders show a face, or when the line is too flat or too loose to
decide (|slope| < MIN_SLOPE, or R² < MIN_R2). The record (`head_pose/pose_calibration.json`, and the encode
summary) keeps the edits, the measurements and the fit.
"""
import numpy as np

from stylejax.errors import PipelineError

YAW_EDITS = (-20.0, -10.0, 0.0, 10.0, 20.0)    # StyleFlow degrees, around the identity's own pose
PITCH_EDITS = (-10.0, -5.0, 0.0, 5.0, 10.0)
MIN_POINTS = 3      # renders with a face an axis needs (a line through two points says nothing about the fit)
MIN_SLOPE = 0.2     # landmark degrees per StyleFlow degree below which the edit hardly moves the measured pose
MIN_R2 = 0.8        # a looser line is measurement noise, not a direction
RECORD = "pose_calibration.json"  # in WORKDIR/head_pose/
DETECT_SIZE = 512   # renders are scaled to this before detection: dlib's detector needs faces of about 80 px


def parse_factor(value, name):
    """None for "auto", else the configured landmark -> StyleFlow factor (a non-zero number)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        factor = float(value)
    except (TypeError, ValueError):
        factor = float("nan")
    if not np.isfinite(factor) or factor == 0:
        raise PipelineError(f"--config.head_pose.{name} must be 'auto' or a non-zero number (landmark degrees -> "
                            f"StyleFlow degrees), got {value!r}")
    return factor


def measure_pose(image):
    """(yaw, pitch) in degrees of the largest face in a uint8 image [S, S, 3], or None when dlib finds none."""
    import cv2

    from stylejax.align.headpose import estimate_head_pose
    from stylejax.align.landmarks import detect_faces, predict_landmarks, refine_landmarks

    image = np.asarray(image)
    if image.shape[0] < DETECT_SIZE:
        image = cv2.resize(image, (DETECT_SIZE, DETECT_SIZE), interpolation=cv2.INTER_CUBIC)
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    boxes = detect_faces(gray, DETECT_SIZE)
    if not len(boxes):
        return None
    box = boxes[int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))]
    lm = refine_landmarks(gray, predict_landmarks(gray, box))
    pose = estimate_head_pose(lm[None], (gray.shape[1], gray.shape[0]))[0]
    return None if not np.isfinite(pose[:2]).all() else (float(pose[0]), float(pose[1]))


def fit_axis(edits, measured):
    """Least-squares line through (edit, measured) pairs with a measurement: a dict with `factor` (1 / slope),
    or with `reason` (why it cannot decide) and factor +1."""
    pts = [(float(e), float(m)) for e, m in zip(edits, measured) if m is not None]
    record = {"edits_deg": [float(e) for e in edits], "measured_deg": [None if m is None else float(m) for m in measured]}
    if len(pts) < MIN_POINTS:
        return {**record, "factor": 1.0, "source": "fallback",
                "reason": f"a face in {len(pts)} of {len(edits)} renders (needs {MIN_POINTS})"}
    x, y = np.array(pts).T
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    spread = np.sum((y - y.mean()) ** 2)
    r2 = float(1.0 - np.sum(resid ** 2) / spread) if spread > 0 else 0.0
    record.update(slope=float(slope), intercept_deg=float(intercept), r2=r2)
    if abs(slope) < MIN_SLOPE:
        return {**record, "factor": 1.0, "source": "fallback",
                "reason": f"slope {slope:+.3f} landmark deg per StyleFlow deg is too flat to decide (< {MIN_SLOPE})"}
    if r2 < MIN_R2:
        return {**record, "factor": 1.0, "source": "fallback",
                "reason": f"the measurements are not a line (R² {r2:.2f} < {MIN_R2})"}
    return {**record, "factor": float(1.0 / slope), "source": "measured"}


def calibrate(render, yaw_edits=YAW_EDITS, pitch_edits=PITCH_EDITS, measure=measure_pose, configured=(None, None)):
    """The landmark -> StyleFlow factors of yaw and pitch.

    `render(yaw [N], pitch [N])` -> uint8 images [N, S, S, 3] of the identity through the pose edit by those
    StyleFlow degrees (relative to its own pose); `measure(image)` -> (yaw, pitch) landmark degrees or None.
    `configured`: (yaw, pitch) factors given as numbers, which are used as they are (None: measure).
    Returns the record: yaw_factor, pitch_factor, method ("measured", "fallback" or "config"), and per axis the
    edits, measurements and fit."""
    if configured[0] is not None and configured[1] is not None:
        return {"method": "config", "yaw_factor": float(configured[0]), "pitch_factor": float(configured[1]),
                "yaw": {"factor": float(configured[0]), "source": "config"},
                "pitch": {"factor": float(configured[1]), "source": "config"}}
    yaw_edits, pitch_edits = [float(v) for v in yaw_edits], [float(v) for v in pitch_edits]
    identity = measure(render(np.zeros(1, np.float32), np.zeros(1, np.float32))[0])
    if identity is None:  # the identity first: random weights stop here, without rendering the edits
        axes = {"yaw": {"factor": 1.0, "source": "fallback"}, "pitch": {"factor": 1.0, "source": "fallback"}}
        record = {"method": "fallback", "reason": "no face found in the render of the identity (random weights?)"}
    else:
        n = len(yaw_edits)
        images = render(np.array(yaw_edits + [0.0] * len(pitch_edits), np.float32),
                        np.array([0.0] * n + pitch_edits, np.float32))
        poses = [measure(img) for img in images]
        axes = {"yaw": fit_axis(yaw_edits, [None if p is None else p[0] for p in poses[:n]]),
                "pitch": fit_axis(pitch_edits, [None if p is None else p[1] for p in poses[n:]])}
        record = {"method": "measured" if any(a["source"] == "measured" for a in axes.values()) else "fallback",
                  "identity_landmark_pose_deg": list(identity)}
    for i, name in enumerate(("yaw", "pitch")):
        if configured[i] is not None:
            axes[name] = {"factor": float(configured[i]), "source": "config"}
        record[f"{name}_factor"] = axes[name]["factor"]
        record[name] = axes[name]
    return record


def warnings(record):
    """The warning lines of a record: one per axis that fell back to +1."""
    if record["method"] == "fallback" and "reason" in record:
        return [f"warning: landmark -> StyleFlow pose taken as +1, 1:1 for yaw and pitch: {record['reason']}"]
    return [f"warning: landmark -> StyleFlow {name} taken as +1, 1:1: {record[name]['reason']}"
            for name in ("yaw", "pitch") if record[name].get("source") == "fallback"]
