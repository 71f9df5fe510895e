"""Render images from a converted StyleGAN2 generator.

  python -m stylejax.generate --checkpoint DIR --seeds 0-3 --trunc 0.7 --noise-mode const --outdir OUT
  python -m stylejax.generate --checkpoint DIR --ws latents.npy --outdir OUT --save-npy

`--seeds` draws z = numpy.random.RandomState(seed).randn(1, z_dim), as NVlabs generate.py does, so a seed
gives the same image in both. PNGs are written as seed%04d.png (or ws%04d.png for --ws);
`--save-npy` also writes the raw float32 images [B, H, W, 3] to OUT/images.npy.
OUT is written as a whole: a new folder (or an empty one), or with --overwrite a folder this command wrote
before (holding only its images); a failed or interrupted run leaves the old OUT untouched.
"""
import os
import re
import sys

import numpy as np
from absl import flags

from stylejax import cli
from stylejax.errors import UserError


class UsageError(UserError):
    pass


def parse_seeds(text):
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    seeds = []
    try:
        for part in str(text).split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-")
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise ValueError
                if hi - lo >= MAX_IMAGES:
                    raise UsageError(f"--seeds {text!r} asks for {hi - lo + 1} images, more than {MAX_IMAGES} "
                                     "in one run; split the range")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
            if len(seeds) > MAX_IMAGES:
                raise UsageError(f"--seeds {text!r} asks for more than {MAX_IMAGES} images in one run; "
                                 "split it over several runs")
    except ValueError:
        raise UsageError(f"bad --seeds {text!r}; use e.g. '0-3' or '1,5,9'") from None
    if any(s < 0 or s >= 2 ** 32 for s in seeds):
        raise UsageError(f"--seeds {text!r}: seeds must be in [0, 2**32)")
    return seeds


def to_uint8(images):
    """[-1, 1] floats -> uint8, rounding as NVlabs generate.py does."""
    return np.clip(np.asarray(images) * 127.5 + 128, 0, 255).astype(np.uint8)


MAX_IMAGES = 100_000  # one run; more is almost certainly a typo in --seeds


