"""The encoding file: one identity latent plus 35 numbers per frame, in a safetensors file.

An encoding has two parts (format version 2 keeps them apart in the file, so one video's motion can drive
another video's identity):
- the **identity**: the W+ identity latent, the identity frame's StyleFlow condition `cond_src`, and what
  they mean something to (generator and StyleFlow fingerprints, resolution, `pose_model`, and the fingerprint
  of the fine-tuned generator delta when the video was fine-tuned: `stylejax.io.delta`);
- the **motion**: per-frame yaw, pitch, roll (degrees, relative to the identity frame) and K StyleSpace
  channel offsets in units of each channel's standard deviation (`offset_scale`: style units per offset
  unit), the channel names, fps and, for paste-back, the crop quads and the original frame size.

Version 2 tensors: `identity.id_latent` float32 [num_ws, w_dim], `identity.cond_src` float32 [17],
`motion.frames` float16 [T, 3 + K] (yaw, pitch, roll, then the offsets: 2·(3 + K) bytes a frame, 70 for
K = 32), `motion.offset_scale` float32 [K], optionally `motion.quad` float32 [T, 4, 2] (crop corners TL, BL,
BR, TR in original-frame pixels). Metadata (`__metadata__`, str -> str): `format`, `format_version`,
`identity` and `motion` (JSON objects) and `settings` (JSON: how it was made, for the record).
Version 1 (still read, and written with `version="1"`): `id_latent`, `frames` (offsets in raw style
units), `quad`, flat metadata, `cond_src` inside `settings`. Files are written atomically with the metadata
in a fixed order (equal encodings give equal bytes) and read without unpickling anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re

import numpy as np

from stylejax.errors import UserError
from stylejax.io import container

FORMAT = "stylejax-encoding"
FORMAT_VERSION = "2"  # what save_encoding writes by default
READABLE_VERSIONS = ("1", "2")
WRITABLE_VERSIONS = ("1", "2")
COND_DIM = 17  # StyleFlow's condition: 9 lighting + 8 attributes
IDENTITY_FIELDS = ("id_latent", "cond_src", "generator_fingerprint", "styleflow_fingerprint", "resolution",
                   "pose_model", "delta_fingerprint")
MOTION_FIELDS = ("pose_deg", "offsets", "offset_scale", "channels", "fps", "quad", "frame_size", "motion_step",
                 "key_interval")
# What turns yaw/pitch into latents when rendering: StyleFlow's pose edit solved with N fixed RK4 steps. N is
# bounded: each step is two flow evaluations per frame, and a file is a few KB whatever N says (N = 1e8 ran for
# hours and grew past 1.5 GB; N <= 0 rendered without the pose edit).
_POSE_MODEL = re.compile(r"^styleflow-rk4-(\d+)$")
MAX_RK4_STEPS = 64  # the README's RK4 error table converges by 16; more is a damaged or hostile file
NOISE_MODES = ("const", "random", "none")
MAX_FPS = 1000.0
MAX_SIZE = 1 << 16  # px: a generator's resolution or an original frame's width and height
POSE_COLUMNS = ("yaw_deg", "pitch_deg", "roll_deg")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_CHANNEL_NAME = re.compile(r"^\d+_\d+$")
NOT_SAFETENSORS = "not a safetensors file (encodings are written by python -m stylejax.encode)"
MOTION_CODINGS = ("float16", "delta-zstd")
MAX_KEY_INTERVAL = 4096
MAX_QUANTISED = 2 ** 31 - 1  # quantised values are 32-bit integers (a LEB128 varint of at most 5 bytes)
ZSTD_LEVEL = 19


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
    cond, scale = fields["cond_src"], fields["offset_scale"]
    if cond is not None and (cond.shape != (COND_DIM,) or not np.isfinite(cond).all()):
        return f"cond_src must be {COND_DIM} finite values (StyleFlow's condition), got shape {list(cond.shape)}"
    if scale.shape != (len(ch),) or not (np.isfinite(scale).all() and (scale > 0).all()):
        return f"offset_scale must be {len(ch)} positive finite values (one per channel)"
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
    """Bounds on what the decoder reads from an encoding's pose model and settings (what must also agree with
    the networks is `stylejax.decoder.check_fits`)."""
    m = _POSE_MODEL.match(pose_model)
    if not m:
        return (f"pose_model {pose_model[:40]!r} is not 'styleflow-rk4-N' (StyleFlow's pose edit with N RK4 steps, "
                "the only pose model this stylejax renders)")
    steps = int(m.group(1)) if len(m.group(1)) <= 18 else MAX_RK4_STEPS + 1
    if not 1 <= steps <= MAX_RK4_STEPS:
        return f"pose_model {pose_model[:40]!r} asks for {m.group(1)[:20]} RK4 steps, outside [1, {MAX_RK4_STEPS}]"
    if "rk4_steps" in settings:
        v = settings["rk4_steps"]
        if not _whole(v) or not 1 <= v <= MAX_RK4_STEPS:
            return f"settings 'rk4_steps' = {v!r:.40} is not a whole number of RK4 steps in [1, {MAX_RK4_STEPS}]"
        if v != steps:
            return f"settings 'rk4_steps' = {v} contradicts pose_model {pose_model!r}"
    if "noise_mode" in settings and settings["noise_mode"] not in NOISE_MODES:
        return f"settings 'noise_mode' = {settings['noise_mode']!r:.40} is not one of {', '.join(NOISE_MODES)}"
    if "pose_rows" in settings and settings["pose_rows"] != [0, 4]:
        return (f"settings 'pose_rows' = {settings['pose_rows']!r:.40} contradicts pose_model {pose_model!r} "
                "(StyleFlow edits W+ rows 0-3)")
    if "id_frame" in settings and not (_whole(settings["id_frame"]) and 0 <= settings["id_frame"] < num_frames):
        return f"settings 'id_frame' = {settings['id_frame']!r:.40} is not a frame index in [0, {num_frames})"
    if "aligned" in settings and not isinstance(settings["aligned"], str):
        return "settings 'aligned' is not a path"
    if "delta" in settings and not isinstance(settings["delta"], str):
        return "settings 'delta' is not a path"
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
    cond_src: np.ndarray | None = None  # float32 [17]: the identity frame's StyleFlow condition
    offset_scale: np.ndarray | None = None  # float32 [K]: style units per offset unit (None: 1, raw units)
    styleflow_fingerprint: str | None = None  # fingerprint_params of the StyleFlow the pose was fitted with
    delta_fingerprint: str | None = None  # the fine-tuned generator delta (stylejax.io.delta) made for this identity
    # compact motion coding (version 2, "delta-zstd"): the quantisation step of each of the 3 + K columns
    # (degrees, then offset units); None: the motion is stored as float16
    motion_step: np.ndarray | None = None
    key_interval: int = 64  # frames per independently decodable block of the compact coding

    def __post_init__(self):
        try:
            conv = dict(id_latent=np.asarray(self.id_latent, np.float32),
                        pose_deg=np.asarray(self.pose_deg, np.float32), offsets=np.asarray(self.offsets, np.float32),
                        channels=tuple(self.channels), fps=float(self.fps), resolution=int(self.resolution),
                        settings=dict(self.settings) if isinstance(self.settings, dict) else self.settings,
                        quad=None if self.quad is None else np.asarray(self.quad, np.float32),
                        frame_size=None if self.frame_size is None else tuple(int(v) for v in self.frame_size))
            conv["cond_src"] = (None if self.cond_src is None else np.asarray(self.cond_src, np.float32).reshape(-1))
            conv["offset_scale"] = (np.ones(len(conv["channels"]), np.float32) if self.offset_scale is None
                                    else np.asarray(self.offset_scale, np.float32).reshape(-1))
            conv["motion_step"] = None if self.motion_step is None else motion_steps(self.motion_step)
            conv["key_interval"] = int(self.key_interval)
        except (TypeError, ValueError) as err:
            raise EncodingError(f"invalid encoding: a field has the wrong type ({err})") from None
        for key, value in conv.items():
            object.__setattr__(self, key, value)
        step = conv["motion_step"]
        if step is not None and (step.shape != (3 + len(conv["channels"]),) or not np.isfinite(step).all()
                                 or not (step > 0).all()):
            raise EncodingError(f"invalid encoding: motion_step must be {3 + len(conv['channels'])} positive finite "
                                "values (one quantisation step per column)")
        if not 1 <= conv["key_interval"] <= MAX_KEY_INTERVAL:
            raise EncodingError(f"invalid encoding: key_interval {conv['key_interval']} is not in 1..{MAX_KEY_INTERVAL}")
        problem = _invalid(conv | {"generator_fingerprint": self.generator_fingerprint, "pose_model": self.pose_model})
        if problem:
            raise EncodingError(f"invalid encoding: {problem}")
        for name in ("styleflow_fingerprint", "delta_fingerprint"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise EncodingError(f"invalid encoding: {name} is not a string")

    @property
    def num_frames(self) -> int:
        return int(self.pose_deg.shape[0])

    @property
    def bytes_per_frame(self) -> int:
        """Stored size of one frame's numbers in the float16 coding: 2·(3 + K) (the compact coding's size depends on
        the motion: `motion_bytes(path)`; the quad is extra, optional)."""
        return 2 * (3 + len(self.channels))

    @property
    def offsets_raw(self) -> np.ndarray:
        """[T, K] offsets in style units: what is added to the StyleSpace channels."""
        return self.offsets * self.offset_scale

    @property
    def rk4_steps(self) -> int:
        """RK4 steps of the StyleFlow pose edit, from `pose_model` ("styleflow-rk4-N", bounded on construction)."""
        found = _POSE_MODEL.match(self.pose_model)
        if not found or not 1 <= int(found.group(1)) <= MAX_RK4_STEPS:
            raise EncodingError(f"pose_model {self.pose_model!r} is not 'styleflow-rk4-N' with N in "
                                f"1..{MAX_RK4_STEPS}: this stylejax cannot render it")
        return int(found.group(1))

    def identity(self) -> dict:
        """The identity part: what a driven face keeps (see IDENTITY_FIELDS)."""
        return {k: getattr(self, k) for k in IDENTITY_FIELDS}

    def motion(self) -> dict:
        """The motion part: what drives a face (see MOTION_FIELDS)."""
        return {k: getattr(self, k) for k in MOTION_FIELDS}

    @classmethod
    def from_parts(cls, identity: dict, motion: dict, settings: dict | None = None) -> "Encoding":
        """An encoding of one identity moved by another's motion (both as `identity()` / `motion()` give)."""
        return cls(**identity, **motion, settings=dict(settings or {}))


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

