"""Stage `select_id`: the identity latent is the inverted W+ of the frame with the lowest reconstruction loss
among near-frontal frames.

Head pose per frame comes from the 68 alignment landmarks (`stylejax.align.headpose`, solvePnP on a generic
3-D face). Near-frontal: |yaw| <= max_yaw_deg and |pitch| <= max_pitch_deg. Without landmarks (or when no
frame qualifies) the candidates are the frames within 5° of the most frontal one, or all frames.
`config.select_id.frame >= 0` (CLI `--id-frame N`) forces the frame.

Outputs: `select_id/id.json` {frame, reason, landmark_pose_deg}, `select_id/id_latent.npy` [num_ws, w_dim],
`select_id/landmark_pose.npy` [T, 3] (yaw, pitch, roll in degrees; NaN where unknown).
"""
import os

import numpy as np

from stylejax.io import atomic
from stylejax.errors import PipelineError
from stylejax.stages.base import signature


def landmark_pose(transforms, num_frames):
    """[T, 3] landmark head pose, or all-NaN when the transforms carry no landmarks."""
    from stylejax.align.headpose import estimate_head_pose

    lm = transforms.get("landmarks")
    if lm is None or len(lm) != num_frames or "frame_size" not in transforms:
        return np.full((num_frames, 3), np.nan, np.float32)
    return np.asarray(estimate_head_pose(np.asarray(lm, np.float64), tuple(int(v) for v in transforms["frame_size"])),
                      np.float32)


def check_forced(forced, num_frames):
    """Refuses a forced identity frame past the end of the video (before any stage runs, and in `choose`)."""
    if forced >= num_frames:
        raise PipelineError(f"--id-frame {forced} is out of range: the video has {num_frames} frames "
                            f"(0..{num_frames - 1})")


def choose(loss, pose, max_yaw_deg, max_pitch_deg, forced=-1):
    """(frame index, reason). Pure: loss [T], pose [T, 3] (NaN = unknown)."""
    t = len(loss)
    if forced >= 0:
        check_forced(forced, t)
        return int(forced), "forced"
    known = np.isfinite(pose[:, :2]).all(axis=1)
    frontal = known & (np.abs(pose[:, 0]) <= max_yaw_deg) & (np.abs(pose[:, 1]) <= max_pitch_deg)
    if frontal.any():
        candidates, reason = np.flatnonzero(frontal), "lowest loss among near-frontal frames"
    elif known.any():
        off = np.where(known, np.hypot(pose[:, 0], pose[:, 1]), np.inf)
        candidates, reason = np.flatnonzero(off <= off.min() + 5.0), "lowest loss among the most frontal frames"
    else:
        candidates, reason = np.arange(t), "lowest loss (no landmark pose)"
    return int(candidates[np.argmin(np.asarray(loss)[candidates])]), reason


def chooser(ctx):
    """(landmark pose [T, 3], choose: per-frame losses [T] -> frame index): the identity frame this stage picks
    for given losses (invert asks it which frames are worth refining)."""
    cfg = ctx.config.select_id
    pose = landmark_pose(ctx.workdir.transforms(), ctx.num_frames)
    return pose, lambda loss: choose(loss, pose, float(cfg.max_yaw_deg), float(cfg.max_pitch_deg), int(cfg.frame))[0]


def run(ctx):
    cfg, wd = ctx.config.select_id, ctx.workdir
    sig = signature(ctx, "select_id")
    if wd.is_done("select_id", sig):
        return
    wd.reset("select_id")
    wd.dir("select_id")
    loss = np.asarray(wd.load("invert", "loss.npy"))
    refined = wd.file("invert", "refined.npy")
    if os.path.isfile(refined) and np.load(refined).any():  # invert refined only the frames that can win
        loss = np.where(np.load(refined), loss, np.inf)
    pose = landmark_pose(wd.transforms(), len(loss))
    frame, reason = choose(loss, pose, float(cfg.max_yaw_deg), float(cfg.max_pitch_deg), int(cfg.frame))
    np.save(wd.file("select_id", "landmark_pose.npy"), pose)
    np.save(wd.file("select_id", "id_latent.npy"), np.asarray(wd.load("invert", "ws.npy")[frame], np.float32))
    atomic.write_json(wd.file("select_id", "id.json"), {"frame": frame, "reason": reason, "loss": float(loss[frame]),
                                                         "landmark_pose_deg": [float(v) for v in pose[frame]]})
    wd.mark_done("select_id", sig, frame=frame)
    ctx.log(f"[select_id] identity frame {frame} ({reason}, loss {float(loss[frame]):.4f})")
