"""The encoding file: one identity latent plus 35 numbers per frame, in a safetensors file.

Tensors: `id_latent` float32 [num_ws, w_dim]; `frames` float16 [T, 3 + K] with columns yaw, pitch, roll
(degrees) then the K StyleSpace channel offsets (2·(3 + K) bytes a frame: 70 for K = 32); optionally `quad`
float32 [T, 4, 2], the per-frame crop corners (TL, BL, BR, TR, original-frame pixels) for pasting back.
Metadata (`__metadata__`, str -> str): format, format_version, generator_fingerprint, resolution, fps,
num_frames, channels (JSON list of "layer_channel"), pose_model, settings (JSON object), frame_size (JSON
[w, h], only with `quad`). Files are written atomically and read without unpickling anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import struct

import numpy as np

from stylejax.errors import UserError

FORMAT = "stylejax-encoding"
FORMAT_VERSION = "1"
READABLE_VERSIONS = ("1",)
POSE_COLUMNS = ("yaw_deg", "pitch_deg", "roll_deg")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_CHANNEL_NAME = re.compile(r"^\d+_\d+$")
# What turns yaw/pitch into latents when rendering: StyleFlow's pose edit solved with N fixed RK4 steps. N is
# bounded: each step is two flow evaluations per frame, and a file is a few KB whatever N says (N = 1e8 ran
# for hours and grew past 1.5 GB; N <= 0 rendered without the pose edit). 8 is the default, 32 the largest in
# the accuracy table of docs/networks.md.
POSE_MODEL = re.compile(r"^styleflow-rk4-(\d{1,18})$")
MAX_RK4_STEPS = 128
NOISE_MODES = ("const", "random", "none")
MAX_FPS = 1000.0
MAX_SIZE = 1 << 16  # px: a generator's resolution or an original frame's width and height
MAX_SETTINGS_LIST = 64  # cond_src holds 17 values (9 lighting + 8 attributes); anything this long is not one
_MAX_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header


class EncodingError(UserError, ValueError):
    """An encoding file cannot be written or read; the message is one line naming the file and the fix."""


def _invalid(fields: dict) -> str | None:
    """The first problem with an encoding's fields, or None."""
    lat, pose, off, ch = fields["id_latent"], fields["pose_deg"], fields["offsets"], fields["channels"]
    if lat.ndim != 2 or lat.size == 0:
        return f"id_latent has shape {list(lat.shape)}, expected [num_ws, w_dim]"
    if pose.ndim != 2 or pose.shape[1] != 3 or pose.shape[0] == 0:
        return f"pose_deg has shape {list(pose.shape)}, expected [T, 3] with T >= 1"
    if off.ndim != 2 or off.shape != (pose.shape[0], len(ch)):
        return (f"offsets have shape {list(off.shape)}, expected [{pose.shape[0]}, {len(ch)}] "
                f"(one row a frame, one column a channel)")
    bad = [c for c in ch if not isinstance(c, str) or not _CHANNEL_NAME.match(c)]
    if bad:
        return f"channel name {bad[0]!r} is not 'layer_channel' (e.g. '6_501')"
    if len(set(ch)) != len(ch):
        return "channel names repeat"
    for name in ("id_latent", "pose_deg", "offsets"):
        if not np.isfinite(fields[name]).all():
            return f"{name} has non-finite values"
    if not (math.isfinite(fields["fps"]) and 0 < fields["fps"] <= MAX_FPS):
        return f"fps {fields['fps']!r} is not a frame rate in (0, {MAX_FPS}]"
    if not 0 < fields["resolution"] <= MAX_SIZE:
        return f"resolution {fields['resolution']} is not in [1, {MAX_SIZE}] px"
    for name in ("generator_fingerprint", "pose_model"):
        if not isinstance(fields[name], str) or not fields[name]:
            return f"{name} is not a non-empty string"
    if not isinstance(fields["settings"], dict):
        return "settings is not a dict"
    try:
        json.dumps(fields["settings"], allow_nan=False)
    except (TypeError, ValueError) as err:
        return f"settings are not JSON-serialisable ({err})"
    problem = _invalid_settings(fields["pose_model"], fields["settings"], pose.shape[0])
    if problem:
        return problem
    quad, size = fields["quad"], fields["frame_size"]
    if (quad is None) != (size is None):
        return "quad and frame_size come together: give both or neither"
    if quad is not None:
        if quad.shape != (pose.shape[0], 4, 2):
            return f"quad has shape {list(quad.shape)}, expected [{pose.shape[0]}, 4, 2]"
        if not np.isfinite(quad).all():
            return "quad has non-finite values"
        if len(size) != 2 or min(size) <= 0 or max(size) > MAX_SIZE:
            return f"frame_size {size} is not (width, height) in pixels, each in [1, {MAX_SIZE}]"
    return None


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _invalid_settings(pose_model: str, settings: dict, num_frames: int) -> str | None:
    """Bounds on everything the decoder reads from an encoding's pose model and settings (what the networks
    must also agree with is `stylejax.decoder.check_fits`)."""
    m = POSE_MODEL.match(pose_model)
    if not m:
        return (f"pose_model {pose_model[:40]!r} is not 'styleflow-rk4-N' (StyleFlow's pose edit with N RK4 steps, "
                "the only pose model this stylejax renders)")
    steps = int(m.group(1))
    if not 1 <= steps <= MAX_RK4_STEPS:
        return f"pose_model {pose_model!r} asks for {steps} RK4 steps, outside [1, {MAX_RK4_STEPS}]"
    if "rk4_steps" in settings:
        v = settings["rk4_steps"]
        if not _whole(v) or not 1 <= v <= MAX_RK4_STEPS:
            return f"settings 'rk4_steps' = {v!r:.40} is not a whole number of RK4 steps in [1, {MAX_RK4_STEPS}]"
        if v != steps:
            return f"settings 'rk4_steps' = {v} contradicts pose_model {pose_model!r}"
    if "cond_src" in settings:
        c = settings["cond_src"]
        if not (isinstance(c, list) and 0 < len(c) <= MAX_SETTINGS_LIST
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in c)):
            return "settings 'cond_src' is not a list of finite numbers (StyleFlow's source condition)"
    if "noise_mode" in settings and settings["noise_mode"] not in NOISE_MODES:
        return f"settings 'noise_mode' = {settings['noise_mode']!r:.40} is not one of {', '.join(NOISE_MODES)}"
    if "pose_rows" in settings and settings["pose_rows"] != [0, 4]:
        return (f"settings 'pose_rows' = {settings['pose_rows']!r:.40} contradicts pose_model {pose_model!r} "
                "(StyleFlow edits W+ rows 0-3)")
    if "id_frame" in settings and not (_whole(settings["id_frame"]) and 0 <= settings["id_frame"] < num_frames):
        return f"settings 'id_frame' = {settings['id_frame']!r:.40} is not a frame index in [0, {num_frames})"
    for key in ("styleflow_fingerprint", "aligned"):
        if key in settings and not isinstance(settings[key], str):
            return f"settings {key!r} is not a string"
    nets = settings.get("networks", {})
    if not (isinstance(nets, dict) and all(isinstance(v, str) for v in nets.values())):
        return "settings 'networks' is not a dict of checkpoint paths"
    return None