def _frames_float16(enc: Encoding, path: str, offsets: np.ndarray) -> np.ndarray:
    frames = np.concatenate([enc.pose_deg, offsets], axis=1)
    too_big = np.abs(frames) > FLOAT16_MAX
    if too_big.any():
        t, k = np.argwhere(too_big)[0]
        name = (POSE_COLUMNS + enc.channels)[k]
        raise EncodingError(f"cannot save encoding {path}: frame {t} {name} = {frames[t, k]:g} is outside the "
                            f"float16 range (±{FLOAT16_MAX:g}); check the encoder's settings")
    return frames.astype(np.float16)


# --------------------------------------------------------------------------------------------------------
# Compact motion coding ("delta-zstd", version 2)
# --------------------------------------------------------------------------------------------------------
# Each column j of the [T, 3 + K] motion is quantised with its own step: q[t, j] = round(x[t, j] / step[j])
# (32-bit integers). Frames are cut into blocks of `key_interval`; in a block, each column (column-major) stores
# its first value and then the frame-to-frame differences, zigzag-mapped to unsigned and written as LEB128
# varints, and the block's bytes are one zstd frame. `motion.stream` is the blocks back to back and
# `motion.blocks` [num_blocks + 1] their byte offsets, so a frame range decodes from its blocks alone. Decoding
# is exact integer arithmetic: a frame decodes to the same value whichever range it is read in.

