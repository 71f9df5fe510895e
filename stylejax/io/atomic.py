"""Output-path rules and write-then-rename, shared by every command that writes.

Rules (never lose a user's file):
- an output path is resolved (symlinks included) before anything is checked or removed;
- an empty or root-like path (a filesystem root, the home or current directory, or a folder holding one of
  them) is refused;
- an output never equals or holds an input, and never is the same file as one (hard links included);
- an existing folder is replaced only when it is empty, or when `overwrite` is given *and* it is one of ours
  (`is_ours`); an existing file only with `overwrite`, and only a regular file (never a device or a folder);
- everything is written to a hidden temporary sibling that replaces the output at the end (an atomic
  exchange where the OS has one), so a failure or Ctrl-C leaves the old output (or nothing) intact and no
  stray temporary files.

Validate early, write late: `check_output_dir` / `check_output_file` run the checks without writing, so a
command can refuse a bad `--out` before spending minutes on its work; `output_dir` / `output_file` repeat
them at the start and again just before the final rename.
"""
import contextlib
import ctypes
import json
import os
import shutil
import signal
import tempfile

from stylejax.errors import UserError


class OutputError(UserError):
    """An output path that cannot or must not be written."""


def resolve_output(path, what="output"):
    """Absolute, symlink-free form of an output path; refuses empty and root-like paths."""
    if path is None or not str(path).strip():
        raise OutputError(f"the {what} path is empty (an unset shell variable?); give a path")
    real = os.path.realpath(os.path.expanduser(os.fspath(path)))
    if os.path.dirname(real) == real:
        raise OutputError(f"refusing to use {path!r} ({real}) as the {what}: it is a filesystem root; "
                          "give a new sub-directory")
    places = [(name, os.path.realpath(p)) for name, p in (("the current directory", _cwd()),
                                                           ("your home directory", os.path.expanduser("~"))) if p]
    for relation, hit in (("is", lambda place: place == real), ("holds", lambda place: _inside(place, real))):
        for name, place in places:
            if hit(place):
                raise OutputError(f"refusing to use {path!r} ({real}) as the {what}: it {relation} {name}; "
                                  "give a new sub-directory")
    return real


def _cwd():
    try:
        return os.getcwd()
    except OSError:  # the current directory was removed
        return None


def _inside(path, folder):
    """True when `path` equals `folder` or lies inside it (both absolute and resolved)."""
    return path == folder or os.path.commonpath([path, folder]) == folder


def check_not_input(real_out, inputs, what="output"):
    """Refuses an output that equals or contains any of `inputs` (compared as resolved paths, and by inode
    so a hard link to an input is refused too), or that lies inside an input folder (a checkpoint, an
    aligned folder: what is read from there is not ours to add to or replace)."""
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        r = os.path.realpath(os.path.expanduser(os.fspath(inp)))
        if real_out != r and os.path.isdir(r) and _inside(real_out, r):
            raise OutputError(f"refusing to write the {what} {real_out} inside the input folder {r}; "
                              "choose a path outside it")
        same = _inside(r, real_out)
        if not same and os.path.exists(r) and os.path.exists(real_out):
            with contextlib.suppress(OSError):
                same = os.path.samefile(r, real_out)
        if same:
            raise OutputError(f"refusing to write the {what} {real_out}: it is or contains the input {r}; "
                              "choose another output path")


