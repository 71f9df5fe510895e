"""The output folder of `python -m stylejax.batch`: which videos, who encodes which, what is finished.

    OUT/
      batch.json               marks the folder as a batch output; the settings its encodings were made with
      index.json               frame counts of the listed videos (probed once, reused by reruns)
      encodings/<id>.enc       finished encodings only, each renamed into place when complete
      results/<key>.json       one record per finished or failed video (status, reason, frames, metrics, ...)
      work/<key>/              the work directory of an unfinished video (removed once its encoding is in place)
      work/<key>.lock          locked (fcntl) by the process working on that video
      processes/<i>-of-<n>.json   each process's statistics of its latest run
      summary.csv, summary.json   the whole batch, written once all processes are done
      compile-cache/           JAX's persistent compilation cache (unless JAX_COMPILATION_CACHE_DIR is set)

A video's `id` is its path relative to the folder the videos were listed from (without the extension); its
encoding mirrors that tree under `encodings/`. `key` is the id as one file name ('/' -> '%2F').

Exactly once: a video is finished when `encodings/<id>.enc` exists; the encoding is first written and
evaluated inside the video's work directory, its record is written next to it, and only then is it linked
into `encodings/` (never replacing a file there: that link is the commit point), its record moved to
`results/` and the work directory removed. Whoever works on a video holds its lock file (a POSIX record
lock: released by the kernel when the process dies, `kill -9` included), and checks again under the lock
that the video is not finished, so two processes never encode one video at once, whether they belong to one
run (which splits the list between them) or to two overlapping runs; a rerun continues an unfinished video
from its work directory, whichever process gets it. OUT must be on a file system every process sees, with
working POSIX locks (local disk, NFS, Lustre, GPFS, Filestore).

Nothing here imports JAX: the index, the split, the locks and the records are plain files.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fcntl
import glob
import heapq
import io
import json
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from stylejax.errors import UserError
from stylejax.io import atomic

MARKER = "batch.json"
COMPILE_CACHE = "compile-cache"  # JAX's persistent compilation cache (made before the marker: see stylejax.batch)
ENCODING_SUFFIX = ".enc"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts",
                    ".mts", ".y4m")
SUMMARY_COLUMNS = ("id", "video", "status", "reason", "frames", "seconds", "psnr_db", "ssim", "lpips",
                   "identity_similarity", "bytes", "process")


class BatchError(UserError):
    """A video list or batch folder the batch cannot use."""


# ------------------------------------------------------------------------------------------------ the video list

@dataclasses.dataclass(frozen=True)
class Video:
    id: str    # path relative to the listing's root, without the extension ('/' separated)
    path: str  # absolute

    @property
    def key(self):
        """The id as one file name."""
        return self.id.replace("%", "%25").replace("/", "%2F")


def list_videos(spec: str) -> list[Video]:
    """The videos of `--videos`: a directory (its video files, recursively, sorted), a glob pattern (sorted;
    quote it), or a text file with one path a line (relative to the file's folder; `#` comments and blank
    lines ignored; list order kept). Ids are paths relative to the directory, the pattern's fixed part, or
    the deepest folder holding every listed video."""
    if spec is None or not str(spec).strip():
        raise BatchError("--videos is empty; give a list file, a directory or a quoted glob pattern")
    spec = os.path.expanduser(str(spec))
    if glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        root = _fixed_prefix_dir(spec)
        what = f"the pattern {spec!r}"
    elif os.path.isdir(spec):
        paths = sorted(_walk_videos(spec))
        root = spec
        what = f"the folder {spec} (looked for {', '.join(VIDEO_EXTENSIONS)})"
    elif os.path.isfile(spec):
        if spec.lower().endswith(VIDEO_EXTENSIONS):
            paths, root, what = [spec], os.path.dirname(os.path.abspath(spec)), spec
        else:
            paths = _read_list(spec)
            root = None
            what = f"the list {spec}"
    else:
        raise BatchError(f"--videos {spec}: no such file or folder; give a list file, a directory or a quoted glob "
                         "pattern")
    if not paths:
        raise BatchError(f"no videos in {what}")
    paths = [os.path.abspath(p) for p in paths]
    if root is None:
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    root = os.path.abspath(root)
    videos, seen = [], {}
    for p in paths:
        vid = os.path.splitext(os.path.relpath(p, root))[0].replace(os.sep, "/")
        if vid in seen:
            raise BatchError(f"--videos lists {seen[vid]} and {p}, which would both be encoded as "
                             f"encodings/{vid}{ENCODING_SUFFIX}; list each video once, or rename one")
        seen[vid] = p
        videos.append(Video(vid, p))
    return videos


def _walk_videos(top):
    """Video files under `top`, following links to folders but each folder once (a link cycle ends)."""
    seen = set()
    for d, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        yield from (os.path.join(d, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS) and not f.startswith("."))


def _fixed_prefix_dir(pattern):
    parts = []
    for part in os.path.abspath(pattern).split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or os.sep


def _read_list(path):
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise BatchError(f"--videos {path} is not a text list of video paths (one a line)") from None
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(os.path.join(base, os.path.expanduser(line)))
    return out


# ------------------------------------------------------------------------------------------------ locks

_HELD = set()  # lock files this process holds: POSIX locks are per process, so never open one twice


class VideoLock:
    """An exclusive lock on one video, held by one process: an fcntl record lock on `path`, which the kernel
    (or the NFS server) releases when the process dies. The file records who holds it, for messages."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def acquire(self, info: dict) -> bool:
        """Takes the lock without waiting; False when another process holds it."""
        if self.path in _HELD:
            return False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    return False
                raise BatchError(f"cannot lock {self.path}: {e.strerror}; the batch folder needs a file system with "
                                 "POSIX locks (local disk, NFS, Lustre)") from None
            # the previous holder may have removed the file between our open and our lock: lock the current one
            try:
                same = _same_file(fd, self.path)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self.fd = fd
        _HELD.add(self.path)
        return True

    def holder(self) -> str:
        """Who holds the lock (read from the file; only for a lock this process does not hold)."""
        if self.path in _HELD:
            return "this process"
        try:
            with open(self.path) as f:  # never a lock we hold: closing would release it
                info = json.loads(f.read() or "{}")
            return f"{info.get('host', '?')} pid {info.get('pid', '?')}"
        except (OSError, ValueError):
            return "another process"

    def release(self, remove=True):
        if self.fd is None:
            return
        if remove:  # while still holding it: a waiter that opened the old file retries on the new one
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        _HELD.discard(self.path)
        os.close(self.fd)
        self.fd = None


