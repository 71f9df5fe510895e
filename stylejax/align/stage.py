"""Stage 1: FFHQ face alignment of a video, temporal stabilisation, roll, paste-back.

    python -m stylejax.align --video IN --out DIR [--size 1024] [--stabiliser poly|savgol|gaussian|none]
                             [--center-window 9 --axes-window 19 --order 2] [--center-sigma 1 --axes-sigma 3]
                             [--keep-roll] [--preview] [--max-gap 15] [--workers N]
    python -m stylejax.align paste --video ORIG --aligned DIR_OR_FRAMES --transforms DIR/transforms.npz --out OUT.mp4

Coordinate, quad and roll conventions: `stylejax.align.geometry` (the one place they are stated).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import numpy as np
from absl import flags

from stylejax import cli
from stylejax.align.geometry import (AlignError, crop_frame, eye_distance, fill_gaps, level_axis,
                                     quad_from_frame, transforms_from_landmarks)
from stylejax.align.landmarks import log_stderr
from stylejax.align.stabilise import METHODS, Stabiliser, make_stabiliser
from stylejax.align.warp import _INTERP, face_mask, paste_back, render_crop
from stylejax.errors import UserError
from stylejax.io import atomic
from stylejax.io.transforms import FILE, load_transforms, save_transforms
from stylejax.io.video import VideoWriter, is_mp4, iter_frames, load_frames, probe


def _tracked(frames, tracker, refine: int, max_frames: int | None, workers):
    """Yield (t, frame, landmarks [68,2] or None) in frame order. The tracker's detection runs here, frame by
    frame; with `workers` (LandmarkWorkers) the landmarks of up to 2 frames per worker are computed ahead in
    parallel (identical results; memory bounded by those few frames)."""
    from collections import deque

    from stylejax.align.landmarks import _gray, frame_landmarks

    ahead = deque()  # (t, frame, box) whose landmarks are being computed
    try:
        for t, frame in enumerate(frames):
            if max_frames is not None and t >= max_frames:
                break
            gray = _gray(frame)
            box = tracker.detect(gray)
            if workers is None:
                yield t, frame, None if box is None else frame_landmarks(gray, box, refine)
                continue
            if box is not None:
                workers.submit(gray, box, refine)
            ahead.append((t, frame, box))
            while len(ahead) > 2 * workers.n:
                t0, f0, b0 = ahead.popleft()
                yield t0, f0, None if b0 is None else workers.collect()
        while ahead:
            t0, f0, b0 = ahead.popleft()
            yield t0, f0, None if b0 is None else workers.collect()
    finally:
        if workers is not None:
            workers.drain()  # a persistent pool starts the next video clean


def _landmark_stream(video: str, info, max_frames: int | None, max_gap: int, min_eye_dist: float,
                     detect_long_side: int, refine: int, log: Callable[[str], None], workers=None):
    """Yield (t, frame, landmarks [68,2] or None) for each frame, failing fast (AlignError) as soon as the
    face has been missing for more than `max_gap` frames or is too small to align. `workers`: None, or the
    LandmarkWorkers computing the landmarks of several frames at once."""
    from stylejax.align.landmarks import FaceTracker

    tracker = FaceTracker(detect_long_side=detect_long_side, refine=refine, log=log)
    frames = iter_frames(video, info)
    tracked = _tracked(frames, tracker, refine, max_frames, workers)
    last_valid, seen_face, count = -1, False, 0
    try:
        for t, frame, lm in tracked:
            count = t + 1
            if lm is not None:
                eyes = float(eye_distance(lm))
                if eyes < min_eye_dist:
                    raise AlignError(f"face too small to align in {video}: eye-to-eye distance {eyes:.1f} px "
                                     f"in frame {t} (need >= {min_eye_dist:g} px; use a higher-resolution video)")
                last_valid, seen_face = t, True
            elif t - last_valid > max_gap:
                if not seen_face:
                    raise AlignError(f"no face found in {video}: none in its first {t + 1} frames "
                                     f"(more than --max-gap {max_gap}){_no_face_cause(frame, detect_long_side)}")
                raise AlignError(f"face lost in {video} for more than --max-gap {max_gap} frames "
                                 f"(missing from frame {last_valid + 1})")
            yield t, frame, lm
    finally:
        tracked.close()
        frames.close()
    if not seen_face:
        raise AlignError(f"no face found in {video} (in any of its {count} frames)"
                         f"{_no_face_cause(frame, detect_long_side)}")


# dlib's HOG detector needs a face about 80 px wide; frames below this cannot show one
_SMALLEST_FACE_FRAME = 80


def _no_face_cause(frame, detect_long_side):
    """The likely reason no face was found in `frame` (the last one looked at), as a message tail."""
    from stylejax.align.landmarks import detect_faces

    h, w = frame.shape[:2]
    if min(h, w) < _SMALLEST_FACE_FRAME:
        return (f"; its frames are only {w}x{h} px, too small for the face detector (faces need about "
                f"{_SMALLEST_FACE_FRAME} px); use the original, higher-resolution video")
    import cv2

    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    # k quarter turns counter-clockwise (np.rot90) -> the ffmpeg filter that makes the video upright
    for k, (turn, vf) in {3: ("90° clockwise", "transpose=1"), 1: ("90° counter-clockwise", "transpose=2"),
                          2: ("180°", "hflip,vflip")}.items():
        if len(detect_faces(np.ascontiguousarray(np.rot90(gray, k)), detect_long_side)):
            return (f"; a face is found when the frames are turned {turn}: the video is stored sideways or "
                    f"upside down; rotate it upright first (e.g. ffmpeg -i IN -vf {vf} OUT.mp4)")
    return ("; check that the video shows one face, upright, at least about "
            f"{_SMALLEST_FACE_FRAME} px wide")


@contextlib.contextmanager
def landmark_workers(workers):
    """`workers`: 0 or None (landmarks in this process), a number of worker processes to start for the
    duration, or a running `LandmarkWorkers` (kept running)."""
    from stylejax.align.workers import LandmarkWorkers

    if workers is None or isinstance(workers, LandmarkWorkers):
        yield workers
    elif int(workers) < 0:
        raise AlignError(f"--workers must be >= 0 (0: landmarks in this process), got {workers}")
    elif int(workers) == 0:
        yield None
    else:
        with LandmarkWorkers(int(workers)) as pool:
            yield pool


def track_landmarks(video: str, max_frames: int | None = None, max_gap: int = 15, min_eye_dist: float = 32.0,
                    detect_long_side: int = 480, refine: int = 1, log: Callable[[str], None] = log_stderr,
                    workers=0):
    """Landmarks [T,68,2] (gaps interpolated), valid [T], and the video's `VideoInfo` (no rendering).
    `workers`: see `landmark_workers` (the landmarks are the same with any number)."""
    info = probe(video)
    landmarks, valid = [], []
    with landmark_workers(workers) as pool:
        for _, _, lm in _landmark_stream(video, info, max_frames, max_gap, min_eye_dist, detect_long_side, refine,
                                         log, pool):
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
                log: Callable[[str], None] = log_stderr, stabiliser: str | Stabiliser | None = None,
                workers=0) -> dict:
    """Align every frame of `video` into `out_dir` (frames.npy, transforms.npz, preview.mp4 if asked).

    One decoding pass: frame t is rendered as soon as the (smoothed) transform of t is final, i.e. once a
    face has been seen at or after t + the stabiliser's reach; the crops of frames waiting for that
    are the only frames held in memory. Rendering runs on a worker thread (OpenCV releases the GIL) while
    dlib tracks the next frames. Everything is written to a temporary sibling directory that is renamed to
    `out_dir` at the end, so a failure never leaves a complete-looking output. `workers` (see
    `landmark_workers`): landmarks of several frames at once in worker processes, with identical results.
    Returns the transforms dict (also with `timing_s`).
    """
    video = os.path.abspath(video)
    if size < 16 or size % 2 or size > MAX_SIZE:
        raise AlignError(f"--size must be an even number from 16 to {MAX_SIZE} (StyleGAN2 uses 1024), got {size}")
    if resample not in _INTERP:
        raise AlignError(f"unknown resampler {resample!r}; use one of {sorted(_INTERP)}")
    for name, sg in (("--center-sigma", center_sigma), ("--axes-sigma", axes_sigma)):
        if sg is not None and (not np.isfinite(sg) or sg < 0):
            raise AlignError(f"{name} must be a finite number >= 0 (frames), got {sg}")
    stab = make_stabiliser(stabiliser, center_sigma=center_sigma, axes_sigma=axes_sigma)
    if max_gap < 0:
        raise AlignError(f"--max-gap must be >= 0 (frames), got {max_gap}")
    if not np.isfinite(min_eye_dist) or min_eye_dist < 0:
        raise AlignError(f"--min-eye-dist must be a finite number >= 0 (px), got {min_eye_dist}")
    if max_frames is not None and max_frames < 1:
        raise AlignError(f"--max-frames must be >= 1, got {max_frames}")
    atomic.check_output_dir(out_dir, overwrite, [video], is_aligned_dir, "aligned output directory")
    info = probe(video)
    width, height = info.frame_size
    if min(width, height) < 2 * min_eye_dist:
        raise AlignError(f"{video} is only {width}x{height} px: too small to hold a face whose eyes are "
                         f">= {min_eye_dist:g} px apart (--min-eye-dist); use the original, higher-resolution video")
    with landmark_workers(workers) as pool, atomic.output_dir(out_dir, overwrite=overwrite, inputs=[video],
                                                             is_ours=is_aligned_dir,
                                                             what="aligned output directory") as tmp:
        return _align_into(tmp, video, info, size, stab, keep_roll, preview, max_gap,
                           min_eye_dist, max_frames, resample, detect_long_side, refine, log, pool)


MAX_SIZE = 4096  # crops beyond this are a typo: 4096² RGB is 48 MiB a frame


def is_aligned_dir(path: str) -> bool:
    """An output of this stage (what --overwrite may replace): transforms.npz and frames.npy, nothing foreign."""
    names = set(os.listdir(path))
    return {"frames.npy", FILE} <= names and names <= {"frames.npy", FILE, "preview.mp4"}


def _align_into(tmp, video, info, size, stab, keep_roll, preview, max_gap, min_eye_dist,
                max_frames, resample, detect_long_side, refine, log, workers):
    import collections
    import time
    from concurrent.futures import ThreadPoolExecutor

    from stylejax.io.video import FrameFileWriter

    reach = stab.reach
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
        total = info.approx_frames if max_frames is None else min(max_frames, info.approx_frames)
        bar = cli.progress(total=total or None, desc="align", unit="frame")
        for t, frame, lm in _landmark_stream(video, info, max_frames, max_gap, min_eye_dist, detect_long_side,
                                             refine, log, workers):
            bar.update(1)
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
        bar.close()
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
        save_transforms(os.path.join(tmp, FILE), quad=tf["quad"],
                 roll_deg=tf["roll_deg"].astype(np.float32), landmarks=landmarks_arr.astype(np.float32),
                 valid=valid_arr, fps=np.float64(info.fps), frame_size=np.array(info.frame_size, np.int32),
                 size=np.int32(size), keep_roll=np.bool_(keep_roll), center=tf["center"].astype(np.float32),
                 x_axis=tf["x_axis"].astype(np.float32),
                 **stab.as_arrays())
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        store.abort()
        if writer is not None:
            writer.abort()
        raise
    tf.update(landmarks=landmarks_arr, valid=valid_arr, fps=info.fps, frame_size=info.frame_size, timing_s=timing)
    return tf


def paste_video(video: str, aligned: str, transforms: str, out: str, mask_kind: str = "ellipse",
                feather: float = 0.04, resample: str = "cubic", overwrite: bool = True) -> int:
    """Composite aligned frames (frames.npy / its directory / a video) back into `video`; writes `out` mp4."""
    inputs = [video, aligned, transforms]
    atomic.check_output_file(out, overwrite, inputs, "--out video", is_mp4, "an mp4 video")
    tf = load_transforms(transforms)
    quads = tf["quad"]
    info = probe(video)
    if tuple(int(v) for v in tf["frame_size"]) != info.frame_size:
        want = "x".join(str(int(v)) for v in tf["frame_size"])
        raise AlignError(f"{transforms} is for {want} px frames but {video} is "
                         f"{info.frame_size[0]}x{info.frame_size[1]} px; pass the video that was aligned")
    use_npy = aligned.endswith(".npy") or os.path.isdir(aligned)
    if use_npy:
        crops = load_frames(aligned)
        if len(crops) != len(quads):  # known now: refuse before anything is written
            raise AlignError(_count_mismatch(aligned, len(crops), transforms, len(quads)))
        crops = iter(crops)
    else:
        crops = iter_frames(aligned)
    with atomic.output_file(out, overwrite, inputs, "--out video", is_ours=is_mp4, kind="an mp4 video") as tmp:
        return _paste_into(tmp, video, info, crops, quads, aligned, mask_kind, feather, resample, transforms)


def _count_mismatch(aligned, n_crops, transforms, n_quads, more=None):
    more = more or ("more" if n_crops > n_quads else "fewer")
    return (f"{aligned} holds {more} crops ({n_crops}) than {transforms} has frames ({n_quads}); nothing was "
            "pasted: pass the crops made from these transforms (one per aligned frame)")


def _paste_into(out, video, info, crops, quads, aligned, mask_kind, feather, resample, transforms="--transforms"):
    """Pastes crop t into frame t for every frame of the transforms: the crops must match the transforms one
    to one (a shorter run is never pasted silently), and the video must have at least as many frames (the
    transforms may cover only its start: align --max-frames)."""
    mask = None
    n = 0
    with VideoWriter(out, info.fps) as writer:
        frames = iter_frames(video, info)
        try:
            for t in range(len(quads)):
                crop = next(crops, None)
                if crop is None:
                    raise AlignError(_count_mismatch(aligned, t, transforms, len(quads)))
                frame = next(frames, None)
                if frame is None:
                    raise AlignError(f"{video} has fewer frames ({t}) than {transforms} ({len(quads)}); nothing "
                                     "was pasted: pass the video that was aligned")
                if mask is None:
                    if crop.ndim != 3 or crop.shape[0] != crop.shape[1] or crop.shape[2] != 3:
                        raise AlignError(f"the aligned crops in {aligned} are {crop.shape[1]}x{crop.shape[0]} px; "
                                         "paste needs the square RGB crops that align writes")
                    mask = face_mask(crop.shape[0], mask_kind, feather)
                writer.write(paste_back(frame, np.asarray(crop), quads[t], mask, resample))
                n += 1
            if next(crops, None) is not None:
                raise AlignError(_count_mismatch(aligned, f"at least {n + 1}", transforms, len(quads), "more"))
        finally:
            frames.close()
            if hasattr(crops, "close"):
                crops.close()
        if n == 0:
            raise AlignError(f"nothing to paste: no aligned frames in {aligned}")
    return n


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------

def define_align_flags(fv):
    flags.DEFINE_string("video", None, "input video (anything ffmpeg reads)", flag_values=fv)
    flags.DEFINE_string("out", None, "output directory: frames.npy, transforms.npz [, preview.mp4]", flag_values=fv)
    flags.DEFINE_integer("size", 1024, "aligned crop size in px", flag_values=fv)
    flags.DEFINE_enum("stabiliser", None, list(METHODS),
                      "temporal stabiliser of the crop: local quadratic fit with tricube weights (poly, default: "
                      "follows fast head motion), the same with equal weights (savgol), the previous Gaussian "
                      "(default when a σ is given), or none", flag_values=fv)
    flags.DEFINE_integer("center-window", None, "poly/savgol window (odd, frames) for the centre (default 9)", flag_values=fv)
    flags.DEFINE_integer("axes-window", None, "poly/savgol window (odd, frames) for scale and roll (default 19)",
                         flag_values=fv)
    flags.DEFINE_integer("order", None, "poly/savgol polynomial degree (default 2)", flag_values=fv)
    flags.DEFINE_float("center-sigma", None, "gaussian σ (frames) for the crop centre (default 1; 0 disables)", flag_values=fv)
    flags.DEFINE_float("axes-sigma", None, "gaussian σ (frames) for the crop axes (default 3; 0 disables)", flag_values=fv)
    flags.DEFINE_bool("keep-roll", False, "crops keep the head's roll (default: level eyes)", flag_values=fv)
    flags.DEFINE_bool("preview", False, "also write preview.mp4 with landmarks and crop quads", flag_values=fv)
    flags.DEFINE_integer("max-gap", 15, "interpolate over at most this many frames without a face", flag_values=fv)
    flags.DEFINE_float("min-eye-dist", 32.0, "smallest eye-to-eye distance (px) accepted", flag_values=fv)
    flags.DEFINE_integer("max-frames", None, "only the first N frames", flag_values=fv)
    flags.DEFINE_enum("resample", "cubic", sorted(_INTERP), "crop resampler", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace an existing --out directory written by this command", flag_values=fv)
    flags.DEFINE_integer("workers", None, "landmark worker processes (0: none; default: one per core, at most 8, for "
                         f"videos longer than {AUTO_WORKERS_MIN_FRAMES} frames); the landmarks are the same with any "
                         "number", flag_values=fv)
    flags.DEFINE_bool("no-refine", False,
                      "skip the upright 5-box landmark refinement: ~2x faster landmarks, ~2x noisier quads", flag_values=fv)


def define_paste_flags(fv):
    flags.DEFINE_string("video", None, "the original video", flag_values=fv)
    flags.DEFINE_string("aligned", None, "frames.npy, a directory holding one, or a video of crops", flag_values=fv)
    flags.DEFINE_string("transforms", None, "transforms.npz written by the align step", flag_values=fv)
    flags.DEFINE_string("out", None, "output mp4", flag_values=fv)
    flags.DEFINE_enum("mask", "ellipse", ["ellipse", "square"], "face mask shape", flag_values=fv)
    flags.DEFINE_float("feather", 0.04, "mask blur σ as a fraction of the crop size", flag_values=fv)
    flags.DEFINE_enum("resample", "cubic", sorted(_INTERP), "resampler", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace an existing --out file", flag_values=fv)


# starting the landmark workers costs about as much as aligning this many frames in one process
AUTO_WORKERS_MIN_FRAMES = 60


def auto_workers(video: str, max_frames: int | None = None) -> int:
    """Landmark workers for `video` when --workers is not given: none for short videos, else one per core."""
    from stylejax.align.workers import default_workers

    try:
        frames = probe(video).approx_frames
    except UserError:
        return 0  # align_video reports the problem
    if max_frames is not None:
        frames = min(frames, max_frames)
    return default_workers() if frames > AUTO_WORKERS_MIN_FRAMES else 0


def run_align(args):
    cli.require(args, "video", "out")
    workers = auto_workers(args.video, args.max_frames) if args.workers is None else args.workers
    stab = make_stabiliser(args.stabiliser, center_window=args.center_window, axes_window=args.axes_window,
                           order=args.order, center_sigma=args.center_sigma, axes_sigma=args.axes_sigma)
    tf = align_video(args.video, args.out, size=args.size, stabiliser=stab, keep_roll=args.keep_roll,
                     preview=args.preview,
                     max_gap=args.max_gap, min_eye_dist=args.min_eye_dist, max_frames=args.max_frames,
                     resample=args.resample, overwrite=args.overwrite, refine=0 if args.no_refine else 1,
                     workers=workers,
                     log=(lambda msg: None) if args.json else log_stderr)
    n, detected = len(tf["valid"]), int(tf["valid"].sum())
    return {"message": f"aligned {n} frames ({detected} with a detected face) into {args.out}",
            "frames": n, "detected": detected, "out": os.path.realpath(args.out),
            "wall_s": round(tf["timing_s"]["wall"], 3)}


def run_paste(args):
    cli.require(args, "video", "aligned", "transforms", "out")
    if not np.isfinite(args.feather) or args.feather < 0:
        raise AlignError(f"--feather must be a finite number >= 0 (fraction of the crop size), got {args.feather}")
    n = paste_video(args.video, args.aligned, args.transforms, args.out, args.mask, args.feather, args.resample,
                    overwrite=args.overwrite)
    return {"message": f"pasted {n} frames into {args.out}", "frames": n, "out": os.path.realpath(args.out)}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "paste":
        return cli.run("python -m stylejax.align paste",
                       "Paste aligned (e.g. re-rendered) crops back into the original video",
                       define_paste_flags, run_paste, argv[1:])
    return cli.run("python -m stylejax.align",
                   "FFHQ-align the face in a video (see also: python -m stylejax.align paste --help)",
                   define_align_flags, run_align, argv)


if __name__ == "__main__":
    sys.exit(main())
