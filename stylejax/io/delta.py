"""The generator delta file: what `finetune` changed in a generator's synthesis weights (docs/finetune.md).

A fine-tuned video is its encoding (70 bytes a frame, unchanged) plus one delta file against the *base*
generator, written beside the encoding (`clip.delta` for `clip.enc`): tuned weight = base weight + delta.

Tensors (float16 or float32), named by the parameter's path under the generator's `params["synthesis"]` with
dots (`b64.conv1.weight`, `b64.conv1.affine.weight`, `const`):
- full form: `NAME`, the parameter's shape;
- low-rank form: `NAME.u` [rows, r] and `NAME.v` [r, cols] for a weight of two or more axes, the delta being
  (u @ v) reshaped to the parameter (rows = the product of every axis but the last: k·k·in for a conv weight
  [k, k, in, out], in for an affine weight [in, out]); 1-D and scalar parameters stay full.
Parameters the file does not name are unchanged. Metadata (`__metadata__`): `format` "stylejax-delta",
`format_version` "1", `base_generator_fingerprint` (the generator it was tuned from; a delta is refused on
any other), `form` ("full" or "lowrank-R"), `dtype`, `settings` (JSON, for the record). The file is written
with a fixed header order (equal deltas give equal bytes) and read without unpickling anything. A delta is
loaded and checked like a network: every name must be a synthesis parameter of the generator, with its shape,
finite values.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from stylejax.errors import UserError
from stylejax.io import container

FORMAT = "stylejax-delta"
FORMAT_VERSION = "1"
SUFFIX = ".delta"
_DTYPES = {"F16": np.float16, "F32": np.float32}


class DeltaError(UserError, ValueError):
    """A delta file cannot be written, read or applied; the message is one line naming the file and the fix."""


def delta_path_for(encoding_path):
    """Where `encode` writes the delta of `encoding_path`: the same name with `.delta` (`clip.enc` -> `clip.delta`)."""
    root, _ = os.path.splitext(os.fspath(encoding_path))
    return root + SUFFIX


def flatten(synthesis):
    """{dotted name: array} of a nested dict of arrays (a generator's `params["synthesis"]`)."""
    out = {}

    def walk(tree, prefix):
        for key in sorted(tree):
            value = tree[key]
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                out[name] = value
    walk(synthesis, "")
    return out


def unflatten(flat):
    out = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def is_delta_file(path) -> bool:
    """Whether `path` is a stylejax delta by its header (the only kind of file a delta output may replace with
    --overwrite); reads at most the header."""
    return (container.metadata(path) or {}).get("format") == FORMAT


@dataclasses.dataclass(frozen=True, eq=False)
class Delta:
    """A generator delta: `tensors` {file tensor name: array}, the base generator's fingerprint, the form."""

    base_fingerprint: str
    tensors: dict
    form: str = "full"
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """16 hex digits over the tensors (names, dtypes, shapes, bytes): what an encoding records."""
        from stylejax.io.encoding import fingerprint_params

        return fingerprint_params(self.tensors)

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(t).nbytes for t in self.tensors.values()))

    @property
    def dtype(self) -> str:
        kinds = sorted({np.asarray(t).dtype.name for t in self.tensors.values()})
        return "+".join(kinds) if kinds else "float32"

    def dense(self):
        """{parameter name: (float32 delta, low-rank?)}: a low-rank pair multiplied out into [rows, cols]."""
        out = {}
        for name, t in self.tensors.items():
            if name.endswith(".v"):
                continue
            if name.endswith(".u"):
                base = name[:-2]
                out[base] = (np.asarray(t, np.float32) @ np.asarray(self.tensors[base + ".v"], np.float32), True)
            else:
                out[name] = (np.asarray(t, np.float32), False)
        return out

    def check_fits(self, generator, source="delta"):
        """Raises DeltaError unless this delta was made from `generator` (fingerprint) and every tensor names one
        of its synthesis parameters with a fitting shape. Returns {parameter name: float32 delta, its shape}."""
        from stylejax.io.encoding import fingerprint_params

        have = fingerprint_params({"params": generator.params, "buffers": generator.buffers})  # = base.fingerprint
        if have != self.base_fingerprint:
            raise DeltaError(f"{source} was tuned from generator {self.base_fingerprint}, this generator is {have}: "
                             "use the delta made with this generator (or --delta none)")
        params = flatten(generator.params["synthesis"])
        out = {}
        for name, (d, lowrank) in self.dense().items():
            if name not in params:
                raise DeltaError(f"{source}: tensor {name!r} is not a synthesis parameter of the generator; the file "
                                 "is damaged or for another architecture")
            shape = tuple(np.shape(params[name]))
            want = (int(np.prod(shape[:-1])), shape[-1]) if lowrank and len(shape) >= 2 else shape
            if d.shape != want:
                raise DeltaError(f"{source}: tensor {name!r} gives shape {list(d.shape)}, expected {list(want)} for "
                                 "the parameter; the file is damaged or for another architecture")
            out[name] = d.reshape(shape)
        return out

    def apply(self, generator, source="delta"):
        """The tuned generator: base synthesis parameters + this delta (float32), after `check_fits`."""
        import jax.numpy as jnp

        dense = self.check_fits(generator, source)
        flat = flatten(generator.params["synthesis"])
        tuned = {name: (jnp.asarray(p) + jnp.asarray(dense[name]) if name in dense else p) for name, p in flat.items()}
        return type(generator)(generator.config, {**generator.params, "synthesis": unflatten(tuned)}, generator.buffers)


