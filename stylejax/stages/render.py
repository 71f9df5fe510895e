"""Stage `render`: encoding -> frames at the generator's resolution, roll re-applied; optional paste-back into
the original video and a side-by-side with the aligned input and an error map. Also the re-synthesis
metrics of `encode` (PSNR, SSIM, LPIPS, identity similarity against the aligned input).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from stylejax import cli, losses, metrics
from stylejax.decoder import iter_renders, to_uint8


def apply_roll(image, roll_deg):
    """Rotates an image [S, S, 3] about its centre by roll_deg (positive = clockwise on screen, the alignment's
    convention), re-applying the head's roll relative to the identity frame."""
    import cv2

    if abs(float(roll_deg)) < 1e-6:
        return image
    s = image.shape[0]
    m = cv2.getRotationMatrix2D(((s - 1) / 2.0, (s - 1) / 2.0), -float(roll_deg), 1.0)
    return cv2.warpAffine(image, m, (s, s), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def error_map(a, b):
    """|a - b| of uint8 images as a heat map (x4 gain, inferno-like via OpenCV's colormap)."""
    import cv2

    err = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=-1)
    heat = cv2.applyColorMap(np.clip(err * 4, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return heat[..., ::-1]


def evaluate(enc, nets, aligned, lpips_size=256, chunk=8, faces=True, frames=None, side_by_side=None, stills=(),
             originals=None, generator=None):
    """Per-frame metrics of the re-synthesis from `enc` (as saved) against the aligned input `aligned` (uint8
    [T, S, S, 3], e.g. the work directory's memory-mapped frames): returns ({column: [T]}, summary, stills) with
    the columns of `stylejax.metrics.COLUMNS`. The summary keeps `identity_similarity` (the ArcFace cosine, when
    an ArcFace network is loaded). `frames`: only frames (first, end). `side_by_side`: also write input |
    re-synthesis | error map at the generator's resolution to this mp4 in the same pass; `stills`: frame
    indices whose side-by-side image is returned [(frame, uint8 image)]. `originals`: an iterator over the
    original video's frames (from `first`): the re-synthesis is also pasted back into each through the
    encoding's quad, and the same metrics of the pasted face (cropped again through the quad, so blending and
    double resampling count) are added as `paste_*` columns, with `paste_frame_psnr_db` over the whole frame.
    `generator`: render with this one instead of `nets.generator` (the fine-tuned generator)."""
    from stylejax.io.video import VideoWriter

    first, end = frames or (0, enc.num_frames)
    if len(aligned) < end:
        raise metrics_error(f"the aligned input has {len(aligned)} frames, the encoding {enc.num_frames}")
    size = aligned.shape[1]
    fm = metrics.FrameMetrics(nets.lpips, min(int(lpips_size), size), nets.arcface, faces)
    writer = VideoWriter(side_by_side, enc.fps) if side_by_side else None
    kept = []
    pasted_fm, frame_psnr, mask = None, [], None
    if originals is not None:
        if enc.quad is None:
            raise metrics_error("this encoding has no alignment quads: paste-back metrics need an encoding made "
                                "from a video")
        pasted_fm = metrics.FrameMetrics(nets.lpips, min(int(lpips_size), size), nets.arcface, faces)
    try:
        for lo, hi, img in iter_renders(enc, generator or nets.generator, nets.styleflow, chunk, frames=(first, end)):
            ref = np.asarray(aligned[lo:hi])
            if img.shape[1] != size:
                img = np.asarray(losses.resize(jnp.asarray(img), size))
            fm.add(img, ref)
            if pasted_fm is not None:
                pasted_fm.add(*_pasted_crops(enc, img, ref, originals, lo, frame_psnr))
            if writer is not None or stills:
                res = enc.resolution
                for i, out in enumerate(to_uint8(np.asarray(losses.resize(jnp.asarray(img), res))
                                                 if size != res else img)):
                    r = ref[i] if size == res else np.asarray(to_uint8(losses.resize(
                        jnp.asarray(ref[i:i + 1], jnp.float32) / 127.5 - 1.0, res)))[0]
                    frame = np.concatenate([r, out, error_map(out, r)], axis=1)
                    if writer is not None:
                        writer.write(frame)
                    if lo + i in stills:
                        kept.append((lo + i, frame))
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    cols = fm.columns()
    cols["frame"] = cols["frame"] + first
    summary = metrics.summarise(cols)
    summary["identity_similarity"] = summary["arcface_cos"]
    if pasted_fm is not None:
        pcols = pasted_fm.columns()
        pcols.pop("frame")
        pcols["frame_psnr_db"] = np.asarray(frame_psnr)
        cols.update({f"paste_{k}": v for k, v in pcols.items()})
        psum = metrics.summarise({**pcols, "frame": cols["frame"]})
        psum["frame_psnr_db"] = metrics._finite_mean(frame_psnr)
        summary["paste_back"] = {k: v for k, v in psum.items() if k != "frames"}
    return cols, summary, kept


def _pasted_crops(enc, img, ref, originals, lo, frame_psnr):
    """(re-crops of the re-synthesis pasted into the original frames, the aligned input) of one chunk; appends
    each frame's whole-frame PSNR (pasted vs original) to `frame_psnr`."""
    from stylejax.align.warp import face_mask, paste_back as paste, render_crop

    size = ref.shape[1]
    mask = face_mask(size)
    out = []
    for i, face in enumerate(to_uint8(img)):
        frame = next(originals, None)
        if frame is None:
            raise metrics_error(f"the original video has fewer frames ({lo + i}) than the encoding ({enc.num_frames})")
        pasted = paste(frame, face, enc.quad[lo + i], mask)
        mse = np.mean((pasted.astype(np.float64) - frame.astype(np.float64)) ** 2)
        frame_psnr.append(10 * np.log10(255.0 ** 2 / mse) if mse > 0 else np.inf)
        out.append(render_crop(pasted, enc.quad[lo + i], size))
    return np.stack(out), ref


def metrics_error(msg):
    from stylejax.errors import UserError

    return UserError(msg)


def render_outputs(out, side_by_side=None):
    """render's outputs for `atomic.check_outputs`: videos, which --overwrite may replace only by videos."""
    from stylejax.io.atomic import Output
    from stylejax.io.video import is_mp4

    return [Output(out, "--out", is_mp4, "an mp4 video"),
            Output(side_by_side, "--side-by-side", is_mp4, "an mp4 video")]


def render_video(enc, g, flow, out, paste_back=None, side_by_side=None, aligned=None, overwrite=False, chunk=8,
                 mask="ellipse", feather=0.04, inputs=()):
    """Writes `out` (mp4). `paste_back`: the original video, composited through the encoding's quads.
    `side_by_side`: a second mp4 with the aligned input, the re-synthesis and an error map (needs `aligned`,
    the aligned frames [T, S, S, 3]). `inputs`: the other files read (the encoding, networks): no output may be
    one of them. Returns the number of frames written."""
    from stylejax.align.warp import face_mask, paste_back as paste
    from stylejax.io import atomic
    from stylejax.io.video import VideoError, VideoWriter, iter_frames, probe

    inputs = [paste_back, aligned if isinstance(aligned, str) else None, *inputs]
    real_out, side_by_side = atomic.check_outputs(render_outputs(out, side_by_side), inputs, overwrite)
    if paste_back is not None:
        if enc.quad is None:
            raise VideoError("this encoding has no alignment transforms: paste-back needs an encoding made from a "
                             "video with `python -m stylejax.encode --video`")
        info = probe(paste_back)
        if enc.frame_size is not None and tuple(enc.frame_size) != tuple(info.frame_size):
            raise VideoError(f"--paste-back {paste_back} is {info.frame_size[0]}x{info.frame_size[1]} but the encoding "
                             f"was made from a {enc.frame_size[0]}x{enc.frame_size[1]} video")
        originals = iter_frames(paste_back, info)
    sbs_writer = None
    if side_by_side:
        if aligned is None:
            raise VideoError("--side-by-side needs the aligned input frames (the encode work directory)")
        frames_in = np.load(aligned, mmap_mode="r") if isinstance(aligned, str) else aligned
        sbs_writer = VideoWriter(side_by_side, enc.fps)
    n, face = 0, None
    bar = cli.progress(total=enc.num_frames, desc="render", unit="frame")
    try:
        with VideoWriter(real_out, enc.fps) as writer:
            for lo, hi, images in iter_renders(enc, g, flow, chunk):
                for i, img in enumerate(to_uint8(images)):
                    t = lo + i
                    if paste_back is not None:
                        frame = next(originals, None)
                        if frame is None:
                            raise VideoError(f"--paste-back {paste_back} has fewer frames ({t}) than the encoding "
                                             f"({enc.num_frames})")
                        if face is None:
                            face = face_mask(img.shape[0], mask, feather)
                        writer.write(paste(frame, img, enc.quad[t], face))
                    else:
                        writer.write(apply_roll(img, enc.pose_deg[t, 2]))
                    if sbs_writer is not None:
                        ref = np.asarray(frames_in[t])
                        if ref.shape[0] != img.shape[0]:
                            import cv2
                            ref = cv2.resize(ref, img.shape[:2][::-1], interpolation=cv2.INTER_AREA)
                        sbs_writer.write(np.concatenate([ref, img, error_map(img, ref)], axis=1))
                    n += 1
                    bar.update(1)
        if sbs_writer is not None:
            sbs_writer.close()
    except BaseException:
        if sbs_writer is not None:
            sbs_writer.abort()
        raise
    finally:
        bar.close()
        if paste_back is not None:
            originals.close()
    return n


def still_frames(num_frames, count=4):
    """`count` frame indices spread evenly over the clip, first and last included."""
    return sorted({int(round(v)) for v in np.linspace(0, num_frames - 1, min(count, num_frames))})


def quality_report(enc, nets, aligned, folder, lpips_size=256, chunk=8, faces=True, extra=None, settings=None,
                   overwrite=True, inputs=(), originals=None, generator=None):
    """Evaluates `enc` against `aligned` and writes the report folder (stylejax.report: metrics.csv, metrics.json,
    plots, side_by_side.mp4, report.html) atomically; returns (columns, summary). `extra`: summary entries
    about the file (bytes); `settings`: recorded in the report; `generator`: the fine-tuned generator, if any."""
    from stylejax import report
    from stylejax.io import atomic

    with atomic.output_dir(folder, overwrite=overwrite, inputs=inputs, is_ours=report.is_report_dir,
                           what="report folder") as tmp:
        cols, summary, stills = evaluate(enc, nets, aligned, lpips_size, chunk, faces,
                                         side_by_side=os.path.join(tmp, "side_by_side.mp4"),
                                         stills=still_frames(enc.num_frames), originals=originals,
                                         generator=generator)
        summary.update(extra or {})
        report.write_report(tmp, cols, summary, enc.pose_deg, enc.offsets, enc.channels,
                            [(f"frame {t}", img) for t, img in stills], settings or {})
    return cols, summary


class CroppedVideo:
    """The aligned input of an encoding, cropped from the original video through the encoding's quads as stage 1
    cropped it (`render_crop`, cubic): a sequence of uint8 [S, S, 3] read front to back (slices in increasing
    order), so memory holds one chunk, not the video."""

    def __init__(self, video, quads, size):
        from stylejax.io.video import iter_frames, probe

        self.video, self.quads, self.size = video, np.asarray(quads), int(size)
        self.shape = (len(self.quads), self.size, self.size, 3)
        self._frames, self._next = iter_frames(video, probe(video)), 0

    def __len__(self):
        return len(self.quads)

    def __getitem__(self, index):
        from stylejax.align.warp import render_crop

        lo, hi, _ = index.indices(len(self)) if isinstance(index, slice) else (index, index + 1, 1)
        if lo < self._next:
            raise ValueError("CroppedVideo is read front to back")
        out = []
        while self._next < hi:
            frame = next(self._frames, None)
            if frame is None:
                raise metrics_error(f"{self.video} has fewer frames ({self._next}) than the encoding ({len(self)})")
            if self._next >= lo:
                out.append(render_crop(frame, self.quads[self._next], self.size))
            self._next += 1
        return np.stack(out) if isinstance(index, slice) else out[0]

    def close(self):
        self._frames.close()
