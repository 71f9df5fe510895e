"""Output-path rules and write-then-rename, shared by every command that writes.

Rules (never lose a user's file):
- an output path is resolved (symlinks included) before anything is checked or removed;
- an empty or root-like path (a filesystem root, the home or current directory, or a folder holding one of
  them) is refused;
- an output never equals or holds an input, and never is the same file as one (hard links included), with
  or without `overwrite`; two outputs of one command never share a path;
- an existing folder is replaced only when it is empty, or when `overwrite` is given *and* it is one of ours
  (`is_ours`); an existing file only with `overwrite`, only a regular file (never a device or a folder), and
  only one of the kind the command writes (`is_ours`: a video for render, an encoding for encode);
- a file output is never written through a symbolic link (the link would lead onto someone else's file);
- everything is written to a hidden temporary sibling that replaces the output at the end (an atomic
  exchange where the OS has one), so a failure or Ctrl-C leaves the old output (or nothing) intact and no
  stray temporary files. Each temporary `.NAME.partial-PID-TOKEN` is claimed by a lock file beside it that
  its writer holds locked (flock) while it lives: after a `kill -9` the next writer of NAME finds the lock
  free, so it can prove the temporary is a dead writer's and removes it (`Temporary`, `remove_stale`).

Validate early, write late: `check_outputs` runs every check for all of a command's outputs against all of
its inputs without writing, so a command refuses a bad output before it creates anything or spends minutes on
its work; `check_output_dir` / `check_output_file` do it for one output, and `output_dir` / `output_file`
repeat the checks at the start and again just before the final rename.
"""
import contextlib
import ctypes
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
from typing import Callable, NamedTuple, Optional

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


def _check_not_a_link(path, what):
    """A file output is written where its own name is, never through a symbolic link to elsewhere."""
    given = os.path.expanduser(os.fspath(path))
    if os.path.islink(given):
        raise OutputError(f"the {what} {path} is a symbolic link (to {os.readlink(given)}); refusing to write "
                          "through it: give the path of a real file or a new one")


def _check_existing_file(real, overwrite, is_ours, kind, what):
    if os.path.isdir(real):
        raise OutputError(f"{real} is a directory; give a file name for the {what}")
    if not os.path.lexists(real):
        return
    if not os.path.isfile(real):
        raise OutputError(f"{real} exists and is not a regular file; choose another path for the {what}")
    if not overwrite:
        raise OutputError(f"the {what} {real} already exists; choose another path or pass --overwrite")
    if is_ours is not None and not is_ours(real):
        raise OutputError(f"refusing to replace {real}: it is not {kind or 'an earlier output of this command'} "
                          "(--overwrite replaces only a file of the kind this command writes); choose a new path")


def check_output_file(path, overwrite=False, inputs=(), what="output file", is_ours=None, kind=None):
    """All the checks of `output_file`, without writing anything; returns the resolved path. `is_ours(path)`:
    whether an existing file is of the kind this command writes (`kind` names it in the message)."""
    real = resolve_output(path, what)
    check_not_input(real, inputs, what)
    _check_not_a_link(path, what)
    _check_parent(real, what)
    _check_existing_file(real, overwrite, is_ours, kind, what)
    return real


class Output(NamedTuple):
    """One output of a command, for `check_outputs`."""
    path: Optional[str]  # None: not asked for this run (skipped)
    what: str  # how the user named it, e.g. "--out"
    is_ours: Optional[Callable[[str], bool]] = None  # what --overwrite may replace (or a folder may be resumed)
    kind: Optional[str] = None  # the kind of file is_ours accepts, for messages ("an mp4 video")
    folder: bool = False
    resume: bool = False  # a folder of ours is used as it is (a work directory), without --overwrite


