"""Torch-free, execution-free reading of pickled checkpoints.

`pickle` turns every class or function reference in a file into a call, so loading an untrusted
checkpoint with `pickle.load`/`torch.load` can run anything. Here every global a pickle names goes
through an allowlist that maps it to *our own* harmless stand-in (e.g. torch's tensor rebuild becomes
a numpy view); anything else raises `UnsafeCheckpointError` and nothing is constructed.

Supported containers:
- torch zip format (torch >= 1.6): `<root>/data.pkl` + `<root>/data/<key>` raw storages;
- torch legacy format (magic number, protocol, sys info, pickle, storage keys, raw storages), which is
  also what `torch.storage._load_from_bytes` holds inside plain pickles of tensors (NVlabs pickles);
- plain pickles (`restricted_load`), with the caller extending the allowlist for its own format.
"""
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from convert import ConversionError


class UnsafeCheckpointError(ConversionError):
    """The file asks to construct something outside the allowlist; it is refused, nothing runs."""


# ----------------------------------------------------------------------------------------------
# Stand-ins for torch objects.

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
try:  # bfloat16 storages (numpy has no bfloat16; ml_dtypes ships with jax)
    import ml_dtypes

    _STORAGE_DTYPES["BFloat16Storage"] = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover
    pass

_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "int64": np.int64,
    "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


class _StorageType:
    """Stands for `torch.FloatStorage` etc. in persistent ids: carries only the element dtype."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat array of elements; tensors are views into it."""

    def __init__(self, data):
        self.data = data


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("tensor without a storage in checkpoint; file refused")
    data = storage.data
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s == 0 for s in size):
        return np.zeros(size, data.dtype)
    extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if storage_offset < 0 or extent > data.size or any(s < 0 for s in stride):
        raise ConversionError("tensor points outside its storage; the checkpoint is corrupt")
    # A view: in the legacy format the storage bytes arrive only after the whole pickle is read;
    # `_materialise` turns views into contiguous copies once loading is complete.
    return np.lib.stride_tricks.as_strided(
        data[storage_offset:], shape=size, strides=tuple(s * data.itemsize for s in stride),
        writeable=False)


def _rebuild_parameter(data, *unused):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


def _storage_from_bytes(b):
    """`torch.storage._load_from_bytes`: a legacy-format torch file inside a plain pickle."""
    return _load_legacy(io.BytesIO(b), extra_globals=None)


def _torch_size(*args):
    return tuple(*args) if args else ()


class _Opaque:
    """Plain-data stand-in for allowlisted simple classes (argparse.Namespace, EasyDict, ...)."""

    def __init__(self, *args, **kwargs):
        self.__dict__.update(kwargs)

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state


def _reconstructor(cls, base, state):
    """`copyreg._reconstructor`, restricted to our own stand-in classes."""
    if not (isinstance(cls, type) and issubclass(cls, (_Opaque, dict))):
        raise UnsafeCheckpointError(f"checkpoint asks to build {cls!r}; file refused")
    return cls.__new__(cls)


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


def _numpy_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafeCheckpointError("checkpoint asks for an ndarray subclass; file refused")
    return np.ndarray.__new__(np.ndarray, shape, _numpy_dtype(dtype))


def _numpy_frombuffer(buf, dtype, shape, order="C"):
    """numpy's protocol-5 array path (`numpy._core.numeric._frombuffer`), numeric dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ("C", "F"):
        raise UnsafeCheckpointError("unexpected numpy buffer in pickle; file refused")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy()


def _numpy_dtype(spec, align=False, copy=False):
    dt = np.dtype(spec)
    if dt.hasobject:
        raise UnsafeCheckpointError("checkpoint holds an object-dtype array; file refused")
    return dt


def _codecs_encode(text, encoding="utf-8"):
    """Protocol-2 pickles spell bytes as `_codecs.encode(str, 'latin1')`."""
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8") or not isinstance(text, str):
        raise UnsafeCheckpointError("unexpected _codecs.encode call in checkpoint; file refused")
    return text.encode(encoding)


BASE_GLOBALS = {
    ("_codecs", "encode"): _codecs_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("argparse", "Namespace"): _Opaque,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    # protocol-5 pickles (Python >= 3.14 default) spell numpy arrays this way
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
}

TORCH_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch", "Size"): _torch_size,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    **{("torch", name): np.dtype(dt) for name, dt in _TORCH_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed, persistent_load=None):
        super().__init__(file)
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"checkpoint wants to import {module}.{name}, which is not a plain tensor or container; "
                "file refused, nothing from it was run") from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafeCheckpointError("unexpected persistent reference in pickle; file refused")
        return self._persistent(pid)


def restricted_load(fileobj, allowed=None, persistent_load=None):
    """`pickle.load` that resolves globals only through `allowed` (+ the base and torch tensor sets)."""
    table = {**BASE_GLOBALS, **TORCH_TENSOR_GLOBALS, **(allowed or {})}
    return _RestrictedUnpickler(fileobj, table, persistent_load).load()


# ----------------------------------------------------------------------------------------------
# torch.save containers.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _check_storage_pid(pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
        raise UnsafeCheckpointError(f"unexpected persistent id {str(pid)[:60]!r}; file refused")
    return pid[1].dtype, str(pid[2]), int(pid[4])


def _load_zip(path, extra_globals):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise ConversionError(f"{path}: zip file without data.pkl, not a PyTorch checkpoint")
        root = pkl[0][: -len("data.pkl")]
        big_endian = False
        if root + "byteorder" in names:
            big_endian = zf.read(root + "byteorder").strip() == b"big"
        storages = {}

        def persistent_load(pid):
            dtype, key, numel = _check_storage_pid(pid)
            if key not in storages:
                raw = zf.read(f"{root}data/{key}")
                dt = dtype.newbyteorder(">") if big_endian and dtype.itemsize > 1 else dtype
                if len(raw) < numel * dtype.itemsize:
                    raise ConversionError(f"{path}: storage {key} is truncated; the checkpoint is corrupt")
                storages[key] = _Storage(np.frombuffer(raw, dt, count=numel).astype(dtype))
            return storages[key]

        with zf.open(pkl[0]) as f:
            return restricted_load(f, extra_globals, persistent_load)


def is_torch_file(path):
    """True for a torch.save file: a zip archive, or a legacy file starting with the pickled magic number."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(14)
    # protocol 2 PROTO opcode, then LONG1 of 10 bytes holding the magic number
    return head == b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")