@dataclasses.dataclass(frozen=True, eq=False)
class Encoding:
    """A video as one W+ identity latent and per-frame pose (degrees) and StyleSpace channel offsets."""

    id_latent: np.ndarray  # float32 [num_ws, w_dim]
    pose_deg: np.ndarray  # float32 [T, 3]: yaw, pitch, roll (stylejax.align.headpose conventions)
    offsets: np.ndarray  # float32 [T, K]: added to StyleSpace channel `channels[k]` in frame t
    channels: tuple  # K names "layer_channel", e.g. "6_501"
    fps: float
    resolution: int  # generator output size in px
    generator_fingerprint: str  # fingerprint_params of the generator that was inverted
    pose_model: str  # what turns pose into latents, e.g. "styleflow-rk4-8"
    settings: dict = dataclasses.field(default_factory=dict)  # encoder settings, JSON-able, for the record
    quad: np.ndarray | None = None  # float32 [T, 4, 2] crop corners TL, BL, BR, TR in original-frame px
    frame_size: tuple | None = None  # (width, height) of the original frames; with `quad`

    def __post_init__(self):
        try:
            conv = dict(id_latent=np.asarray(self.id_latent, np.float32),
                        pose_deg=np.asarray(self.pose_deg, np.float32), offsets=np.asarray(self.offsets, np.float32),
                        channels=tuple(self.channels), fps=float(self.fps), resolution=int(self.resolution),
                        settings=dict(self.settings) if isinstance(self.settings, dict) else self.settings,
                        quad=None if self.quad is None else np.asarray(self.quad, np.float32),
                        frame_size=None if self.frame_size is None else tuple(int(v) for v in self.frame_size))
        except (TypeError, ValueError) as err:
            raise EncodingError(f"invalid encoding: a field has the wrong type ({err})") from None
        for key, value in conv.items():
            object.__setattr__(self, key, value)
        problem = _invalid(conv | {"generator_fingerprint": self.generator_fingerprint, "pose_model": self.pose_model})
        if problem:
            raise EncodingError(f"invalid encoding: {problem}")

    @property
    def num_frames(self) -> int:
        return int(self.pose_deg.shape[0])

    @property
    def rk4_steps(self) -> int:
        """RK4 steps of the pose edit, from `pose_model` (checked: in [1, MAX_RK4_STEPS])."""
        return int(POSE_MODEL.match(self.pose_model).group(1))

    @property
    def bytes_per_frame(self) -> int:
        """Stored size of one frame's numbers: float16 pose and offsets (the quad is extra, optional)."""
        return 2 * (3 + len(self.channels))