def motion_steps(step) -> np.ndarray:
    """Quantisation steps as they are stored: float16 values (rounded, and clipped to float16's normal range
    2^-14..2^15), returned as float32."""
    step = np.asarray(step, np.float32).reshape(-1)
    return np.clip(step, 2.0 ** -14, 2.0 ** 15).astype(np.float16).astype(np.float32)


def quantise_motion(frames: np.ndarray, step: np.ndarray) -> np.ndarray:
    """int64 [T, C] = round(frames / step), refused beyond 32 bits."""
    q = np.rint(np.asarray(frames, np.float64) / np.asarray(step, np.float64))
    if not np.isfinite(q).all() or np.abs(q).max(initial=0) > MAX_QUANTISED:
        raise ValueError("a value is too large for its quantisation step")
    return q.astype(np.int64)


def _zigzag(v):
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def _unzigzag(u):
    return ((u >> np.uint64(1)).astype(np.int64) ^ -(u & np.uint64(1)).astype(np.int64))


def _leb128(u: np.ndarray) -> bytes:
    """Unsigned LEB128 varints of u (values < 2^35), concatenated."""
    u = np.asarray(u, np.uint64)
    lens = 1 + sum((u >= np.uint64(1 << (7 * j))).astype(np.int64) for j in range(1, 5))
    starts = np.cumsum(lens) - lens
    out = np.zeros(int(lens.sum()), np.uint8)
    for j in range(5):
        sel = lens > j
        byte = (u[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        out[starts[sel] + j] = (byte | ((lens[sel] > j + 1).astype(np.uint64) << np.uint64(7))).astype(np.uint8)
    return out.tobytes()


def _unleb128(data: bytes, count: int) -> np.ndarray:
    """`count` unsigned LEB128 varints from data (exactly), or ValueError."""
    b = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if len(ends) != count or (len(b) and b[-1] >= 0x80):
        raise ValueError(f"holds {len(ends)} values, expected {count}")
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    lens = ends - starts + 1
    if len(lens) and lens.max() > 5:
        raise ValueError("a value is longer than 5 bytes")
    u = np.zeros(count, np.uint64)
    for j in range(5):
        sel = lens > j
        u[sel] |= (b[starts[sel] + j].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * j)
    return u


def encode_motion(frames: np.ndarray, step: np.ndarray, key_interval: int) -> tuple[np.ndarray, np.ndarray]:
    """(stream uint8 [N], blocks uint32 [num_blocks + 1]) of float frames [T, C] (see above); `step` must be
    representable in float16, as it is stored (`motion_steps`)."""
    import zstandard

    q = quantise_motion(frames, step)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=True)
    parts, offsets = [], [0]
    for lo in range(0, len(q), key_interval):
        block = q[lo:lo + key_interval]
        resid = np.concatenate([block[:1], np.diff(block, axis=0)], axis=0)
        parts.append(compressor.compress(_leb128(_zigzag(resid.T.reshape(-1)))))
        offsets.append(offsets[-1] + len(parts[-1]))
    if offsets[-1] >= 2 ** 32:
        raise ValueError("the coded motion exceeds 4 GiB")
    return np.frombuffer(b"".join(parts), np.uint8).copy(), np.asarray(offsets, np.uint32)


def decode_motion_blocks(blobs, first_block: int, rows: list[int], columns: int, step: np.ndarray) -> np.ndarray:
    """float32 [sum(rows), C] of consecutive blocks (their bytes `blobs`, block sizes `rows`); ValueError with
    the reason on a damaged block."""
    import zstandard

    out = []
    for b, (blob, n) in enumerate(zip(blobs, rows)):
        count = n * columns
        limit = 5 * count  # a block never holds more than its values at 5 bytes each
        try:  # read at most one byte past the limit, whatever size the frame declares (a bomb never inflates)
            with zstandard.ZstdDecompressor().stream_reader(bytes(blob)) as reader:
                raw = reader.read(limit + 1)
        except zstandard.ZstdError as err:
            raise ValueError(f"block {first_block + b} is not a valid zstd frame ({err})") from None
        if len(raw) > limit:
            raise ValueError(f"block {first_block + b} inflates beyond its {count} values")
        try:
            resid = _unzigzag(_unleb128(raw, count)).reshape(columns, n).T
        except ValueError as err:
            raise ValueError(f"block {first_block + b} {err}") from None
        q = np.cumsum(resid, axis=0)
        if np.abs(q).max(initial=0) > MAX_QUANTISED:
            raise ValueError(f"block {first_block + b} decodes beyond 32-bit values")
        out.append(q)
    return (np.concatenate(out).astype(np.float64) * np.asarray(step, np.float64)).astype(np.float32)


def _block_rows(num_frames: int, key_interval: int) -> list[int]:
    return [min(key_interval, num_frames - lo) for lo in range(0, num_frames, key_interval)]


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False)