def _load_legacy(f, extra_globals):
    def plain(fobj):
        return restricted_load(fobj, None, None)

    if plain(f) != _LEGACY_MAGIC:
        raise ConversionError("not a PyTorch checkpoint (bad magic number)")
    protocol = plain(f)
    if protocol != 1001:
        raise ConversionError(f"unsupported legacy torch protocol {protocol}")
    plain(f)  # sys info
    storages = {}  # key -> (dtype, numel, _Storage)

    def persistent_load(pid):
        dtype, key, numel = _check_storage_pid(pid)
        if key not in storages:
            storages[key] = _Storage(np.empty(numel, dtype))
        st = storages[key]
        if len(pid) > 5 and pid[5] is not None:  # view: (view_key, offset, numel)
            view_key, offset, view_numel = pid[5]
            if view_key not in storages:
                storages[view_key] = _Storage(st.data[offset: offset + view_numel])
            return storages[view_key]
        return st

    result = restricted_load(f, extra_globals, persistent_load)
    keys = plain(f)
    for key in keys:
        st = storages[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * st.data.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes or numel != st.data.size:
            raise ConversionError("storage data is truncated; the checkpoint is corrupt")
        st.data[...] = np.frombuffer(raw, st.data.dtype, count=numel)
    return result


def _materialise(obj):
    if isinstance(obj, np.ndarray):
        return np.array(obj)
    if isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _materialise(obj[k])
        return obj
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    if isinstance(obj, _Opaque):
        _materialise(obj.__dict__)
    return obj


_READ_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, KeyError, ValueError,
                TypeError, IndexError, AttributeError, MemoryError)


def _read(path, load, what, hint):
    """Runs `load(path)`; every failure becomes a one-line ConversionError that names the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        return _materialise(load(path))
    except ConversionError as e:
        msg = str(e)
        raise type(e)(msg if msg.startswith(path) else f"{path}: {msg}") from None
    except _READ_ERRORS as e:
        raise ConversionError(
            f"{path}: cannot be read as {what} ({type(e).__name__}: {str(e)[:80]}); {hint}") from None


def load_torch_file(path, extra_globals=None):
    """Reads a `torch.save` file like `torch.load(weights_only=True)`, tensors as numpy arrays.

    `extra_globals` extends the allowlist ({(module, name): stand-in}) for formats that need more.
    Raises ConversionError (UnsafeCheckpointError for disallowed content) with a one-line message.
    """
    def load(p):
        if zipfile.is_zipfile(p):
            return _load_zip(p, extra_globals)
        with open(p, "rb") as f:
            return _load_legacy(f, extra_globals)

    return _read(path, load, "a PyTorch checkpoint", "is the file complete and a torch.save file?")


def load_pickle_file(path, allowed=None):
    """Plain pickle (e.g. NVlabs / TF StyleGAN2 .pkl) through the allowlist; one-line errors."""
    def load(p):
        with open(p, "rb") as f:
            return restricted_load(f, allowed)

    return _read(path, load, "a pickle", "is the file complete?")


def flatten_state_dict(obj, prefix=""):
    """{'a': {'b': arr}} -> {'a.b': arr}; keeps only numpy arrays."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_state_dict(v, f"{prefix}{k}."))
    elif isinstance(obj, np.ndarray):
        out[prefix[:-1]] = obj
    return out