def check_outputs(outputs, inputs=(), overwrite=False):
    """The output rule of every command, applied before it creates anything or starts its work: each output is
    checked as `check_output_file` / `check_output_dir` do (never an input, whatever `overwrite` says; a
    writable place; an existing file or folder only of the kind the command writes), and no two outputs share a
    path or lie one inside the other (except a file inside a `resume` folder: an encoding in its work
    directory). `inputs`: every path the command reads (None entries are skipped).
    Returns the resolved paths, in order (None for skipped outputs)."""
    inputs = [i for i in inputs if i is not None and str(i) != ""]
    reals = [None if out.path is None else resolve_output(out.path, out.what) for out in outputs]
    kept = [(out, real) for out, real in zip(outputs, reals) if real is not None]
    # a file kept in a work directory (ours, resumed, never removed as a whole) is allowed, even before the
    # work directory exists
    in_workdir = {real: other_real for out, real in kept if not out.folder
                  for other, other_real in kept if other.resume and real != other_real and _inside(real, other_real)}
    for i, (out, real) in enumerate(kept):
        check_not_input(real, inputs, out.what)
        for other, other_real in kept[:i]:
            if in_workdir.get(real) == other_real or in_workdir.get(other_real) == real:
                continue
            if _inside(real, other_real) or _inside(other_real, real):
                raise OutputError(f"the {out.what} {real} and the {other.what} {other_real} are the same path or "
                                  "one holds the other; give each output its own path")
        if not out.folder:
            _check_not_a_link(out.path, out.what)
        if real in in_workdir and not os.path.lexists(in_workdir[real]):
            continue  # in a work directory still to be made: that folder's own checks cover the place
        _check_parent(real, out.what)
        if not out.folder:
            _check_existing_file(real, overwrite, out.is_ours, out.kind, out.what)
        elif out.resume and os.path.isdir(real) and out.is_ours is not None and out.is_ours(real):
            pass  # ours to continue in
        elif out.resume and os.path.lexists(real) and (not os.path.isdir(real) or os.listdir(real)):
            raise OutputError(f"the {out.what} {real} exists and is not {out.kind or 'one of ours'}; give a new or "
                              "empty directory")
        else:
            _check_existing_dir(real, overwrite, out.is_ours, out.what)
    return reals


_CLAIM = b"stylejax temporary output; its writer holds this file locked while it runs\n"
_LIVE = {}  # id -> Temporary: this process's claims, for remove_live_temporaries
# held while outputs are swapped into place and temporaries removed: an emergency exit waits for it
_SWAPPING = threading.RLock()


