"""Stage `render`: encoding -> frames at the generator's resolution, roll re-applied; optional paste-back into
the original video and a side-by-side with the aligned input and an error map. Also the re-synthesis
metrics of `encode` (PSNR, SSIM, LPIPS, identity similarity against the aligned input).
"""

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


def evaluate(enc, nets, workdir, config, chunk=8):
    """Re-synthesis from `enc` (as saved: float16 parameters) against the aligned frames: mean PSNR, SSIM,
    LPIPS, and ArcFace identity similarity when an ArcFace network is loaded."""
    frames = workdir.frames()
    size = frames.shape[1]
    loss_size = min(int(config.loss_size), nets.generator.config.resolution)
    score = jax.jit(lambda lp, a, b: (metrics.psnr(a, b), metrics.ssim(a, b)))
    lp_fn = jax.jit(lambda lp, a, b: lp(losses.resize(a, loss_size), losses.resize(b, loss_size)))
    id_fn = jax.jit(lambda af, a, b: 1.0 - af.id_loss_per_sample(a, b))
    psnr, ssim, lp, ids = [], [], [], []
    for lo, hi, img in iter_renders(enc, nets.generator, nets.styleflow, chunk):
        target = frames[lo:hi].astype(np.float32) / 127.5 - 1.0
        if img.shape[1] != size:
            img = np.asarray(losses.resize(jnp.asarray(img), size))
        p, s = score(None, jnp.asarray(img), jnp.asarray(target))
        psnr.append(np.asarray(p)), ssim.append(np.asarray(s))
        lp.append(np.asarray(lp_fn(nets.lpips, jnp.asarray(img), jnp.asarray(target))))
        if nets.arcface is not None:
            ids.append(np.asarray(id_fn(nets.arcface, jnp.asarray(img), jnp.asarray(target))))
    psnr = np.concatenate(psnr)
    finite = psnr[np.isfinite(psnr)]
    return {"psnr_db": float(np.mean(finite)) if len(finite) else float("inf"),
            "psnr_db_min": float(np.min(psnr)), "ssim": float(np.mean(np.concatenate(ssim))),
            "lpips": float(np.mean(np.concatenate(lp))),
            "identity_similarity": float(np.mean(np.concatenate(ids))) if ids else None}


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