def _contents_v1(enc: Encoding, path: str) -> tuple[dict, dict]:
    """Version 1: offsets in raw style units; the identity's condition and StyleFlow inside `settings`."""
    tensors = {"id_latent": enc.id_latent, "frames": _frames_float16(enc, path, enc.offsets_raw)}
    if enc.quad is not None:
        tensors["quad"] = enc.quad
    settings = dict(enc.settings)
    if enc.cond_src is not None:
        settings["cond_src"] = [float(v) for v in enc.cond_src]
    if enc.styleflow_fingerprint is not None:
        settings["styleflow_fingerprint"] = enc.styleflow_fingerprint
    if enc.delta_fingerprint is not None:
        settings["delta_fingerprint"] = enc.delta_fingerprint
    if _POSE_MODEL.match(enc.pose_model):
        settings["rk4_steps"] = int(_POSE_MODEL.match(enc.pose_model).group(1))  # where v1 readers look
    meta = {"format": FORMAT, "format_version": "1", "generator_fingerprint": enc.generator_fingerprint,
            "resolution": str(enc.resolution), "fps": repr(enc.fps), "num_frames": str(enc.num_frames),
            "channels": json.dumps(list(enc.channels)), "pose_model": enc.pose_model, "settings": _json(settings)}
    if enc.frame_size is not None:
        meta["frame_size"] = json.dumps(list(enc.frame_size))
    return tensors, meta


