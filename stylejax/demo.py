"""Self-contained demo: no downloads, random generator weights, real footage for alignment.

  python -m stylejax.demo --outdir out/demo [--video clip.mp4] [--frames 24]

1. Builds a StyleGAN2 generator with random weights (a narrow 128 px config, fast on a CPU), saves it as
   a stylejax checkpoint and loads it back, renders seeds 0-3 (`seeds.png`), checks that
   StyleSpace -> image equals W+ -> image, and edits one StyleSpace channel (`stylespace_edit.png`).
   Random weights give abstract textures, not faces: bring real weights with `python -m convert`.
2. Aligns the first frames of a talking-head video (default: the unaligned fixture in ../shared if
   present) with dlib landmarks and the FFHQ recipe, writes the aligned frames, transforms and a preview,
   and pastes the aligned frames back into the original (`pasted.mp4`).
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np

# ffmpeg is started with fork+exec after JAX is loaded; JAX's warning about forking a multithreaded
# process concerns children that keep running Python, which these do not.
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VIDEO = os.path.join(os.path.dirname(REPO), "shared", "fixtures", "4491301_unaligned.mp4")


def demo_generator(outdir):
    import imageio.v3 as iio
    import jax
    import jax.numpy as jnp

    from stylejax.generate import to_uint8
    from stylejax.nets.generator import Generator, GeneratorConfig, load_generator, save_generator
    from stylejax.nets.stylespace import channel_to_flat_index, edit_channels

    cfg = GeneratorConfig(resolution=128, z_dim=128, w_dim=128,
                          channels=((4, 128), (8, 128), (16, 64), (32, 64), (64, 32), (128, 16)))
    t = time.time()
    ckpt = os.path.join(outdir, "generator_random")
    save_generator(Generator.random(cfg, jax.random.PRNGKey(0)), ckpt, overwrite=True)
    g = load_generator(ckpt)
    z = np.concatenate([np.random.RandomState(s).randn(1, cfg.z_dim) for s in range(4)]).astype(np.float32)
    ws = g.mapping(z, truncation_psi=0.7)
    images = g.synthesize(ws, noise_mode="const")
    iio.imwrite(os.path.join(outdir, "seeds.png"), np.concatenate(list(to_uint8(images)), axis=1))
    styles = g.styles_from_ws(ws)
    same = float(jnp.abs(g.synthesize_from_styles(styles) - images).max())
    channel = "6_17"
    edited = g.synthesize_from_styles(edit_channels(styles, [channel], [8.0], cfg))
    iio.imwrite(os.path.join(outdir, "stylespace_edit.png"),
                np.concatenate([np.concatenate(list(to_uint8(images)), axis=1),
                                np.concatenate(list(to_uint8(edited)), axis=1)], axis=0))
    print(f"[generator] random {cfg.resolution}px generator -> {ckpt}; {len(styles)} StyleSpace layers, "
          f"{sum(s.shape[1] for s in styles)} channels; |styles->img - ws->img| = {same:.1e}; "
          f"edit of channel {channel} (flat index {channel_to_flat_index(channel, cfg)}) changed the images by "
          f"up to {float(jnp.abs(edited - images).max()):.2f}; {time.time() - t:.1f}s")


def demo_align(outdir, video, frames, size):
    from stylejax.align import align_video, paste_video

    t = time.time()
    aligned = os.path.join(outdir, "aligned")
    result = align_video(video, aligned, size=size, preview=True, max_frames=frames, overwrite=True)
    transforms = np.load(os.path.join(aligned, "transforms.npz"))
    roll = transforms["roll_deg"]
    print(f"[align] {len(roll)} frames of {os.path.basename(video)} -> {aligned} ({size}px); roll "
          f"{roll.min():+.1f}..{roll.max():+.1f} deg; {time.time() - t:.1f}s")
    pasted = os.path.join(outdir, "pasted.mp4")
    paste_video(video, aligned, os.path.join(aligned, "transforms.npz"), pasted)
    print(f"[paste] aligned frames composited back into the original -> {pasted}")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m stylejax.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outdir", default="out/demo")
    p.add_argument("--video", default=None, help=f"talking-head video (default: {DEFAULT_VIDEO} if present)")
    p.add_argument("--frames", type=int, default=24, help="frames to align")
    p.add_argument("--size", type=int, default=256, help="aligned crop size")
    args = p.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    demo_generator(args.outdir)
    video = args.video or (DEFAULT_VIDEO if os.path.isfile(DEFAULT_VIDEO) else None)
    if video is None:
        print("[align] skipped: no --video given and ../shared/fixtures is absent")
        return 0
    try:
        demo_align(args.outdir, video, args.frames, args.size)
    except ImportError as e:
        print(f"error: alignment needs the [align] extra (pip install -e '.[align]'): {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # AlignError / VideoError / LandmarkError: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