class Temporary:
    """A hidden temporary sibling of the output `path`: `.NAME.KIND-PID-TOKEN[suffix]` (`self.path`, not yet
    created), claimed by the lock file `.NAME.KIND-PID-TOKEN.lock` beside it, which this process holds locked
    (flock) until `release`. The kernel drops the lock when its holder dies, even by `kill -9`, so a later
    writer of NAME can prove a temporary is a dead writer's (its lock file says it is a claim and nobody holds
    it) and remove it; a living writer's temporaries and anything else are left alone. Creating one first
    removes the stale temporaries of the same output (`remove_stale`)."""

    def __init__(self, path, suffix="", kind="partial"):
        parent, name = os.path.split(os.path.abspath(os.fspath(path)))
        remove_stale(os.path.join(parent, name))
        self.stem = os.path.join(parent, f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
        self.path = self.stem + suffix
        self._lock = self.stem + ".lock"
        fd = os.open(self._lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, _CLAIM)  # written once locked: an unlocked claim always has its full text
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(self._lock)
            raise
        self._fd = fd
        _LIVE[id(self)] = self

    def release(self):
        """Removes the temporary if it is still there, then the claim (in that order: a claim never outlives
        what it claims unless this process is killed in between)."""
        with _SWAPPING:  # one thread at a time: the command's, or a signal's emergency exit
            if self._fd is None:
                return
            if os.path.lexists(self.path):
                _remove(self.path)
            with contextlib.suppress(OSError):
                os.remove(self._lock)
            os.close(self._fd)
            self._fd = None
            _LIVE.pop(id(self), None)


def remove_live_temporaries(timeout=30.0):
    """Removes every temporary this process has claimed and not released yet: for a command ended by a
    signal while its main thread cannot run its `finally` blocks (`stylejax.cli`). Waits (up to `timeout`
    seconds) for an output being swapped into place, so an output is never left half-replaced."""
    held = _SWAPPING.acquire(timeout=timeout)
    try:
        for claim in list(_LIVE.values()):
            with contextlib.suppress(Exception):
                claim.release()
    finally:
        if held:
            _SWAPPING.release()


def remove_stale(path):
    """Removes the temporaries that writers of `path` left when they were killed: every `.NAME.*-PID-TOKEN*`
    beside it whose lock file holds our claim text and is locked by nobody (and what such a temporary's own
    temporaries left, `..NAME.*-PID-TOKEN*`). Returns the number of claims removed."""
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        entries = os.listdir(parent)
    except OSError:
        return 0
    claim_file = re.compile(r"(?P<stem>" + re.escape(f".{name}.") + r"(?:partial|old)-\d+-[0-9a-f]{8})\.lock")
    removed = 0
    for entry in entries:
        m = claim_file.fullmatch(entry)
        if not m:
            continue
        lock = os.path.join(parent, entry)
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if os.read(fd, len(_CLAIM) + 1) != _CLAIM:
                continue  # not a claim of ours (or one whose writer is still writing it)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer is alive
            stem = m.group("stem")
            for other in os.listdir(parent):
                if other != entry and (other.startswith(stem) or other.startswith("." + stem)):
                    _remove(os.path.join(parent, other))
            os.remove(lock)
            removed += 1
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _temp_dir(real, kind, what):
    """An empty claimed folder beside `real`: (Temporary, its path)."""
    try:
        tmp = Temporary(real, kind=kind)
        os.mkdir(tmp.path)
    except OSError as e:
        parent = os.path.dirname(real)
        raise OutputError(f"cannot write the {what} {real}: {e.strerror} in {parent}; choose a writable "
                          "location") from None
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


def _commit_dir(tmp, real, what, claims):
    """Moves the finished `tmp` to `real`, replacing an existing folder. Returns the path still to be
    removed (the old output), or None. At every moment `real` is the old or the new output in full."""
    if not os.path.lexists(real):
        os.rename(tmp, real)
        return None
    if _exchange(tmp, real):
        return tmp  # now holds the old output
    old = _temp_dir(real, "old", what)  # an empty folder: rename() may replace it
    claims.append(old)
    os.rename(real, old.path)
    try:
        os.rename(tmp, real)
    except BaseException:
        os.rename(old.path, real)
        raise
    return old.path


@contextlib.contextmanager
def _uninterrupted():
    """Holds Ctrl-C and SIGTERM (delivered afterwards) while outputs are swapped and temporaries removed;
    an emergency exit from another thread (`remove_live_temporaries`) waits for it too."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask on this platform
        old = None
    try:
        with _SWAPPING:
            yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def output_dir(path, overwrite=False, inputs=(), is_ours=None, what="output directory"):
    """Yields a fresh temporary directory; on success it replaces `path` (see the module rules)."""
    real = check_output_dir(path, overwrite, inputs, is_ours, what)
    claims = [_temp_dir(real, "partial", what)]
    tmp = leftover = claims[0].path
    try:
        yield tmp
        # the run may have taken hours: whatever is at `real` now must pass the same checks
        _check_existing_dir(real, overwrite, is_ours, what)
        with _uninterrupted():
            leftover = _commit_dir(tmp, real, what, claims)
            if leftover is not None:
                _remove(leftover)
                leftover = None
    finally:
        with _uninterrupted():
            if leftover is not None:
                _remove(leftover)
            for claim in claims:  # each temporary is gone by now (moved into place or removed)
                claim.release()


@contextlib.contextmanager
def output_file(path, overwrite=False, inputs=(), what="output file", suffix="", is_ours=None, kind=None):
    """Yields a temporary file path in the same directory (not yet created); on success it is renamed to
    `path`. An existing file is replaced only with `overwrite`, only when `is_ours` accepts it (a file of the
    kind this command writes), never through a symbolic link and never when it is an input."""
    real = check_output_file(path, overwrite, inputs, what, is_ours, kind)
    try:
        claim = Temporary(real, suffix)
    except OSError as e:
        raise OutputError(f"cannot write the {what} {real}: {e.strerror} in {os.path.dirname(real)}; choose a "
                          "writable location") from None
    tmp = claim.path
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise OutputError(f"cannot write the {what} {real}: nothing was written")
        check_output_file(path, overwrite, (), what, is_ours, kind)
        with _uninterrupted():
            os.replace(tmp, real)
    finally:
        with _uninterrupted():
            claim.release()


def write_bytes(path, data):
    """Writes `data` to `path` through a claimed temporary sibling and fsync, then an atomic rename."""
    claim = Temporary(path)
    try:
        with open(claim.path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(claim.path, path)
    finally:
        claim.release()


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