def _same_file(fd, path):
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def waiting_lock(path):
    """A blocking exclusive lock on `path` (index and summary updates)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ the folder

def host_info(process_index=0, num_processes=1):
    return {"host": socket.gethostname(), "pid": os.getpid(), "process": int(process_index),
            "processes": int(num_processes)}


class BatchDir:
    """The batch output folder (see the module docstring). `settings`: what the encodings depend on (config,
    network fingerprints); a folder made with other settings is refused."""

    def __init__(self, path, settings: dict, inputs=()):
        real = self.check(path, inputs)
        with contextlib.suppress(FileExistsError):  # another process of this run made it first
            os.mkdir(real)
        self.path = real
        self._check_settings(os.path.join(real, MARKER), settings)
        for sub in ("encodings", "results", "work", "processes"):
            os.makedirs(os.path.join(real, sub), exist_ok=True)

    @staticmethod
    def check(path, inputs=()):
        """The checks of --out that need no settings (creates nothing; `atomic.check_outputs`: never an input
        or inside one, a writable place, a new or empty folder or an earlier batch output, which is resumed);
        returns the resolved path."""
        return atomic.check_outputs([atomic.Output(path, "--out", is_batch_folder,
                                                   f"a batch output (a folder holding {MARKER})", folder=True,
                                                   resume=True)], inputs)[0]

    def _check_settings(self, marker, settings):
        want = {"stylejax_batch": 1, "settings": settings}
        if not os.path.isfile(marker):
            claim = atomic.Temporary(marker)  # a claimed temporary: the next run removes it after a kill -9
            try:
                with open(claim.path, "x") as f:
                    f.write(json.dumps(want, indent=2) + "\n")
                publish(claim.path, marker)  # never replacing: with several processes starting at once, one wins
            finally:
                claim.release()
        have = atomic.read_json(marker, "batch marker")
        if have.get("settings") != settings:
            old, new = have.get("settings") or {}, settings
            differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise BatchError(f"--out {self.path} holds encodings made with other settings ({', '.join(differ)} "
                             "differ); use a new --out for these settings")

    # paths
    def encoding(self, video):
        return os.path.join(self.path, "encodings", video.id + ENCODING_SUFFIX)

    def result_path(self, video):
        return os.path.join(self.path, "results", video.key + ".json")

    def work(self, video):
        return os.path.join(self.path, "work", video.key)

    def lock(self, video):
        return VideoLock(os.path.join(self.path, "work", video.key + ".lock"))

    # state
    def is_encoded(self, video):
        return os.path.isfile(self.encoding(video))

    def result(self, video):
        p = self.result_path(video)
        try:
            with open(p) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def is_final_failure(self, video):
        """Failed for a reason in the video itself (corrupt, no face, too short), and the file is unchanged
        since: a rerun does not try it again (unless asked to)."""
        r = self.result(video)
        return bool(r and r.get("status") == "failed" and r.get("final") and r.get("source") == source_stamp(video.path))

    def write_result(self, video, record):
        atomic.write_json(self.result_path(video), record)

    def finish(self, video, encoding_tmp, record, keep_workdir=False):
        """Commits a finished video: its record beside the encoding in the work directory, the encoding linked
        into encodings/ (the commit point: never replacing a file there), then the record moved to results/ and
        the work directory removed. Returns False when an encoding was already there (left untouched)."""
        work = self.work(video)
        staged = os.path.join(work, "result.json")
        atomic.write_json(staged, record)
        dest = self.encoding(video)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not publish(encoding_tmp, dest):
            return False
        self.tidy(video, keep_workdir)
        return True

    def tidy(self, video, keep_workdir=False):
        """After the commit point (also when a rerun finds a video finished by a process that died right
        after it): the staged record moves to results/, the work directory goes."""
        work = self.work(video)
        staged = os.path.join(work, "result.json")
        if os.path.isfile(staged):
            os.replace(staged, self.result_path(video))
        if not keep_workdir and os.path.isdir(work):
            shutil.rmtree(work, ignore_errors=True)

    # index
    def frame_counts(self, videos, threads=8, log=None) -> dict:
        """{id: approximate frame count} (at least 1) from `index.json`, probing the videos it does not know
        yet (or whose file changed) under a lock, so concurrent processes probe each video once."""
        from stylejax.io.video import probe

        index_path = os.path.join(self.path, "index.json")
        with waiting_lock(os.path.join(self.path, "index.lock")):
            index = {}
            if os.path.isfile(index_path):
                with contextlib.suppress(ValueError, OSError):
                    with open(index_path) as f:
                        index = json.load(f)
            stamps = {v.path: source_stamp(v.path) for v in videos}
            todo = [v for v in videos if (index.get(v.path) or {}).get("source") != stamps[v.path]]

            def one(v):
                try:
                    info = probe(v.path)
                    return v.path, {"source": stamps[v.path], "frames": max(1, info.approx_frames), "fps": info.fps}
                except UserError as e:
                    return v.path, {"source": stamps[v.path], "frames": 1, "error": str(e).splitlines()[0]}

            if todo:
                if log:
                    log(f"probing {len(todo)} videos for their frame counts")
                with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                    index.update(pool.map(one, todo))
                atomic.write_json(index_path, index)
        return {v.id: int(index[v.path]["frames"]) for v in videos}

    # summary
    def rows(self, videos):
        """One summary row per video: its status (encoded, failed, pending) and its record."""
        rows = []
        for v in videos:
            r = self.result(v) or {}
            status = "encoded" if self.is_encoded(v) else ("failed" if r.get("status") == "failed" else "pending")
            if status == "encoded" and r.get("status") != "encoded":
                r = {}  # a stale failure record of a video finished since
            row = {c: r.get(c) for c in SUMMARY_COLUMNS}
            row.update(id=v.id, video=v.path, status=status)
            if status == "pending":
                row["reason"] = None
            rows.append(row)
        return rows

    def write_summary(self, videos, processes=None, extra=None):
        """summary.csv and summary.json (written whole, renamed into place); returns the counts."""
        rows = self.rows(videos)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("encoded", "failed", "pending")}
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r[k] is None else r[k] for k in SUMMARY_COLUMNS})
        with waiting_lock(os.path.join(self.path, "summary.lock")):
            atomic.write_bytes(os.path.join(self.path, "summary.csv"), buf.getvalue().encode())
            atomic.write_json(os.path.join(self.path, "summary.json"),
                              {"counts": counts, "videos": rows, "processes": processes or [],
                               "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})})
        return counts

    def write_process_stats(self, index, count, stats):
        atomic.write_json(os.path.join(self.path, "processes", f"{index}-of-{count}.json"), stats)

    def process_stats(self, count):
        out = []
        for i in range(count):
            p = os.path.join(self.path, "processes", f"{i}-of-{count}.json")
            with contextlib.suppress(OSError, ValueError):
                with open(p) as f:
                    out.append(json.load(f))
        return out


def is_batch_folder(path):
    """An earlier batch output (its marker), or a folder holding only what a batch makes before its marker:
    the compilation cache and the marker's claimed temporary (left by a `kill -9`; removed by the next run)."""
    return os.path.isfile(os.path.join(path, MARKER)) or all(
        e == COMPILE_CACHE or e.startswith(f".{MARKER}.partial-") for e in os.listdir(path))


