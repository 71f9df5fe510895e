"""The safetensors container both stylejax file formats use (encodings: `io.encoding`; generator deltas:
`io.delta`): bounded reading with one clear reason for each failure, and a writer whose bytes depend on the
contents only.

Reading checks by hand before the safetensors library does, so that a damaged, truncated or foreign file
gives a one-line reason, and so that a header that declares a huge size is refused before it is read.
"""
from __future__ import annotations

import json
import os
import struct

MAX_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header


def serialise(tensors: dict, meta: dict) -> bytes:
    """safetensors bytes whose header lists the metadata first, in `meta`'s order, then the tensors in the
    order of their data: identical contents give identical files. (The safetensors library writes its
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


def read(path: str, fail, not_safetensors: str) -> tuple[dict, dict]:
    """(tensors, metadata) of the safetensors file `path`; each failure raises `fail(reason)`, with
    `not_safetensors` as the reason for a file that is not one."""
    import safetensors.numpy

    if not os.path.exists(path):
        raise fail("no such file")
    if not os.path.isfile(path):
        raise fail("not a file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    if len(data) < 9 or data[8:9] != b"{":
        raise fail(not_safetensors)
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER:
        raise fail(not_safetensors)
    if 8 + header_len > len(data):
        raise fail(f"truncated ({len(data)} bytes, its header alone needs {8 + header_len})")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except Exception:
        raise fail(not_safetensors) from None
    if not isinstance(header, dict):
        raise fail(not_safetensors)
    if 8 + header_len + max(ends, default=0) > len(data):
        raise fail(f"truncated ({len(data)} bytes, its tensors need {8 + header_len + max(ends)})")
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as err:  # the library's own checks: offsets, dtypes, shapes
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise fail(f"corrupt safetensors file ({detail})") from None
    meta = header.get("__metadata__") or {}
    return tensors, meta if isinstance(meta, dict) else {}


def read_header(f, fail, not_safetensors: str) -> tuple[dict, int]:
    """(header, offset of the data) of an open safetensors file, reading the header alone (random access)."""
    head = f.read(8)
    if len(head) < 8:
        raise fail(not_safetensors)
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        raise fail(not_safetensors)
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise fail(not_safetensors) from None
    if not isinstance(header, dict):
        raise fail(not_safetensors)
    return header, 8 + n


def metadata(path: str) -> dict | None:
    """The `__metadata__` of a safetensors file, or None when `path` is not one (or unreadable); reads at most
    the header. What decides whether an output may be replaced by --overwrite."""
    try:
        with open(path, "rb") as f:
            header, _ = read_header(f, ValueError, "not a safetensors file")
    except (OSError, ValueError):
        return None
    meta = header.get("__metadata__")
    return meta if isinstance(meta, dict) else None
