"""The alignment transforms file `transforms.npz`: per-frame crop quads and what paste-back needs.

Arrays: `quad [T,4,2]` (float64, original-frame px, corners TL, BL, BR, TR), `roll_deg [T]`,
`landmarks [T,68,2]`, `valid [T]`, `fps`, `frame_size` (w, h), `size`, `keep_roll`, `center [T,2]`,
`x_axis [T,2]`, `sigmas`. Plain arrays only: read without pickle.
"""
import os

import numpy as np

from stylejax.errors import UserError

FILE = "transforms.npz"
REQUIRED = ("quad", "frame_size")


class TransformsError(UserError):
    """A transforms file that cannot be read."""


def save_transforms(path, **arrays):
    """Writes the arrays to `path` (an .npz) through a temporary file and an atomic rename."""
    tmp = f"{path}.partial-{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_transforms(path):
    """transforms.npz (or a directory holding one) as a dict of numpy arrays."""
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = os.path.join(path, FILE)
        if not os.path.exists(inside):
            raise TransformsError(f"cannot read transforms: the folder {path} holds no {FILE}; give the folder "
                                  f"written by `python -m stylejax.align` or its {FILE}")
        path = inside
    if not os.path.exists(path):
        raise TransformsError(f"cannot read transforms {path}: no such file")
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)  # mmap: a large .npy given by mistake is not read
    except OSError as err:
        raise TransformsError(f"cannot read transforms {path}: {err.strerror or err}") from None
    except Exception:  # numpy's own message would talk about pickles: not what the user needs to know
        data = None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise TransformsError(f"cannot read transforms {path}: not an .npz archive (expected the {FILE} "
                              "written by `python -m stylejax.align`)")
    try:
        with data:
            tf = {k: data[k] for k in data.files}
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "pickle" in msg:
            raise TransformsError(f"cannot read transforms {path}: it holds Python objects, not the plain arrays "
                                  f"of a {FILE}") from None
        raise TransformsError(f"cannot read transforms {path}: a damaged .npz ({msg})") from None
    for key in REQUIRED:
        if key not in tf:
            raise TransformsError(f"cannot read transforms {path}: it has no '{key}' array")
    quad = tf["quad"]
    if quad.ndim != 3 or quad.shape[1:] != (4, 2) or not np.all(np.isfinite(quad)):
        raise TransformsError(f"cannot read transforms {path}: 'quad' must be finite [T, 4, 2], got {list(quad.shape)}")
    return tf