def fingerprint_params(params) -> str:
    """16 hex digits identifying a pytree of arrays: SHA-256 over the sorted key paths, dtypes, shapes and bytes.

    Only array leaves count (a pytree's static config does not); jax and numpy arrays of the same values agree.
    """
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    digest = hashlib.sha256()
    for key, leaf in sorted(((jax.tree_util.keystr(p), v) for p, v in leaves), key=lambda kv: kv[0]):
        arr = np.asarray(leaf)
        arr = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype)
        digest.update(f"{key}|{arr.dtype.name}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------

def _frames_float16(enc: Encoding, path: str) -> np.ndarray:
    frames = np.concatenate([enc.pose_deg, enc.offsets], axis=1)
    too_big = np.abs(frames) > FLOAT16_MAX
    if too_big.any():
        t, k = np.argwhere(too_big)[0]
        name = (POSE_COLUMNS + enc.channels)[k]
        raise EncodingError(f"cannot save encoding {path}: frame {t} {name} = {frames[t, k]:g} is outside the "
                            f"float16 range (±{FLOAT16_MAX:g}); check the encoder's settings")
    return frames.astype(np.float16)


def _metadata(enc: Encoding) -> dict:
    """The header's metadata, in the fixed order written to the file (settings with sorted keys)."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "generator_fingerprint": enc.generator_fingerprint,
            "resolution": str(enc.resolution), "fps": repr(enc.fps), "num_frames": str(enc.num_frames),
            "channels": json.dumps(list(enc.channels)), "pose_model": enc.pose_model,
            "settings": json.dumps(enc.settings, sort_keys=True, allow_nan=False)}
    if enc.frame_size is not None:
        meta["frame_size"] = json.dumps(list(enc.frame_size))
    return meta


def _serialise(tensors: dict, meta: dict) -> bytes:
    """safetensors bytes whose header lists the metadata first, in `meta`'s order, then the tensors in the
    order of their data: identical encodings give identical files. (The safetensors library writes its
    metadata from a hash map, in an order that changes from one process to the next.)"""
    import safetensors.numpy

    data = safetensors.numpy.save(tensors)
    (n,) = struct.unpack("<Q", data[:8])
    entries = json.loads(data[8:8 + n])
    header = {"__metadata__": meta}
    header.update(sorted(((k, v) for k, v in entries.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"]))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the library writes it
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def save_encoding(path: str, enc: Encoding) -> None:
    """Write `enc` to `path` atomically (temp file in the same directory, fsync, rename): a reader sees the
    old file or the new one, never a partial one. Pose and offsets are stored as float16; equal encodings
    give byte-identical files."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise EncodingError(f"cannot save encoding {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise EncodingError(f"cannot save encoding {path}: it is a directory")
    tensors = {"id_latent": enc.id_latent, "frames": _frames_float16(enc, path)}
    if enc.quad is not None:
        tensors["quad"] = enc.quad
    data = _serialise(tensors, _metadata(enc))
    from stylejax.io.atomic import Temporary

    claim = None
    try:
        claim = Temporary(path, ".tmp")  # a killed writer's temporary is removed by the next save
        with open(claim.path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(claim.path, path)
    except OSError as err:
        raise EncodingError(f"cannot save encoding {path}: {err.strerror or err}") from None
    finally:
        if claim is not None:
            claim.release()
    try:  # make the rename itself durable; not every filesystem lets a directory be opened
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------

def _read_container(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, checked by hand first so every failure has a clear reason."""
    import safetensors.numpy

    fail = lambda why: EncodingError(f"cannot read encoding {path}: {why}")
    if not os.path.exists(path):
        raise fail("no such file")
    if not os.path.isfile(path):
        raise fail("not a file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    not_st = "not a safetensors file (encodings are written by python -m stylejax.encode)"
    if len(data) < 9 or data[8:9] != b"{":
        raise fail(not_st)
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > _MAX_HEADER:
        raise fail(not_st)
    if 8 + header_len > len(data):
        raise fail(f"truncated ({len(data)} bytes, its header alone needs {8 + header_len})")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except Exception:
        raise fail(not_st) from None
    if not isinstance(header, dict):
        raise fail(not_st)
    if 8 + header_len + max(ends, default=0) > len(data):
        raise fail(f"truncated ({len(data)} bytes, its tensors need {8 + header_len + max(ends)})")
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as err:  # the library's own checks: offsets, dtypes, shapes
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise fail(f"corrupt safetensors file ({detail})") from None
    meta = header.get("__metadata__") or {}
    return tensors, meta if isinstance(meta, dict) else {}


def is_encoding_file(path: str) -> bool:
    """Whether `path` is a stylejax encoding by its header (the kind of file `save_encoding` writes, so the only
    kind an encoding output may replace with --overwrite); reads at most the header."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                return False
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, ValueError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _json_field(meta: dict, key: str, kind: type, fail):
    try:
        value = json.loads(meta[key])
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise fail(f"metadata field {key!r} is not a JSON {kind.__name__}")
    return value


def load_encoding(path: str, expected_fingerprint: str | None = None) -> Encoding:
    """Read an encoding; with `expected_fingerprint`, refuse one made with a different generator."""
    path = os.fspath(path)
    fail = lambda why: EncodingError(f"cannot read encoding {path}: {why}")
    tensors, meta = _read_container(path)
    if meta.get("format") != FORMAT:
        found = f"format {meta['format']!r}" if "format" in meta else "no format field"
        raise fail(f"not a stylejax encoding ({found}, expected {FORMAT!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise fail(f"format version {version!r} is not supported: this stylejax reads version(s) "
                   f"{', '.join(READABLE_VERSIONS)}; upgrade stylejax to read it")
    missing = [k for k in ("id_latent", "frames") if k not in tensors]
    if missing:
        raise fail(f"missing tensor(s) {', '.join(repr(k) for k in missing)}")
    missing = [k for k in ("generator_fingerprint", "resolution", "fps", "num_frames", "channels", "pose_model",
                           "settings") if k not in meta]
    if missing:
        raise fail(f"missing metadata field(s) {', '.join(repr(k) for k in missing)}")
    fingerprint = meta["generator_fingerprint"]
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise EncodingError(f"encoding {path} was encoded with generator {fingerprint}, this generator is "
                            f"{expected_fingerprint}: render with the generator used to encode")
    channels = _json_field(meta, "channels", list, fail)
    settings = _json_field(meta, "settings", dict, fail)
    frame_size = _json_field(meta, "frame_size", list, fail) if "frame_size" in meta else None
    try:
        resolution, fps, num_frames = int(meta["resolution"]), float(meta["fps"]), int(meta["num_frames"])
    except ValueError:
        raise fail("metadata fields 'resolution', 'fps', 'num_frames' must be numbers") from None
    frames, id_latent, quad = tensors["frames"], tensors["id_latent"], tensors.get("quad")
    for name, arr, dtype in (("frames", frames, np.float16), ("id_latent", id_latent, np.float32),
                             ("quad", quad, np.float32)):
        if arr is not None and arr.dtype != dtype:
            raise fail(f"tensor {name!r} is {arr.dtype}, expected {np.dtype(dtype)}")
    if frames.ndim != 2 or frames.shape[1] != 3 + len(channels):
        raise fail(f"tensor 'frames' has shape {list(frames.shape)}, expected [T, {3 + len(channels)}] "
                   f"(3 pose columns + {len(channels)} channels)")
    if frames.shape[0] != num_frames:
        raise fail(f"tensor 'frames' has {frames.shape[0]} rows but num_frames is {num_frames}")
    for name, arr in (("frames", frames), ("id_latent", id_latent), ("quad", quad)):
        if arr is not None and not np.isfinite(arr).all():
            raise fail(f"tensor {name!r} has non-finite values")
    frames = frames.astype(np.float32)
    try:
        return Encoding(id_latent=id_latent, pose_deg=frames[:, :3], offsets=frames[:, 3:], channels=tuple(channels),
                        fps=fps, resolution=resolution, generator_fingerprint=fingerprint,
                        pose_model=meta["pose_model"], settings=settings, quad=quad, frame_size=frame_size)
    except EncodingError as err:
        raise fail(str(err).removeprefix("invalid encoding: ")) from None