def define_flags(fv):
    flags.DEFINE_string("checkpoint", None, "converted generator directory", flag_values=fv)
    flags.DEFINE_string("seeds", None, "z seeds, e.g. 0-3 or 1,5,9", flag_values=fv)
    flags.DEFINE_string("ws", None, ".npy of W+ latents [B, num_ws, w_dim] (or [num_ws, w_dim])", flag_values=fv)
    flags.DEFINE_float("trunc", 1.0, "truncation psi (--seeds only; refused with --ws)", flag_values=fv)
    flags.DEFINE_integer("trunc-cutoff", None, "truncate only the first N ws rows (--seeds only)", flag_values=fv)
    flags.DEFINE_enum("noise-mode", "const", ["const", "random", "none"], "noise maps", flag_values=fv)
    flags.DEFINE_integer("noise-seed", 0, "PRNG seed for --noise-mode random (image i uses fold_in(key, i))",
                         flag_values=fv)
    flags.DEFINE_integer("batch", 8, "images per device call", flag_values=fv)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype of the convs", flag_values=fv)
    flags.DEFINE_string("outdir", None, "output directory (created if missing)", flag_values=fv)
    flags.DEFINE_bool("save-npy", False, "also write raw float32 images to OUTDIR/images.npy", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace an existing --outdir written by this command", flag_values=fv)


_OUR_FILE = re.compile(r"^(seed\d{4,}|ws\d{4,})\.png$|^images\.npy$")
# every PNG this command writes carries this tEXt chunk, right after the header: the mark that lets
# --overwrite tell our folder from one of the user's that happens to hold files with the same names
_PNG_MARK = (b"Software", b"stylejax.generate")


def write_png(path, img):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(*(v.decode() for v in _PNG_MARK))
    Image.fromarray(img).save(path, format="PNG", pnginfo=info)


def _is_our_png(path):
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"tEXt" + b"\x00".join(_PNG_MARK) in head


def is_generated_dir(path):
    """An --outdir this command wrote (what --overwrite may replace): only its marked PNGs and images.npy."""
    names = os.listdir(path)
    pngs = [n for n in names if n.endswith(".png")]
    return (bool(pngs) and all(_OUR_FILE.match(n) and os.path.isfile(os.path.join(path, n)) for n in names)
            and all(_is_our_png(os.path.join(path, n)) for n in pngs))


def main(argv=None):
    return cli.run("python -m stylejax.generate", __doc__, define_flags, run, argv)


def _read_ws(path, cfg):
    if not str(path).strip():
        raise UsageError("--ws is empty; give a .npy file of W+ latents [B, num_ws, w_dim]")
    if not os.path.isfile(path):
        raise UsageError(f"cannot read --ws {path}: " + ("it is a directory" if os.path.isdir(path) else "no such file"))
    try:
        ws = np.load(path, allow_pickle=False)
    except ValueError:
        raise UsageError(f"cannot read --ws {path}: not a .npy array file (save latents with numpy.save)") from None
    except OSError as e:
        raise UsageError(f"cannot read --ws {path}: {e}") from None
    if not isinstance(ws, np.ndarray):  # an .npz archive
        raise UsageError(f"cannot read --ws {path}: an .npz archive; pass one array saved with numpy.save")
    if ws.dtype.kind != "f":  # a cast would drop imaginary parts or parse strings
        raise UsageError(f"--ws {path} holds {ws.dtype} values; give real floating-point latents "
                         "(float16, float32 or float64)")
    ws = ws.astype(np.float32)
    if ws.ndim == 2:
        ws = ws[None]
    if ws.ndim != 3 or ws.shape[1:] != (cfg.num_ws, cfg.w_dim):
        raise UsageError(f"--ws has shape {list(ws.shape)}, expected [B, {cfg.num_ws}, {cfg.w_dim}] for this generator")
    if len(ws) == 0:
        raise UsageError(f"--ws {path} holds no latents (shape {list(ws.shape)})")
    if not np.all(np.isfinite(ws)):
        raise UsageError(f"--ws {path} contains NaN or inf values (or values beyond float32's range)")
    return ws


def run(args):
    import jax
    import jax.numpy as jnp

    from stylejax.io import atomic
    from stylejax.io.checkpoint import load

    cli.require(args, "checkpoint", "outdir")
    if (args.seeds is None) == (args.ws is None):
        raise UsageError("give exactly one of --seeds or --ws")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if not np.isfinite(args.trunc):
        raise UsageError(f"--trunc must be a finite number, got {args.trunc}")
    if args.ws is not None and (args.trunc != 1.0 or args.trunc_cutoff is not None):
        # truncation happens in the mapping network, which --ws latents skip: refuse rather than ignore it
        raise UsageError("--trunc and --trunc-cutoff apply to --seeds only (the mapping network truncates); "
                         "--ws latents are rendered as given: truncate them before saving, or drop --trunc")
    if args.trunc_cutoff is not None and args.trunc_cutoff < 0:
        raise UsageError(f"--trunc-cutoff must be >= 0 (the number of ws rows to truncate), got {args.trunc_cutoff}")
    outdir = atomic.resolve_output(args.outdir, "--outdir")
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise UsageError(f"--outdir {outdir} is a file; give a directory")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    g = load(args.checkpoint, "stylegan2")
    cfg = g.config
    if seeds is not None:
        names = [f"seed{s:04d}" for s in seeds]
        ws = None
    else:
        ws = _read_ws(args.ws, cfg)
        names = [f"ws{i:04d}" for i in range(len(ws))]
    inputs = [args.checkpoint, args.ws]
    atomic.check_output_dir(outdir, args.overwrite, inputs, is_generated_dir, "--outdir")
    dtype = jnp.dtype(args.dtype)
    noise_mode = args.noise_mode

    # jit at the boundary: the generator is an argument, not a constant baked into the program
    @jax.jit
    def render(g, ws, keys):
        if noise_mode != "random":
            return g.synthesize(ws, noise_mode, dtype=dtype)
        # one noise key per image (fold_in of its index): results do not depend on --batch
        return jax.vmap(lambda w, k: g.synthesize(w[None], "random", rng=k, dtype=dtype)[0])(ws, keys)

    @jax.jit
    def mapping(g, z):
        return g.mapping(z, args.trunc, args.trunc_cutoff)

    key = jax.random.PRNGKey(args.noise_seed)
    with atomic.output_dir(outdir, args.overwrite, inputs, is_generated_dir, "--outdir") as tmp:
        _render_all(tmp, names, seeds, ws, cfg, args, g, key, mapping, render)
    return {"message": f"wrote {len(names)} images ({cfg.resolution}x{cfg.resolution}) to {outdir}",
            "images": len(names), "resolution": cfg.resolution, "outdir": outdir}


def _render_all(outdir, names, seeds, ws, cfg, args, g, key, mapping, render):
    import jax
    import jax.numpy as jnp

    npy = None
    bar = cli.progress(total=len(names), desc="generate", unit="img")
    try:
        for start in range(0, len(names), args.batch):
            if ws is None:
                z = np.concatenate([np.random.RandomState(s).randn(1, cfg.z_dim)
                                    for s in seeds[start:start + args.batch]]).astype(np.float32)
                batch_ws = mapping(g, jnp.asarray(z))
            else:
                batch_ws = jnp.asarray(ws[start:start + args.batch])
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(start, start + len(batch_ws)))
            images = np.asarray(render(g, batch_ws, keys))
            for name, img in zip(names[start:], to_uint8(images)):
                write_png(os.path.join(outdir, f"{name}.png"), img)
            if args.save_npy:
                if npy is None:  # outdir is output_dir's temporary folder: no partial name needed
                    npy = np.lib.format.open_memmap(os.path.join(outdir, "images.npy"), mode="w+",
                                                    dtype=np.float32, shape=(len(names),) + images.shape[1:])
                npy[start:start + len(images)] = images
            bar.update(len(images))
        if npy is not None:
            npy.flush()
    finally:
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