# --------------------------------------------------------------------------------------------------------
# Writing and reading
# --------------------------------------------------------------------------------------------------------

def to_bytes(delta: Delta) -> bytes:
    """The safetensors bytes of a delta, in an order fixed by its contents (`container.serialise`)."""
    tensors = {}
    for name in sorted(delta.tensors):
        arr = np.asarray(delta.tensors[name])  # (not ascontiguousarray: it makes a scalar 1-D)
        if arr.dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise DeltaError(f"delta tensor {name!r} is {arr.dtype}; a delta holds float16 or float32")
        tensors[name] = arr
    meta = {"base_generator_fingerprint": delta.base_fingerprint, "dtype": delta.dtype, "form": delta.form,
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "settings": json.dumps(delta.settings, sort_keys=True, allow_nan=False)}
    return container.serialise(tensors, meta)


def save_delta(path, delta: Delta) -> None:
    """Writes `delta` to `path` atomically (temporary sibling, fsync, rename)."""
    from stylejax.io import atomic

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DeltaError(f"cannot save delta {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise DeltaError(f"cannot save delta {path}: it is a directory")
    try:
        atomic.write_bytes(path, to_bytes(delta))
    except OSError as err:
        raise DeltaError(f"cannot save delta {path}: {err.strerror or err}") from None


def load_delta(path, generator=None) -> Delta:
    """Reads a delta file; with `generator`, also checks that it was tuned from that generator and fits it."""
    path = os.fspath(path)
    fail = lambda why: DeltaError(f"cannot read delta {path}: {why}")
    tensors, meta = container.read(path, fail, "not a safetensors file (deltas are written by the finetune stage of "
                                   "python -m stylejax.encode)")
    if meta.get("format") != FORMAT:
        raise fail(f"not a stylejax delta (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise fail(f"format version {meta.get('format_version')!r} is not supported: this stylejax reads "
                   f"{FORMAT_VERSION}; upgrade stylejax to read it")
    base = meta.get("base_generator_fingerprint")
    if not isinstance(base, str) or not base:
        raise fail("metadata lacks 'base_generator_fingerprint'")
    for name, t in tensors.items():
        if t.dtype not in (np.float16, np.float32):
            raise fail(f"tensor {name!r} is {t.dtype}, expected float16 or float32")
        if not np.isfinite(t).all():
            raise fail(f"tensor {name!r} has non-finite values")
        if name.endswith((".u", ".v")):
            pair = name[:-2] + (".v" if name.endswith(".u") else ".u")
            if pair not in tensors:
                raise fail(f"low-rank tensor {name!r} has no {pair!r}")
            if name.endswith(".u") and (t.ndim != 2 or tensors[pair].ndim != 2 or t.shape[1] != tensors[pair].shape[0]):
                raise fail(f"low-rank pair {name!r} {list(t.shape)} and {pair!r} {list(tensors[pair].shape)} do not "
                           "multiply")
    try:
        settings = json.loads(meta.get("settings", "{}"))
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        raise fail("metadata field 'settings' is not a JSON object")
    delta = Delta(base_fingerprint=base, tensors=dict(tensors), form=str(meta.get("form", "full")), settings=settings)
    if generator is not None:
        delta.check_fits(generator, source=f"delta {path}")
    return delta