def source_stamp(path):
    """Size and modification time of an input file (None if it is gone): a changed file is tried again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def publish(src, dest) -> bool:
    """Moves the finished file `src` to `dest` without ever replacing a file at `dest` (a hard link, then the
    source removed; a rename after an existence check where hard links are unsupported). False if `dest`
    already existed."""
    try:
        os.link(src, dest)
    except FileExistsError:
        return False
    except OSError:
        if os.path.exists(dest):
            return False
        os.replace(src, dest)
        return True
    os.remove(src)
    return True


# ------------------------------------------------------------------------------------------------ the split

def split_by_frames(videos, frames: dict, num_processes: int) -> list[list]:
    """Shares of `videos` for `num_processes` processes with about equal frame totals: longest first, each
    to the process with the fewest frames so far (ties: the lowest index). Deterministic: the same list,
    frame counts and process count give the same split. Each share is in the order it is encoded (longest
    first, so the short videos even out the ends)."""
    shares = [[] for _ in range(num_processes)]
    loads = [(0, k) for k in range(num_processes)]
    for v in sorted(videos, key=lambda v: (-frames[v.id], v.id)):
        load, k = heapq.heappop(loads)
        shares[k].append(v)
        heapq.heappush(loads, (load + frames[v.id], k))
    return shares
