"""Stage `select_id`: the identity latent is the inverted W+ of a near-frontal frame with a neutral
expression and a low reconstruction loss.

The identity frame's expression becomes every offset's zero (offsets are fitted relative to it), so a
neutral face is the natural origin. Head pose per frame comes from the 68 alignment landmarks
(`stylejax.align.headpose`, solvePnP on a generic 3-D face). Near-frontal: |yaw| <= max_yaw_deg and
|pitch| <= max_pitch_deg. Without landmarks (or when no frame qualifies) the candidates are the frames within
5° of the most frontal one, or all frames. Among the candidates, with `prefer_neutral`, the frames whose
expression score (mouth opening + eye closure, `expression_scores`) lies within `neutral_margin` of the
candidates' lowest are kept, and of those the one with the lowest inversion loss is chosen: a closed mouth and
open eyes first, then the best reconstruction. `config.select_id.frame >= 0` (CLI `--id-frame N`) forces the
frame.

Outputs: `select_id/id.json` {frame, reason, loss, landmark_pose_deg, expression (the chosen frame's mouth
opening, eye closure and score), candidates, neutral_candidates}, `select_id/id_latent.npy` [num_ws, w_dim],
`select_id/landmark_pose.npy` [T, 3] (yaw, pitch, roll in degrees; NaN where unknown),
`select_id/expression.npy` [T, 2] (mouth opening, eye closure; NaN where unknown).
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


def expression_scores(landmarks):
    """[T, 2] (mouth opening, eye closure) from dlib-68 landmarks [T, 68, 2]; NaN where unknown.

    Mouth opening: the mean gap between the inner lips (points 61-67, 62-66, 63-65) divided by the distance
    between the eye centres (means of 36-41 and 42-47): 0 for a closed mouth, ~0.1-0.4 when talking.
    Eye closure: 1 - EAR / median EAR over the video, clipped at 0, with EAR the eye aspect ratio
    (|p1-p5| + |p2-p4|) / (2 |p0-p3|) of each eye's six points, averaged over both eyes: 0 for eyes open as
    usual in this video, ~1 for a blink."""
    lm = np.asarray(landmarks, np.float64)
    dist = lambda a, b: np.linalg.norm(lm[:, a] - lm[:, b], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iod = np.linalg.norm(lm[:, 42:48].mean(1) - lm[:, 36:42].mean(1), axis=-1)
        mouth = np.mean([dist(61, 67), dist(62, 66), dist(63, 65)], axis=0) / iod
        ear = np.mean([(dist(e + 1, e + 5) + dist(e + 2, e + 4)) / (2 * dist(e, e + 3)) for e in (36, 42)], axis=0)
        ok = np.isfinite(ear) & (ear > 0)
        typical = np.median(ear[ok]) if ok.any() else np.nan
        closure = np.where(ok, np.maximum(0.0, 1.0 - ear / typical), np.nan)
    mouth = np.where(np.isfinite(mouth) & (iod > 0), mouth, np.nan)
    return np.stack([mouth, closure], axis=1).astype(np.float32)


def choose(loss, pose, max_yaw_deg, max_pitch_deg, forced=-1, expression=None, neutral_margin=None):
    """(frame index, reason, details). Pure: loss [T], pose [T, 3] (NaN = unknown), expression [T, 2]
    (mouth opening, eye closure; NaN = unknown) or None; neutral_margin None = ignore the expression."""
    t = len(loss)
    if forced >= 0:
        check_forced(forced, t)
        return int(forced), "forced", {}
    known = np.isfinite(pose[:, :2]).all(axis=1)
    frontal = known & (np.abs(pose[:, 0]) <= max_yaw_deg) & (np.abs(pose[:, 1]) <= max_pitch_deg)
    frames = lambda n: f"{n} frame" + ("s" if n != 1 else "")
    if frontal.any():
        candidates = np.flatnonzero(frontal)
        pool = f"the {frames(len(candidates)).replace(' ', ' near-frontal ')}"
    elif known.any():
        off = np.where(known, np.hypot(pose[:, 0], pose[:, 1]), np.inf)
        candidates = np.flatnonzero(off <= off.min() + 5.0)
        pool = f"the {frames(len(candidates)).replace(' ', ' most frontal ')} (none within the near-frontal bounds)"
    else:
        candidates, pool = np.arange(t), f"all {frames(t)} (no landmark pose)"
    details = {"candidates": int(len(candidates))}
    reason = f"lowest inversion loss among {pool}"
    if neutral_margin is not None and expression is not None:
        score = np.sum(np.asarray(expression, np.float64)[candidates], axis=1)  # NaN where either is unknown
        if np.isfinite(score).any():
            neutral = candidates[score <= np.nanmin(score) + float(neutral_margin)]
            details.update(neutral_candidates=int(len(neutral)), neutral_margin=float(neutral_margin))
            reason = (f"lowest inversion loss among the {len(neutral)} most neutral (mouth opening + eye closure "
                      f"within {float(neutral_margin):g} of the lowest) of {pool}")
            candidates = neutral
        else:
            reason += "; no eye or lip landmarks for the expression"
    return int(candidates[np.argmin(np.asarray(loss)[candidates])]), reason, details


def chooser(ctx):
    """(landmark pose [T, 3], expression [T, 2], choose: per-frame losses [T] -> (frame, reason, details)): the
    identity frame this stage picks for given losses (invert asks it which frames are worth refining)."""
    cfg = ctx.config.select_id
    tf = ctx.workdir.transforms()
    t = ctx.num_frames
    pose = landmark_pose(tf, t)
    lm = tf.get("landmarks")
    expression = expression_scores(lm) if lm is not None and len(lm) == t else np.full((t, 2), np.nan, np.float32)
    margin = float(cfg.neutral_margin) if cfg.prefer_neutral else None
    return pose, expression, lambda loss: choose(loss, pose, float(cfg.max_yaw_deg), float(cfg.max_pitch_deg),
                                                 int(cfg.frame), expression, margin)


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
    pose, expression, pick = chooser(ctx)
    frame, reason, details = pick(loss)
    np.save(wd.file("select_id", "landmark_pose.npy"), pose)
    np.save(wd.file("select_id", "expression.npy"), expression)
    np.save(wd.file("select_id", "id_latent.npy"), np.asarray(wd.load("invert", "ws.npy")[frame], np.float32))
    mouth, closure = (float(v) if np.isfinite(v) else None for v in expression[frame])
    score = None if mouth is None or closure is None else mouth + closure
    atomic.write_json(wd.file("select_id", "id.json"), {
        "frame": frame, "reason": reason, "loss": float(loss[frame]),
        "landmark_pose_deg": [float(v) for v in pose[frame]],
        "expression": {"mouth_opening": mouth, "eye_closure": closure, "score": score}, **details})
    wd.mark_done("select_id", sig, frame=frame)
    ctx.log(f"[select_id] identity frame {frame} ({reason}; loss {float(loss[frame]):.4f}"
            + (f", mouth opening {mouth:.3f}, eye closure {closure:.3f}" if score is not None else "") + ")")