def _contents_v2(enc: Encoding, path: str) -> tuple[dict, dict]:
    if enc.cond_src is None:
        raise EncodingError(f"cannot save encoding {path}: the identity has no StyleFlow condition (cond_src)")
    tensors = {"identity.id_latent": enc.id_latent, "identity.cond_src": enc.cond_src,
               "motion.offset_scale": enc.offset_scale}
    if enc.motion_step is None:
        tensors["motion.frames"] = _frames_float16(enc, path, enc.offsets)
    else:
        try:
            stream, blocks = encode_motion(np.concatenate([enc.pose_deg, enc.offsets], 1), enc.motion_step,
                                           enc.key_interval)
        except ValueError as err:
            raise EncodingError(f"cannot save encoding {path}: {err}; use larger quantisation steps") from None
        tensors.update({"motion.stream": stream, "motion.blocks": blocks,
                        "motion.step": enc.motion_step.astype(np.float16)})
    if enc.quad is not None:
        tensors["motion.quad"] = enc.quad
    identity = {"generator_fingerprint": enc.generator_fingerprint, "styleflow_fingerprint": enc.styleflow_fingerprint,
                "resolution": enc.resolution, "pose_model": enc.pose_model}
    if enc.delta_fingerprint is not None:  # only when fine-tuned: untuned encodings keep their exact bytes
        identity["delta_fingerprint"] = enc.delta_fingerprint
    motion = {"num_frames": enc.num_frames, "fps": enc.fps, "channels": list(enc.channels),
              "columns": list(POSE_COLUMNS) + ["offsets"], "offset_units": "offset_scale",
              "frame_size": None if enc.frame_size is None else list(enc.frame_size)}
    if enc.motion_step is not None:
        motion.update(coding="delta-zstd", key_interval=enc.key_interval)
    meta = {"format": FORMAT, "format_version": "2", "identity": _json(identity), "motion": _json(motion),
            "settings": _json(enc.settings)}
    return tensors, meta


