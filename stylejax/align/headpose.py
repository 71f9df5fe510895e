"""Head pose (yaw, pitch, roll in degrees) from dlib-68 landmarks, by fitting a generic 3-D face (cv2.solvePnP).

Conventions. Camera coordinates are OpenCV's: x right, y down (image axes), z forward from the camera. The
fitted rotation R maps model coordinates (the face below, frontal: R = I) to camera coordinates and is
decomposed as R = Rz(roll) · Ry(−yaw) · Rx(−pitch), with the right-handed elementary rotations Rx, Ry, Rz:
* yaw > 0: the nose turns towards the image's right (the subject turns to their own left);
* pitch > 0: the nose turns up in the image (chin up);
* roll > 0: the face turns clockwise on screen. Roll is applied last, about the viewing axis, so under weak
  perspective it equals the angle of the eye line, atan2(dy, dx) of the eye-to-eye vector with y down:
  the same angle as `stylejax.align.roll_degrees`, and yaw/pitch are the pose seen in the de-rolled crop.
By default the pose is measured relative to the ray from the camera to the face, not to the optical axis:
an FFHQ crop of an off-centre face sees the face along that ray, so a face looking into the lens reads as
frontal wherever it is in the frame.
These are this module's conventions; StyleFlow's yaw/pitch attributes must be mapped to them explicitly.
"""
from __future__ import annotations

import numpy as np

# Generic 3-D face, millimetres, same axes as the camera for a frontal face (x towards the image's right,
# y down, z away from the viewer), origin at the nose tip. These are approximate average-adult values
# written for this module: widths and heights from typical anthropometric distances (outer eye corners
# ~90 mm apart, inner ~34 mm, mouth ~54 mm wide, eye line ~38 mm above the nose tip, mouth corners ~32 mm
# below it), checked against the mean dlib landmark layout of the FFHQ-aligned fixture clips; depths from
# typical facial profile depths (nose tip foremost; lip 14 mm, inner eye corners 30 mm, outer 40 mm behind it).
# Depths are the least certain numbers: a depth spread wrong by x% scales near-frontal yaw and pitch by about
# -x% but keeps their signs and their zero. Only points that move little with expression are used: eyebrows,
# lower lip, jaw line and chin (which drops when the mouth opens) are left out.
MODEL_POINTS_MM = {
    27: (0.0, -42.0, 22.0),  # nasion (top of the nose bridge)
    30: (0.0, 0.0, 0.0),  # nose tip
    31: (-14.0, 9.0, 17.0),  # nostril wing, image-left
    33: (0.0, 12.0, 15.0),  # subnasale (nose base)
    35: (14.0, 9.0, 17.0),  # nostril wing, image-right
    36: (-45.0, -38.0, 40.0),  # outer eye corner, image-left
    39: (-17.0, -37.0, 30.0),  # inner eye corner, image-left
    42: (17.0, -37.0, 30.0),  # inner eye corner, image-right
    45: (45.0, -38.0, 40.0),  # outer eye corner, image-right
    48: (-27.0, 32.0, 32.0),  # mouth corner, image-left
    51: (0.0, 27.0, 14.0),  # upper lip, top centre
    54: (27.0, 32.0, 32.0),  # mouth corner, image-right
}
MODEL_INDICES = np.array(sorted(MODEL_POINTS_MM))
MODEL_POINTS = np.array([MODEL_POINTS_MM[i] for i in MODEL_INDICES], np.float64)


def camera_matrix(frame_size, focal: float | None = None) -> np.ndarray:
    """Pinhole intrinsics: focal length `focal` px (default: the frame width, a ~53° horizontal field of view,
    typical of phone and webcam footage) and the principal point at the frame centre ((w-1)/2, (h-1)/2),
    pixel centres at integers."""
    w, h = frame_size
    f = float(w if focal is None else focal)
    return np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])


def rotation_from_pose(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """R = Rz(roll) · Ry(−yaw) · Rx(−pitch), model -> camera (see the module docstring)."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(-p), -np.sin(-p)], [0, np.sin(-p), np.cos(-p)]])
    ry = np.array([[np.cos(-y), 0, np.sin(-y)], [0, 1, 0], [-np.sin(-y), 0, np.cos(-y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def pose_from_rotation(rot: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) degrees of a rotation matrix; inverse of `rotation_from_pose` for |yaw| < 90°."""
    yaw = np.arcsin(np.clip(rot[2, 0], -1.0, 1.0))
    pitch = -np.arctan2(rot[2, 1], rot[2, 2])
    roll = np.arctan2(rot[1, 0], rot[0, 0])
    return np.degrees([yaw, pitch, roll])


def _ray_alignment(direction: np.ndarray) -> np.ndarray:
    """The smallest rotation taking the unit vector `direction` onto the optical axis +z."""
    import cv2

    d = direction / np.linalg.norm(direction)
    axis = np.cross(d, [0.0, 0.0, 1.0])
    sin, cos = np.linalg.norm(axis), d[2]
    if sin < 1e-12:
        return np.eye(3)
    return cv2.Rodrigues(axis / sin * np.arctan2(sin, cos))[0]


def estimate_head_pose(landmarks: np.ndarray, frame_size, focal: float | None = None,
                       relative_to_view_ray: bool = True) -> np.ndarray:
    """Head pose [T, 3] float32 (yaw, pitch, roll in degrees) from dlib-68 landmarks [T, 68, 2] (pixels, x
    right, y down) in frames of `frame_size` (w, h). Frames whose landmarks are not finite give NaN."""
    import cv2

    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be [T, 68, 2], got {list(lm.shape)}")
    cam = camera_matrix(frame_size, focal)
    out = np.full((len(lm), 3), np.nan, np.float32)
    for t, frame_lm in enumerate(np.ascontiguousarray(lm[:, MODEL_INDICES])):
        if not np.isfinite(frame_lm).all():
            continue
        # SQPnP finds the global optimum (no initial guess needed); LM then polishes the reprojection error.
        ok, rvec, tvec = cv2.solvePnP(MODEL_POINTS, frame_lm, cam, None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok or tvec[2, 0] <= 0:
            continue
        rvec, tvec = cv2.solvePnPRefineLM(MODEL_POINTS, frame_lm, cam, None, rvec, tvec)
        rot = cv2.Rodrigues(rvec)[0]
        if relative_to_view_ray:
            rot = _ray_alignment(tvec[:, 0]) @ rot
        out[t] = pose_from_rotation(rot)
    return out


def near_frontal(pose_deg: np.ndarray, max_yaw_deg: float, max_pitch_deg: float) -> np.ndarray:
    """Bool mask [T]: |yaw| <= max_yaw_deg and |pitch| <= max_pitch_deg (NaN poses are not frontal)."""
    pose = np.asarray(pose_deg, np.float64)
    with np.errstate(invalid="ignore"):
        return (np.abs(pose[:, 0]) <= max_yaw_deg) & (np.abs(pose[:, 1]) <= max_pitch_deg)
