"""Output-path rules and write-then-rename, shared by every command that writes.

Rules (never lose a user's file):
- an output path is resolved (symlinks included) before anything is checked or removed;
- an empty or root-like path (``/``, the home or current directory, a filesystem root) is refused;
- an existing folder is replaced only when it is empty, or when `overwrite` is given *and* it is one of ours
  (`is_ours`); never when it equals or holds any input;
- everything is written to a temporary sibling that is renamed into place at the end, so a failure leaves
  the old output (or nothing) intact and no stray temporary files.
"""
import contextlib
import json
import os
import shutil

from stylejax.errors import UserError


class OutputError(UserError):
    """An output path that cannot or must not be written."""


def resolve_output(path, what="output"):
    """Absolute, symlink-free form of an output path; refuses empty and root-like paths."""
    if path is None or not str(path).strip():
        raise OutputError(f"the {what} path is empty; give a path for the {what} (e.g. --out DIR)")
    real = os.path.realpath(os.path.expanduser(os.fspath(path)))
    forbidden = {os.path.realpath(p) for p in ("/", os.path.expanduser("~"), os.getcwd())}
    if real in forbidden or os.path.dirname(real) == real:
        raise OutputError(f"refusing to use {path!r} ({real}) as the {what}: it is a root, home or the current "
                          "directory; give a new sub-directory")
    return real


def check_not_input(real_out, inputs, what="output"):
    """Refuses an output that equals or contains any of `inputs` (compared as resolved paths)."""
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        r = os.path.realpath(os.fspath(inp))
        if r == real_out or os.path.commonpath([r, real_out]) == real_out:
            raise OutputError(f"refusing to write the {what} {real_out}: it is or contains the input {r}; "
                              "choose another output path")


@contextlib.contextmanager
def output_dir(path, overwrite=False, inputs=(), is_ours=None, what="output directory"):
    """Yields a fresh temporary directory; on success it replaces `path` (see the module rules)."""
    real = resolve_output(path, what)
    check_not_input(real, inputs, what)
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {real}: the parent directory {parent} does not exist")
    if os.path.lexists(real):
        if not os.path.isdir(real):
            raise OutputError(f"{real} exists and is not a directory; choose another path for the {what}")
        empty = not os.listdir(real)  # e.g. made by mkdir for us: nothing to lose
        if not empty and not overwrite:
            raise OutputError(f"{what} {real} already exists; choose another path or pass --overwrite")
        if not empty and (is_ours is None or not is_ours(real)):
            raise OutputError(f"refusing to replace {real}: it is not a {what} written by stylejax "
                              "(choose a new path)")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {real}: no write permission in {parent}")
    tmp = f"{real}.partial-{os.getpid()}"
    try:
        os.makedirs(tmp)
    except OSError as e:
        raise OutputError(f"cannot create {tmp}: {e.strerror}") from None
    try:
        yield tmp
        if os.path.lexists(real):
            old = f"{real}.old-{os.getpid()}"
            os.rename(real, old)
            os.rename(tmp, real)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, real)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def output_file(path, overwrite=False, inputs=(), what="output file", suffix=""):
    """Yields a temporary file path in the same directory; on success it is renamed to `path`.
    An existing file is replaced only with `overwrite`, never when it is an input."""
    real = resolve_output(path, what)
    check_not_input(real, inputs, what)
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {real}: the directory {parent} does not exist")
    if os.path.isdir(real):
        raise OutputError(f"{real} is a directory; give a file name for the {what}")
    if os.path.lexists(real) and not overwrite:
        raise OutputError(f"{what} {real} already exists; choose another path or pass --overwrite")
    tmp = os.path.join(parent, f".{os.path.basename(real)}.partial-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(path, data):
    """Writes `data` to `path` through a temporary sibling and fsync, then an atomic rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path, what="JSON file"):
    """Parsed JSON, or a one-line UserError naming the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except ValueError as e:
        raise UserError(f"{path}: malformed {what} ({e})") from None