def save_encoding(path: str, enc: Encoding, version: str = FORMAT_VERSION) -> None:
    """Write `enc` to `path` atomically (temp file in the same directory, fsync, rename): a reader sees the
    old file or the new one, never a partial one. Pose and offsets are stored as float16. `version` "1"
    writes the first format (offsets converted to raw style units) for readers that know only that one. Equal
    encodings give byte-identical files; a temporary left by a killed writer is removed by the next save."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise EncodingError(f"cannot save encoding {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise EncodingError(f"cannot save encoding {path}: it is a directory")
    if str(version) not in WRITABLE_VERSIONS:
        raise EncodingError(f"cannot save encoding {path}: format version {version!r} is not one of "
                            f"{', '.join(WRITABLE_VERSIONS)}")
    tensors, meta = (_contents_v1 if str(version) == "1" else _contents_v2)(enc, path)
    data = container.serialise(tensors, meta)
    from stylejax.io.atomic import Temporary

    claim = None
    try:
        claim = Temporary(path, ".tmp")
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

def is_encoding_file(path: str) -> bool:
    """Whether `path` is a stylejax encoding by its header (the kind of file `save_encoding` writes, so the only
    kind an encoding output may replace with --overwrite); reads at most the header."""
    return (container.metadata(path) or {}).get("format") == FORMAT


def _json_field(meta: dict, key: str, kind: type, fail):
    try:
        value = json.loads(meta[key])
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise fail(f"metadata field {key!r} is not a JSON {kind.__name__}")
    return value


def _fields_v1(tensors: dict, meta: dict, fail) -> dict:
    missing = [k for k in ("id_latent", "frames") if k not in tensors]
    if missing:
        raise fail(f"missing tensor(s) {', '.join(repr(k) for k in missing)}")
    missing = [k for k in ("generator_fingerprint", "resolution", "fps", "num_frames", "channels", "pose_model",
                           "settings") if k not in meta]
    if missing:
        raise fail(f"missing metadata field(s) {', '.join(repr(k) for k in missing)}")
    settings = _json_field(meta, "settings", dict, fail)
    cond = settings.get("cond_src")
    try:  # v1 kept the identity's condition in the settings; a malformed one is checked as cond_src below
        cond = None if cond is None else np.asarray(cond, np.float32)
    except (TypeError, ValueError):
        raise fail("settings 'cond_src' is not a list of numbers") from None
    fp, delta = settings.get("styleflow_fingerprint"), settings.get("delta_fingerprint")
    return dict(tensors={"id_latent": "id_latent", "frames": "frames", "quad": "quad"}, cond_src=cond,
                offset_scale=None, generator_fingerprint=meta["generator_fingerprint"],
                styleflow_fingerprint=fp if isinstance(fp, str) else None,
                delta_fingerprint=delta if isinstance(delta, str) else None, resolution=meta["resolution"],
                fps=meta["fps"], num_frames=meta["num_frames"], channels=_json_field(meta, "channels", list, fail),
                pose_model=meta["pose_model"], settings=settings,
                frame_size=_json_field(meta, "frame_size", list, fail) if "frame_size" in meta else None)


def _fields_v2(tensors: dict, meta: dict, fail) -> dict:
    missing = [k for k in ("identity", "motion", "settings") if k not in meta]
    if missing:
        raise fail(f"missing metadata field(s) {', '.join(repr(k) for k in missing)}")
    identity, motion = _json_field(meta, "identity", dict, fail), _json_field(meta, "motion", dict, fail)
    coding = motion.get("coding", "float16")
    if coding not in MOTION_CODINGS:
        raise fail(f"motion coding {coding!r} is not one of {', '.join(MOTION_CODINGS)}; upgrade stylejax to read it")
    key_interval = motion.get("key_interval", 64)
    if coding != "float16" and (not isinstance(key_interval, int) or not 1 <= key_interval <= MAX_KEY_INTERVAL):
        raise fail(f"metadata field 'motion.key_interval' is not an integer in 1..{MAX_KEY_INTERVAL}")
    motion_tensors = ("motion.frames",) if coding == "float16" else ("motion.stream", "motion.blocks", "motion.step")
    missing = [k for k in ("identity.id_latent", "identity.cond_src") + motion_tensors + ("motion.offset_scale",)
               if k not in tensors]
    if missing:
        raise fail(f"missing tensor(s) {', '.join(repr(k) for k in missing)}")
    for part, keys, found in (("identity", ("generator_fingerprint", "styleflow_fingerprint", "resolution",
                                            "pose_model"), identity),
                              ("motion", ("num_frames", "fps", "channels", "frame_size"), motion)):
        missing = [k for k in keys if k not in found]
        if missing:
            raise fail(f"metadata {part!r} lacks {', '.join(repr(k) for k in missing)}")
    if not isinstance(motion["channels"], list):
        raise fail("metadata field 'motion.channels' is not a JSON list")
    if motion["frame_size"] is not None and not isinstance(motion["frame_size"], list):
        raise fail("metadata field 'motion.frame_size' is not a JSON list")
    for part, key, found in (("identity", "generator_fingerprint", identity), ("identity", "pose_model", identity)):
        if not isinstance(found[key], str):
            raise fail(f"metadata field '{part}.{key}' is not a string")
    fp, delta = identity["styleflow_fingerprint"], identity.get("delta_fingerprint")
    for key, value in (("styleflow_fingerprint", fp), ("delta_fingerprint", delta)):
        if value is not None and not isinstance(value, str):
            raise fail(f"metadata field 'identity.{key}' is not a string")
    return dict(tensors={"id_latent": "identity.id_latent", "frames": "motion.frames", "quad": "motion.quad",
                         "cond_src": "identity.cond_src", "offset_scale": "motion.offset_scale"},
                cond_src=None, offset_scale=None, generator_fingerprint=identity["generator_fingerprint"],
                styleflow_fingerprint=fp, delta_fingerprint=delta, resolution=identity["resolution"], fps=motion["fps"],
                num_frames=motion["num_frames"], channels=motion["channels"], pose_model=identity["pose_model"],
                settings=_json_field(meta, "settings", dict, fail), frame_size=motion["frame_size"], coding=coding,
                key_interval=key_interval)


def _decode_stream(tensors: dict, num_frames: int, columns: int, key_interval: int, fail) -> tuple:
    """(frames float32 [T, C], step) of a "delta-zstd" motion, every tensor checked first."""
    stream, blocks, step = tensors["motion.stream"], tensors["motion.blocks"], tensors["motion.step"]
    for name, arr, dtype in (("motion.stream", stream, np.uint8), ("motion.blocks", blocks, np.uint32),
                             ("motion.step", step, np.float16)):
        if arr.dtype != dtype or arr.ndim != 1:
            raise fail(f"tensor {name!r} is {arr.dtype} {list(arr.shape)}, expected a 1-d {np.dtype(dtype)} tensor")
    num_blocks = -(-num_frames // key_interval)  # counted before anything is allocated for them
    blocks, step = blocks.astype(np.int64), step.astype(np.float32)
    if len(blocks) != num_blocks + 1 or blocks[0] != 0 or blocks[-1] != len(stream) or (np.diff(blocks) <= 0).any():
        raise fail(f"tensor 'motion.blocks' does not hold {num_blocks + 1} increasing byte offsets from 0 to "
                   f"{len(stream)} (the stream's length)")
    rows = _block_rows(num_frames, key_interval)
    if len(step) != columns or not (np.isfinite(step).all() and (step > 0).all()):
        raise fail(f"tensor 'motion.step' must hold {columns} positive finite quantisation steps")
    try:
        frames = decode_motion_blocks([stream[a:b] for a, b in zip(blocks[:-1], blocks[1:])], 0, rows, columns, step)
    except ValueError as err:
        raise fail(f"motion stream: {err}") from None
    return frames, step


def _read_fail(path: str):
    """The error of an unreadable encoding file: one line naming the file and why."""
    return lambda why: EncodingError(f"cannot read encoding {path}: {why}")


def load_encoding(path: str, expected_fingerprint: str | None = None) -> Encoding:
    """Read an encoding (format version 1 or 2); with `expected_fingerprint`, refuse one made with a different
    generator."""
    path = os.fspath(path)
    fail = _read_fail(path)
    tensors, meta = container.read(path, fail, NOT_SAFETENSORS)
    if meta.get("format") != FORMAT:
        found = f"format {meta['format']!r}" if "format" in meta else "no format field"
        raise fail(f"not a stylejax encoding ({found}, expected {FORMAT!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise fail(f"format version {version!r} is not supported: this stylejax reads version(s) "
                   f"{', '.join(READABLE_VERSIONS)}; upgrade stylejax to read it")
    f = (_fields_v1 if version == "1" else _fields_v2)(tensors, meta, fail)
    fingerprint = f["generator_fingerprint"]
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise EncodingError(f"encoding {path} was encoded with generator {fingerprint}, this generator is "
                            f"{expected_fingerprint}: render with the generator used to encode")
    try:
        resolution, fps, num_frames = int(f["resolution"]), float(f["fps"]), int(f["num_frames"])
    except (TypeError, ValueError):
        raise fail("metadata fields 'resolution', 'fps', 'num_frames' must be numbers") from None
    names, channels = f["tensors"], f["channels"]
    if num_frames < 1:
        raise fail(f"num_frames {num_frames} is not positive")
    step = None
    if f.get("coding", "float16") != "float16":
        decoded, step = _decode_stream(tensors, num_frames, 3 + len(channels), f["key_interval"], fail)
        tensors = dict(tensors, **{"motion.frames": decoded})
    arrays = {k: tensors.get(name) for k, name in names.items()}
    for key, dtype in (("frames", np.float16 if step is None else np.float32), ("id_latent", np.float32),
                       ("quad", np.float32), ("cond_src", np.float32), ("offset_scale", np.float32)):
        if arrays.get(key) is not None and arrays[key].dtype != dtype:
            raise fail(f"tensor {names[key]!r} is {arrays[key].dtype}, expected {np.dtype(dtype)}")
    frames = arrays["frames"]
    if frames.ndim != 2 or frames.shape[1] != 3 + len(channels):
        raise fail(f"tensor {names['frames']!r} has shape {list(frames.shape)}, expected [T, {3 + len(channels)}] "
                   f"(3 pose columns + {len(channels)} channels)")
    if frames.shape[0] != num_frames:
        raise fail(f"tensor {names['frames']!r} has {frames.shape[0]} rows but num_frames is {num_frames}")
    for key, arr in arrays.items():
        if arr is not None and not np.isfinite(arr).all():
            raise fail(f"tensor {names[key]!r} has non-finite values")
    frames = frames.astype(np.float32)
    cond = arrays["cond_src"] if "cond_src" in names else f["cond_src"]
    try:
        return Encoding(id_latent=arrays["id_latent"], pose_deg=frames[:, :3], offsets=frames[:, 3:],
                        channels=tuple(channels), fps=fps, resolution=resolution, generator_fingerprint=fingerprint,
                        pose_model=f["pose_model"], settings=f["settings"], quad=arrays["quad"],
                        frame_size=f["frame_size"], cond_src=cond, styleflow_fingerprint=f["styleflow_fingerprint"],
                        offset_scale=arrays.get("offset_scale"), delta_fingerprint=f["delta_fingerprint"],
                        motion_step=step, key_interval=f.get("key_interval", 64) if step is not None else 64)
    except EncodingError as err:
        raise fail(str(err).removeprefix("invalid encoding: ")) from None


MOTION_DATA = ("frames", "motion.frames", "motion.stream", "motion.blocks", "motion.step")


def motion_bytes(path: str) -> int:
    """Bytes the per-frame motion takes in an encoding file: the float16 frames, or the compact coding's stream,
    block offsets and steps (not the header, the identity, `offset_scale` or the optional quads)."""
    with open(path, "rb") as f:
        header, _ = container.read_header(f, _read_fail(path), NOT_SAFETENSORS)
    total = 0
    for name in MOTION_DATA:
        entry = header.get(name)
        if isinstance(entry, dict):
            lo, hi = entry.get("data_offsets", (0, 0))
            total += int(hi) - int(lo)
    return total


def load_motion_range(path: str, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(pose_deg [n, 3], offsets [n, K]) of frames first..end-1 of a compact ("delta-zstd") encoding, reading
    only the header, the block offsets, the steps and the blocks that hold those frames (random access)."""
    fail = _read_fail(path)
    with open(path, "rb") as f:
        header, base = container.read_header(f, fail, NOT_SAFETENSORS)
        meta = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT or meta.get("format_version") != "2":
            raise fail("random access needs a format-2 encoding")
        motion = _json_field(meta, "motion", dict, fail)
        if motion.get("coding") != "delta-zstd":
            raise fail(f"random access needs the compact motion coding; this file's is {motion.get('coding', 'float16')!r}")
        t, key, k = motion.get("num_frames"), motion.get("key_interval"), len(motion.get("channels") or [])
        if not (isinstance(t, int) and isinstance(key, int) and t > 0 and 1 <= key <= MAX_KEY_INTERVAL):
            raise fail("metadata 'motion' has no valid num_frames and key_interval")
        if not 0 <= first < end <= t:
            raise EncodingError(f"frames {first}..{end - 1} are outside the encoding's 0..{t - 1}")

        def read(name, dtype, lo=None, hi=None):
            entry = header.get(name)
            if not isinstance(entry, dict) or entry.get("dtype") != {np.uint8: "U8", np.int64: "I64",
                                                                      np.float16: "F16", np.uint32: "U32"}[dtype]:
                raise fail(f"missing or mistyped tensor {name!r}")
            a, b = (int(v) for v in entry["data_offsets"])
            lo, hi = (a, b) if lo is None else (a + lo, a + hi)
            if not a <= lo <= hi <= b:
                raise fail(f"tensor {name!r}: byte range outside the tensor")
            f.seek(base + lo)
            data = f.read(hi - lo)
            if len(data) != hi - lo:
                raise fail("truncated")
            return np.frombuffer(data, dtype)

        blocks = read("motion.blocks", np.uint32).astype(np.int64)
        step = read("motion.step", np.float16).astype(np.float32)
        if (len(blocks) != -(-t // key) + 1 or blocks[0] != 0 or (np.diff(blocks) <= 0).any() or len(step) != 3 + k
                or not (np.isfinite(step).all() and (step > 0).all())):
            raise fail("tensor 'motion.blocks' or 'motion.step' does not fit the motion")
        b0, b1 = first // key, (end - 1) // key + 1
        rows = [min(key, t - b * key) for b in range(b0, b1)]
        data = read("motion.stream", np.uint8, int(blocks[b0]), int(blocks[b1]))
        blobs = [data[blocks[b] - blocks[b0]:blocks[b + 1] - blocks[b0]] for b in range(b0, b1)]
    try:
        frames = decode_motion_blocks(blobs, b0, rows, 3 + k, step)
    except ValueError as err:
        raise fail(f"motion stream: {err}") from None
    frames = frames[first - b0 * key:end - b0 * key]
    return frames[:, :3], frames[:, 3:]
