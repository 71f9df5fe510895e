"""Video I/O: a streaming RGB frame reader, an H.264 writer, side-by-side composition, disk-backed frames.

Reading runs the ffmpeg binary bundled with imageio-ffmpeg as a subprocess that pipes raw rgb24 frames, so
memory stays at one frame however long the video is. ffmpeg runs with `-xerror`, so a decoding error (a
damaged stream) stops it with a non-zero status, which the reader turns into a `VideoError` instead of
silently returning a shortened or garbled video.

Frames that do not fit in memory (aligned 1024² crops of a long video) go to disk as they are made, in one
`.npy` file (`FrameFileWriter`, count unknown in advance): `frames.npy`, uint8 `[T, H, W, 3]`, read back
memory-mapped with `np.load(path, mmap_mode="r")` / `load_frames`.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from stylejax.errors import UserError


def is_mp4(path: str) -> bool:
    """Whether `path` is an mp4-family file (an `ftyp` box first): the kind of file `VideoWriter` writes, so
    the only kind an output video may replace with --overwrite."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[4:8] == b"ftyp"


class VideoError(UserError, ValueError):
    """A video cannot be read or written; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float
    frame_size: tuple[int, int]  # (width, height) in pixels
    duration_s: float  # from the container; may be approximate

    @property
    def approx_frames(self) -> int:
        return int(round(self.duration_s * self.fps))


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _last_error_line(text: str) -> str:
    """The most informative line of ffmpeg's stderr (its last error line, with the [tag @ 0x..] stripped)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "rror" in ln or "nvalid" in ln or "does not contain" in ln:
            return re.sub(r"^(\[[^\]]*\]\s*)+", "", ln)  # drop "[dec:h264 @ 0x...]" tags
    return lines[-1] if lines else "no message"


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        raise VideoError(f"cannot read video {path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"cannot read video {path}: it is a directory, not a video file")
    if not os.access(path, os.R_OK):
        raise VideoError(f"cannot read video {path}: permission denied")
    if os.path.getsize(path) == 0:
        raise VideoError(f"cannot read video {path}: the file is empty (0 bytes)")


def probe(path: str) -> VideoInfo:
    """fps, frame size and duration of a video file; `VideoError` if ffmpeg cannot open it as a video."""
    import imageio_ffmpeg

    path = os.fspath(path)
    _check_readable(path)
    gen = imageio_ffmpeg.read_frames(path)
    # imageio-ffmpeg logs a WARNING for rotated videos (display size != stored size); ffmpeg rotates the
    # frames for us, and probe reports the displayed size, so there is nothing to warn about
    logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)
    try:
        meta = next(gen)
    except Exception as err:  # imageio-ffmpeg raises OSError with the full ffmpeg log
        msg = str(err)
        if "does not contain any stream" in msg:
            raise VideoError(f"cannot read video {path}: it has no video stream") from None
        raise VideoError(
            f"cannot read video {path}: not a video or corrupt (ffmpeg: {_last_error_line(msg)})") from None
    finally:
        gen.close()
    width, height = (int(v) for v in meta["size"])
    fps = float(meta.get("fps") or 0.0)
    if width <= 0 or height <= 0 or not fps > 0:
        raise VideoError(f"cannot read video {path}: no usable video stream (size {width}x{height}, fps {fps})")
    return VideoInfo(path=path, fps=fps, frame_size=(width, height), duration_s=float(meta.get("duration") or 0.0))