def _check_parent(real, what):
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write the {what} {real}: the directory {parent} does not exist; create it "
                          "first or choose another path")
    try:  # a real attempt: os.access cannot tell (as root, or on a read-only or virtual filesystem)
        os.rmdir(tempfile.mkdtemp(prefix=f".{os.path.basename(real)}.probe-", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot write the {what} {real}: {e.strerror} in {parent}; choose a writable "
                          "location") from None
    return parent


def _check_existing_dir(real, overwrite, is_ours, what):
    if not os.path.lexists(real):
        return
    if not os.path.isdir(real):
        raise OutputError(f"{real} exists and is not a directory; choose another path for the {what}")
    try:
        empty = not os.listdir(real)  # e.g. made by mkdir for us: nothing to lose
    except OSError as e:
        raise OutputError(f"cannot use {real} as the {what}: {e.strerror}; choose another path") from None
    if empty:
        return
    if not overwrite:
        raise OutputError(f"the {what} {real} already exists; choose another path or pass --overwrite")
    if is_ours is None or not is_ours(real):
        raise OutputError(f"refusing to replace {real}: --overwrite replaces only an earlier output of this "
                          f"command ({what}, holding nothing else); choose a new path")


def check_output_dir(path, overwrite=False, inputs=(), is_ours=None, what="output directory"):
    """All the checks of `output_dir`, without writing anything; returns the resolved path."""
    real = resolve_output(path, what)
    check_not_input(real, inputs, what)
    _check_parent(real, what)
    _check_existing_dir(real, overwrite, is_ours, what)
    return real


def check_output_file(path, overwrite=False, inputs=(), what="output file"):
    """All the checks of `output_file`, without writing anything; returns the resolved path."""
    real = resolve_output(path, what)
    check_not_input(real, inputs, what)
    _check_parent(real, what)
    if os.path.isdir(real):
        raise OutputError(f"{real} is a directory; give a file name for the {what}")
    if os.path.lexists(real):
        if not os.path.isfile(real):
            raise OutputError(f"{real} exists and is not a regular file; choose another path for the {what}")
        if not overwrite:
            raise OutputError(f"the {what} {real} already exists; choose another path or pass --overwrite")
    return real


def _temp_dir(real, kind, what):
    parent, name = os.path.split(real)
    try:
        tmp = tempfile.mkdtemp(prefix=f".{name}.{kind}-", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write the {what} {real}: {e.strerror} in {parent}; choose a writable "
                          "location") from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would otherwise become the output's mode
    return tmp


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b):
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _commit_dir(tmp, real, what):
    """Moves the finished `tmp` to `real`, replacing an existing folder. Returns the path still to be
    removed (the old output), or None. At every moment `real` is the old or the new output in full."""
    if not os.path.lexists(real):
        os.rename(tmp, real)
        return None
    if _exchange(tmp, real):
        return tmp  # now holds the old output
    old = _temp_dir(real, "old", what)  # an empty folder: rename() may replace it
    os.rename(real, old)
    try:
        os.rename(tmp, real)
    except BaseException:
        os.rename(old, real)
        raise
    return old


@contextlib.contextmanager
def _uninterrupted():
    """Holds Ctrl-C and SIGTERM (delivered afterwards) while outputs are swapped and temporaries removed."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask on this platform
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def output_dir(path, overwrite=False, inputs=(), is_ours=None, what="output directory"):
    """Yields a fresh temporary directory; on success it replaces `path` (see the module rules)."""
    real = check_output_dir(path, overwrite, inputs, is_ours, what)
    tmp = _temp_dir(real, "partial", what)
    leftover = tmp
    try:
        yield tmp
        # the run may have taken hours: whatever is at `real` now must pass the same checks
        _check_existing_dir(real, overwrite, is_ours, what)
        with _uninterrupted():
            leftover = _commit_dir(tmp, real, what)
            if leftover is not None:
                _remove(leftover)
                leftover = None
    finally:
        if leftover is not None:
            with _uninterrupted():
                _remove(leftover)


@contextlib.contextmanager
def output_file(path, overwrite=False, inputs=(), what="output file", suffix=""):
    """Yields a temporary file path in the same directory (not yet created); on success it is renamed to
    `path`. An existing file is replaced only with `overwrite`, never when it is an input."""
    real = check_output_file(path, overwrite, inputs, what)
    parent, name = os.path.split(real)
    tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}{suffix}")
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise OutputError(f"cannot write the {what} {real}: nothing was written")
        check_output_file(real, overwrite, (), what)
        with _uninterrupted():
            os.replace(tmp, real)
    finally:
        if os.path.lexists(tmp):
            with _uninterrupted():
                _remove(tmp)


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
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a {what}")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed {what} ({e})") from None