def iter_frames(path: str, info: VideoInfo | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of `path` one at a time as RGB uint8 arrays [H, W, 3].

    Raises `VideoError` if the file has no frames at all or if decoding fails part-way (corrupt stream).
    """
    info = info or probe(path)
    width, height = info.frame_size
    frame_bytes = width * height * 3
    cmd = [_ffmpeg_exe(), "-nostdin", "-v", "error", "-xerror", "-i", info.path,
           "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "passthrough", "-"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=frame_bytes)
    errors: list[bytes] = []
    # Drain stderr on a thread so a chatty ffmpeg can never block on a full pipe.
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    drain.start()
    count = 0
    finished = False
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if not buf:
                break
            if len(buf) < frame_bytes:
                raise VideoError(f"cannot read video {info.path}: truncated frame {count} (corrupt file)")
            count += 1
            yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
        proc.wait()
        drain.join(timeout=5)
        finished = True
        if proc.returncode != 0:
            msg = _last_error_line(b"".join(errors).decode("utf-8", "replace"))
            raise VideoError(f"cannot read video {info.path}: decoding failed after {count} frames, "
                             f"the file is corrupt (ffmpeg: {msg})")
        if count == 0:
            raise VideoError(f"cannot read video {info.path}: it contains no video frames")
    finally:
        if not finished and proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.wait()
        drain.join(timeout=5)  # the killed ffmpeg closes its end, so the drain ends and stderr can close
        proc.stderr.close()


def read_video(path: str) -> tuple[Iterator[np.ndarray], VideoInfo]:
    """(frame iterator, info); the file is opened (and validated) before this returns."""
    info = probe(path)
    return iter_frames(path, info), info


def _even(n: int) -> int:
    return n + (n % 2)


class VideoWriter:
    """H.264 (libx264, yuv420p) mp4 writer; use as a context manager.

    yuv420p needs even width and height: odd frames get one replicated edge row/column. The file is written
    under a claimed temporary name (`stylejax.io.atomic.Temporary`: a killed writer's is removed by the next)
    and renamed on a clean close, so a failed write never leaves a complete-looking mp4. The container is
    always mp4, whatever the name.
    """

    def __init__(self, path: str, fps: float, crf: int = 16):
        self.path = os.fspath(path)
        self.fps = float(fps)
        self.crf = int(crf)
        self._claim = None
        self._tmp = None
        self._gen = None
        self._size = None
        self.frames_written = 0

    def __enter__(self):
        return self

    def write(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise VideoError(f"cannot write {self.path}: frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        if self._gen is None:
            import imageio_ffmpeg

            from stylejax.io.atomic import Temporary

            try:
                self._claim = Temporary(self.path, ".mp4")
            except OSError as err:
                raise VideoError(f"cannot write video {self.path}: {err.strerror or err}") from None
            self._tmp = self._claim.path
            self._size = (w, h)
            # ffmpeg's own log stays quiet (it would print several lines); a failure is reported below
            self._gen = imageio_ffmpeg.write_frames(
                self._tmp, (_even(w), _even(h)), fps=self.fps, codec="libx264", pix_fmt_out="yuv420p",
                quality=None, macro_block_size=1, output_params=["-crf", str(self.crf)], ffmpeg_log_level="quiet")
            self._send(None)
        elif (w, h) != self._size:
            raise VideoError(f"cannot write {self.path}: frame size changed from {self._size} to {(w, h)}")
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        self._send(np.ascontiguousarray(frame))
        self.frames_written += 1

    def _send(self, frame) -> None:
        try:
            self._gen.send(frame)
        except (OSError, RuntimeError) as err:  # ffmpeg exited: cannot create the file, disk full, ...
            self.abort()
            raise VideoError(f"cannot write video {self.path}: the ffmpeg encoder stopped "
                             f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}); "
                             "is the location writable and the disk not full?") from None

    def close(self) -> None:
        if self._gen is None:
            raise VideoError(f"cannot write {self.path}: no frames were given")
        try:
            self._gen.close()
        except (OSError, RuntimeError) as err:
            self._gen = None
            self.abort()
            raise VideoError(f"cannot write video {self.path}: the ffmpeg encoder failed "
                             f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}); "
                             "is the disk full?") from None
        self._gen = None
        if not os.path.isfile(self._tmp) or os.path.getsize(self._tmp) == 0:
            self.abort()
            raise VideoError(f"cannot write video {self.path}: the ffmpeg encoder wrote nothing; is the location "
                             "writable and the disk not full?")
        os.replace(self._tmp, self.path)
        self._claim.release()

    def abort(self) -> None:
        if self._gen is not None:
            try:
                self._gen.close()
            except Exception:
                pass
            self._gen = None
        if self._claim is not None:
            self._claim.release()  # removes the temporary

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_video(path: str, frames: Iterable[np.ndarray], fps: float, crf: int = 16) -> int:
    """Write all `frames` to an H.264 mp4 at `fps`; returns the number of frames written."""
    with VideoWriter(path, fps, crf=crf) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


def side_by_side(*frames: np.ndarray, height: int | None = None) -> np.ndarray:
    """Panels placed left to right, each resized (area/cubic) to a common height (default: the first's)."""
    import cv2

    height = height or frames[0].shape[0]
    panels = []
    for frame in frames:
        h, w = frame.shape[:2]
        if h != height:
            new_w = max(1, int(round(w * height / h)))
            interp = cv2.INTER_AREA if h > height else cv2.INTER_CUBIC
            frame = cv2.resize(frame, (new_w, height), interpolation=interp)
        panels.append(frame)
    return np.concatenate(panels, axis=1)


def compose_side_by_side(path: str, videos: list[str], height: int | None = None, crf: int = 16) -> int:
    """Write an mp4 showing `videos` side by side (at the first video's fps); stops at the shortest."""
    readers = [read_video(v) for v in videos]
    fps = readers[0][1].fps
    iters = [r[0] for r in readers]
    with VideoWriter(path, fps, crf=crf) as writer:
        for frames in zip(*iters):
            writer.write(side_by_side(*frames, height=height))
    for it in iters:
        it.close()
    return writer.frames_written


class FrameFileWriter:
    """Appends equally sized uint8 frames [H, W, 3] to a `.npy` file without knowing their count in advance.

    The header is written with a fixed 128-byte size (a valid .npy v1.0 header, space-padded) and rewritten
    with the final count on `close()`, so the file is a normal `np.load(..., mmap_mode="r")`-able array.
    """

    HEADER_BYTES = 128

    def __init__(self, path: str, height: int, width: int):
        self.path = os.fspath(path)
        self.shape = (height, width, 3)
        self.count = 0
        self._f = open(self.path, "wb")
        self._write_header()

    def _write_header(self):
        d = {"descr": "|u1", "fortran_order": False, "shape": (self.count, *self.shape)}
        text = repr(d).encode("latin1")
        pad = self.HEADER_BYTES - 10 - len(text) - 1
        if pad < 0:
            raise VideoError(f"cannot write {self.path}: frame count {self.count} does not fit the .npy header")
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + np.uint16(self.HEADER_BYTES - 10).tobytes() + text + b" " * pad + b"\n")

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != self.shape or frame.dtype != np.uint8:
            raise VideoError(f"cannot write {self.path}: expected uint8 {self.shape}, got {frame.dtype} {frame.shape}")
        self._f.seek(self.HEADER_BYTES + self.count * frame.nbytes)
        self._f.write(np.ascontiguousarray(frame).tobytes())
        self.count += 1

    def close(self) -> None:
        self._write_header()
        self._f.close()

    def abort(self) -> None:
        self._f.close()


def load_frames(path: str) -> np.ndarray:
    """Aligned frames from a `frames.npy` or a directory holding one, memory-mapped read-only [T, H, W, 3].

    (Videos of crops are streamed with `iter_frames` instead, so they never have to fit in memory.)
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = os.path.join(path, "frames.npy")
        if not os.path.exists(inside):
            raise VideoError(f"cannot read frames: the folder {path} holds no frames.npy; give the folder "
                             "written by `python -m stylejax.align`, its frames.npy, or a video of crops")
        path = inside
    if not os.path.exists(path):
        raise VideoError(f"cannot read frames {path}: no such file")
    try:
        frames = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as err:
        raise VideoError(f"cannot read frames {path}: {err.strerror or err}") from None
    except Exception as err:  # numpy's message for a non-.npy file talks about pickles: not the user's concern
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise VideoError(f"cannot read frames {path}: a damaged or truncated .npy file "
                                 f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        raise VideoError(f"cannot read frames {path}: not a .npy array file (expected the frames.npy "
                         "written by `python -m stylejax.align`)") from None
    if not isinstance(frames, np.ndarray):
        raise VideoError(f"cannot read frames {path}: an .npz archive, not the frames.npy written by "
                         "`python -m stylejax.align`")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise VideoError(f"cannot read frames {path}: expected uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames
