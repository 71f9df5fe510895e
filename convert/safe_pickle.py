"""Torch-free, execution-free, size-bounded reading of pickled checkpoints.

`pickle` turns every class or function reference in a file into a call, so loading an untrusted
checkpoint with `pickle.load`/`torch.load` can run anything. Here every global a pickle names goes
through an allowlist that maps it to *our own* harmless stand-in (e.g. torch's tensor rebuild becomes
a numpy view); anything else raises `UnsafeCheckpointError` and nothing is constructed.

A few hundred bytes of pickle can also describe gigabytes (memo re-use, huge declared sizes, stride-0
tensors, zip bombs) or nesting deep enough to crash the interpreter. So nothing is built from a
declared size before that size is checked, and each limit fails with a one-line
`CheckpointLimitError` naming it:

- pickle structure: before the C unpickler sees a pickle, `_scan` walks its opcodes once without
  building anything, simulating the unpickler's stack with placeholder nodes. The graph of those nodes
  bounds the real objects (every call result is assumed to contain its arguments), and is refused if
  it has more than `MAX_PICKLE_OPS` operations, a memo index beyond that, a cycle (self reference),
  nesting deeper than `MAX_DEPTH`, or a node whose full expansion -- every re-used reference counted
  again, as a tree walk would -- exceeds `MAX_OBJECTS`; what the calls and dict keys of the load itself
  walk (hashing is recursive and uncached for tuples) is bounded by the same number. Declared string
  lengths and frames must fit in the bytes that remain. With that, every later recursive walk (ours
  and the converters') is short and finite, and no C-level hash or repr recurses deeply;
- shared and allocating objects: state (BUILD) applied to anything a pickle names as a global is
  refused; `numpy.ndarray` and `bytes` are never called with file-given sizes; numpy dtype and array
  states are checked in Python and numpy's own C `__setstate__` never sees them;
- bytes: a per-call `max_bytes` (default `DEFAULT_MAX_BYTES`) bounds the raw tensor storage read
  and, separately, the arrays handed back (tensors are materialised once each, a stride-0 view at its
  full broadcast size), as well as the size of any one pickle;
- storages must fit the bytes really there: a zip entry must hold exactly the storage's declared size (its
  header says so, and it is read in chunks no further than that size plus one byte, so an entry that
  inflates to more is refused without inflating it), legacy storages must fit in the file,
  and a tensor's offset/size/stride must stay inside its storage.

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
import pickletools
import reprlib
import struct
import zipfile
import zlib
from array import array

import numpy as np

from convert import ConversionError

MiB, GiB = 1 << 20, 1 << 30

# Limits (module constants so that a caller with unusual files can raise them deliberately).
DEFAULT_MAX_BYTES = 4 * GiB    # tensor data per load call; converters pass tighter ones
# Real StyleGAN2/e4e/NVlabs/TF files need <= ~5 * 10^4 pickle operations and expanded objects, and
# nest <= 32 levels (an NVlabs module tree). At the caps, the worst a tiny file can make the unpickler
# build is ~1M small objects (~250 MB, a few seconds).
MAX_PICKLE_OPS = 1_000_000     # opcodes in one pickle
MAX_OBJECTS = 1_000_000        # objects a full tree walk may visit, re-used references counted again
MAX_DEPTH = 100                # container nesting
MAX_ZIP_ENTRIES = 100_000      # a torch zip has one entry per storage (+5)


class UnsafeCheckpointError(ConversionError):
    """The file asks to construct something outside the allowlist; it is refused, nothing runs."""


class CheckpointLimitError(ConversionError):
    """The file declares more than a limit allows; refused before anything of that size was built."""


def _size(n):
    for unit, scale in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _one_line(text, limit=None):
    """File-derived text for a message: control characters escaped, so a message stays one line."""
    text = str(text)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if limit is None else text[:limit]


_short_repr = reprlib.Repr()
_short_repr.maxlevel, _short_repr.maxstring, _short_repr.maxother = 2, 40, 40


class _Budget:
    """Bytes one load may allocate on behalf of the file, both kinds checked against `max_bytes`."""

    def __init__(self, max_bytes):
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.storage = 0  # raw storage bytes read from the file
        self.arrays = 0   # arrays materialised for the caller

    def charge_storage(self, nbytes, what):
        self.storage += nbytes
        if self.storage > self.max_bytes:
            raise CheckpointLimitError(
                f"{what} declares {_size(nbytes)}, bringing the tensor storage to {_size(self.storage)}, "
                f"over the limit of {_size(self.max_bytes)} (max_bytes); refused before reading it")

    def charge_array(self, array_):
        self.arrays += array_.nbytes
        if self.arrays > self.max_bytes:
            raise CheckpointLimitError(
                f"tensors declare {_size(self.arrays)} in total (this one {list(array_.shape)} "
                f"{array_.dtype}, {_size(array_.nbytes)}), over the limit of {_size(self.max_bytes)} "
                "(max_bytes); refused before allocating it")


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
    """Stands for `torch.FloatStorage` etc. in persistent ids: carries only the element dtype.
    One shared instance per name, so it is immutable (a pickle cannot re-type later loads)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", np.dtype(_STORAGE_DTYPES[name]))

    def __setattr__(self, key, value):
        raise UnsafeCheckpointError("checkpoint tries to modify a torch storage type; file refused")


class _Storage:
    """A flat array of elements; tensors are views into it."""

    def __init__(self, data):
        self.data = data


def _int_tuple(value, what):
    if not isinstance(value, (tuple, list)) or len(value) > 32 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise ConversionError(f"tensor {what} {_short_repr.repr(value)} is not a list of at most 32 ints; "
                              "the checkpoint is corrupt")
    return tuple(int(v) for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("tensor without a storage in checkpoint; file refused")
    data = storage.data
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if not isinstance(storage_offset, (int, np.integer)) or len(size) != len(stride):
        raise ConversionError("tensor offset/size/stride do not match; the checkpoint is corrupt")
    storage_offset = int(storage_offset)
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or storage_offset < 0:
        raise ConversionError("tensor has a negative size, stride or offset; the checkpoint is corrupt")
    if 0 in size:
        return np.zeros(size, data.dtype)
    extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if extent > data.size:
        raise ConversionError(f"tensor {list(size)} (stride {list(stride)}, offset {storage_offset}) reaches "
                              f"element {extent - 1} of a {data.size}-element storage; the checkpoint is corrupt")
    # A view, no allocation: in the legacy format the storage bytes arrive only after the whole pickle
    # is read. `_materialise` turns each view into a contiguous copy, charging its full size first
    # (a stride-0 view is charged at its broadcast size).
    return np.lib.stride_tricks.as_strided(
        data[storage_offset:], shape=size, strides=tuple(s * data.itemsize for s in stride),
        writeable=False)


def _rebuild_parameter(data, *unused):
    if not isinstance(data, np.ndarray):
        raise UnsafeCheckpointError("torch Parameter without tensor data in checkpoint; file refused")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(args, tuple):
        raise UnsafeCheckpointError("unexpected tensor rebuild function in checkpoint; file refused")
    return func(*args)


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


def _plain_dtype(dt):
    """Numeric numpy dtypes only: no objects, records or sub-arrays."""
    if not (isinstance(dt, np.dtype) and dt.kind in "biufc" and dt.fields is None and dt.subdtype is None
            and not dt.hasobject):
        raise UnsafeCheckpointError(f"checkpoint holds a numpy array of dtype {_short_repr.repr(dt)}, not a "
                                    "plain number type; file refused")
    return dt


# numpy's own dtype/ndarray __setstate__ (C code) never sees a file's state: the two stand-ins below
# take the pickled state, check it in Python, and `_materialise` swaps in the real dtype / array.

class _NumpyDType:
    """`numpy.dtype(spec, align, copy)` and its pickled state (version, byteorder, no fields/subarray)."""

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, (str, bytes)):
            raise UnsafeCheckpointError("unexpected numpy dtype spec in checkpoint; file refused")
        self.dtype = _plain_dtype(np.dtype(spec))

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)):
            raise UnsafeCheckpointError("unexpected numpy dtype state in checkpoint; file refused")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _as_dtype(value):
    if isinstance(value, _NumpyDType):
        return value.dtype
    return _plain_dtype(value)  # a torch dtype global (a numpy dtype already)


class _NumpyArray:
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` and the array state BUILD gives it:
    ([version,] shape, dtype, fortran_order, raw bytes). The bytes must be in the file."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) in (4, 5)):
            raise UnsafeCheckpointError("unexpected numpy array state in checkpoint; file refused")
        shape, dtype, fortran, data = state[-4:]
        shape, dtype = _int_tuple(shape, "shape"), _as_dtype(dtype)
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafeCheckpointError("numpy array without raw data in checkpoint; file refused")
        if any(n < 0 for n in shape) or len(data) != int(np.prod(shape, dtype=object)) * dtype.itemsize:
            raise ConversionError(f"numpy array {list(shape)} {dtype} holds {len(data)} bytes; the file is corrupt")
        self.array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


class _Token:
    """An inert, immutable marker."""

    __slots__ = ("name",)

    def __init__(self, name):
        object.__setattr__(self, "name", name)

    def __setattr__(self, key, value):
        raise UnsafeCheckpointError(f"checkpoint tries to modify {self.name}; file refused")

    def __call__(self, *args, **kwargs):
        raise UnsafeCheckpointError(f"checkpoint calls {self.name} directly; file refused")

    def __repr__(self):
        return self.name


_NDARRAY = _Token("numpy.ndarray")  # stands for the class; calling the real one would allocate a shape


def _numpy_reconstruct(subtype, shape, dtype):
    """`numpy.core.multiarray._reconstruct`: numpy pickles an empty array, then fills it by BUILD."""
    if subtype is not _NDARRAY:
        raise UnsafeCheckpointError("checkpoint asks for an ndarray subclass; file refused")
    return _NumpyArray()


def _numpy_scalar(dtype, data=None):
    dtype = _as_dtype(dtype)
    if data is None:
        return dtype.type()
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise ConversionError("malformed numpy scalar in checkpoint; the file is corrupt")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_frombuffer(buf, dtype, shape, order="C"):
    """numpy's protocol-5 array path (`numpy._core.numeric._frombuffer`), numeric dtypes only. A view
    of the pickle's bytes; `_materialise` copies it."""
    if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F"):
        raise UnsafeCheckpointError("unexpected numpy buffer in pickle; file refused")
    return np.frombuffer(buf, dtype=_as_dtype(dtype)).reshape(_int_tuple(shape, "shape"), order=order)


def _codecs_encode(text, encoding="utf-8"):
    """Protocol-2 pickles spell bytes as `_codecs.encode(str, 'latin1')`."""
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8") or not isinstance(text, str):
        raise UnsafeCheckpointError("unexpected _codecs.encode call in checkpoint; file refused")
    return text.encode(encoding)


def _empty_bytes(*args):
    """Protocol <= 2 pickles spell b'' as `bytes()`; the real `bytes(n)` would allocate n bytes."""
    if args:
        raise UnsafeCheckpointError("checkpoint calls bytes() with arguments; file refused")
    return b""


BASE_GLOBALS = {
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,  # protocol <= 2 pickles spell builtins the Python 2 way
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "slice"): slice,
    ("__builtin__", "complex"): complex,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("argparse", "Namespace"): _Opaque,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy", "ndarray"): _NDARRAY,  # not the class: calling it would allocate a declared shape
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    # protocol-5 pickles (Python >= 3.14 default) spell numpy arrays this way
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
}

# `torch.storage._load_from_bytes` is added per load (`_Load.table`): it needs the load's byte budget.
TORCH_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _torch_size,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    **{("torch", name): np.dtype(dt) for name, dt in _TORCH_DTYPES.items()},
}


# ----------------------------------------------------------------------------------------------
# The pre-scan: bounds a pickle's structure before the C unpickler builds any of it.

class _PickleStream:
    """One pickle's bytes for the pre-scan. Refuses to read past `limit` (max_bytes) and any declared
    length beyond the `available` bytes, so no read allocates more than the file holds. `exact`:
    `available` is the true remaining size (a file, not a zip entry whose header could lie), so
    payloads may be skipped by seeking."""

    def __init__(self, f, available, limit, exact):
        self._f, self._available, self._limit, self._exact = f, available, limit, exact
        self.pos = 0

    def _check(self, n):
        if n < 0:
            raise _corrupt(f"negative length at offset {self.pos}")
        if self._available is not None and self.pos + n > self._available:
            raise _corrupt(f"{_size(n)} declared at offset {self.pos}, only "
                           f"{_size(self._available - self.pos)} follow")
        if self.pos + n > self._limit:
            raise CheckpointLimitError(f"pickle data is larger than the limit of {_size(self._limit)} "
                                       "(max_bytes); refused")

    def read(self, n):
        self._check(n)
        data = self._f.read(n)
        if len(data) != n:
            raise _corrupt(f"data ends at offset {self.pos + len(data)}")
        self.pos += n
        return data

    def readline(self):
        room = self._limit if self._available is None else min(self._limit, self._available)
        line = self._f.readline(room - self.pos + 1)
        self._check(len(line))
        self.pos += len(line)
        return line

    def skip(self, n):
        self._check(n)
        if self._exact:
            self._f.seek(n, io.SEEK_CUR)
            self.pos += n
            return
        while n:
            got = len(self._f.read(min(n, 16 * MiB)))
            if not got:
                raise _corrupt(f"data ends at offset {self.pos}")
            self.pos, n = self.pos + got, n - got


_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_LENGTH_PREFIXED = {  # argument kinds that carry a payload after a length: skipped, never read
    pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
    pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}
_ATOM, _GLOBAL = 0, 1  # placeholder nodes: any leaf value; an object a GLOBAL named (shared, read-only)
_PUSH_ATOM = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
              "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE",
              "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT", "NONE", "NEWTRUE",
              "NEWFALSE", "PERSID", "NEXT_BUFFER"}
_EMPTY = {"EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"}


def _corrupt(message):
    # reported by `_read` as "cannot be read as ... (UnpicklingError: message)", like the unpickler's own
    return pickle.UnpicklingError(message)


def _scan(stream):
    """Walks one pickle's opcodes up to STOP without building anything; raises unless the objects it
    would build are bounded (see the module docstring)."""
    stack, marks, memo = [], [], {}
    edges_from, edges_to = array("q"), array("q")
    visited = array("q")  # nodes a call (its arguments) or a hash (dict keys, set items) walks whole
    n_nodes = 2
    ops = 0

    def pop(n):
        fence = marks[-1] if marks else 0
        if len(stack) - n < fence:
            raise _corrupt("unpickling stack underflow")
        items = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return items

    def pop_mark():
        if not marks:
            raise _corrupt("pops a mark it never set")
        m = marks.pop()
        items = stack[m:]
        del stack[m:]
        return items

    def top():
        if len(stack) <= (marks[-1] if marks else 0):
            raise _corrupt("unpickling stack underflow")
        return stack[-1]

    def new_node(children):
        nonlocal n_nodes
        n_nodes += 1
        add_edges(n_nodes - 1, children)
        return n_nodes - 1

    def add_edges(node, children):
        if node == _GLOBAL:
            raise UnsafeCheckpointError("checkpoint tries to change a class or function it names; file refused")
        if node == _ATOM:
            return  # the unpickler will fail on it (e.g. appending to an int); nothing is built
        for child in children:
            edges_from.append(node)
            edges_to.append(child)

    while True:
        code = stream.read(1)
        op = _OPCODES.get(code)
        if op is None:
            raise _corrupt(f"unknown pickle opcode {code!r} at offset {stream.pos - 1}")
        ops += 1
        if ops > MAX_PICKLE_OPS:
            raise CheckpointLimitError(f"pickle has more than {MAX_PICKLE_OPS:,} operations (limit "
                                       "MAX_PICKLE_OPS); refused before unpickling")
        arg = None
        if op.arg is not None:
            fmt = _LENGTH_PREFIXED.get(op.arg.n)
            if fmt is not None:
                stream.skip(struct.unpack(fmt, stream.read(struct.calcsize(fmt)))[0])
            else:
                arg = op.arg.reader(stream)
        name = op.name
        if name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            index = len(memo) if name == "MEMOIZE" else arg
            if not isinstance(index, int) or not 0 <= index < MAX_PICKLE_OPS:
                raise CheckpointLimitError(f"pickle memo index {index!r} is beyond the limit of "
                                           f"{MAX_PICKLE_OPS:,} (MAX_PICKLE_OPS); refused before unpickling")
            memo[index] = top()
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            if arg not in memo:
                raise _corrupt(f"memo entry {arg!r} read before written")
            stack.append(memo[arg])
        elif name in _PUSH_ATOM:
            stack.append(_ATOM)
        elif name == "MARK":
            marks.append(len(stack))
        elif name in _EMPTY:
            stack.append(new_node(()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(new_node(pop(int(name[-1]))))
        elif name in ("TUPLE", "LIST", "DICT", "FROZENSET", "INST", "OBJ"):
            items = pop_mark()
            if name == "DICT":
                if len(items) % 2:
                    raise _corrupt("odd number of items for DICT")
                visited.extend(items[0::2])
            elif name in ("FROZENSET", "INST", "OBJ"):
                visited.extend(items)
            stack.append(new_node(items))
        elif name in ("APPEND", "SETITEM", "BUILD"):
            items = pop(2 if name == "SETITEM" else 1)
            if name != "APPEND":
                visited.append(items[0])
            add_edges(top(), items)
        elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
            items = pop_mark()
            if name == "SETITEMS" and len(items) % 2:
                raise _corrupt("odd number of items for SETITEMS")
            visited.extend(items[0::2] if name == "SETITEMS" else items if name == "ADDITEMS" else ())
            add_edges(top(), items)
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
            items = pop(3 if name == "NEWOBJ_EX" else 2)
            visited.extend(items[1:])
            stack.append(new_node(items))
        elif name in ("GLOBAL", "EXT1", "EXT2", "EXT4"):
            stack.append(_GLOBAL)
        elif name == "STACK_GLOBAL":
            pop(2)
            stack.append(_GLOBAL)
        elif name == "BINPERSID":
            pid = pop(1)
            visited.extend(pid)
            stack.append(new_node(pid))
        elif name == "POP":
            if marks and marks[-1] == len(stack):
                marks.pop()
            else:
                pop(1)
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(top())
        elif name == "PROTO":
            if arg > pickle.HIGHEST_PROTOCOL:
                raise _corrupt(f"unsupported pickle protocol {arg}")
        elif name == "FRAME":
            stream._check(arg)  # the unpickler reads a whole frame at once: it must be in the file
        elif name == "READONLY_BUFFER":
            top()
        elif name == "STOP":
            top()
            break
        else:  # pragma: no cover - every opcode of pickletools is handled above
            raise _corrupt(f"unsupported pickle opcode {name}")
        if n_nodes > MAX_PICKLE_OPS + 2:  # pragma: no cover - one node per op at most
            raise CheckpointLimitError("pickle builds too many objects")
    _check_graph(n_nodes, edges_from, edges_to, visited)


def _check_graph(n_nodes, edges_from, edges_to, visited):
    """Refuses cycles, nesting deeper than MAX_DEPTH, and expansions larger than MAX_OBJECTS, over
    every node the pickle makes (reachable from the result or not: the unpickler hashes and passes
    them all the same). Iterative, so it cannot hit the recursion limit itself."""
    sources = np.frombuffer(edges_from, np.int64)
    order = np.argsort(sources, kind="stable")
    children = np.frombuffer(edges_to, np.int64)[order].tolist()
    start = np.zeros(n_nodes + 1, np.int64)
    np.cumsum(np.bincount(sources, minlength=n_nodes), out=start[1:])
    start = start.tolist()
    size, depth = [1] * n_nodes, [0] * n_nodes
    state = bytearray(n_nodes)  # 0 unseen, 1 on the current path, 2 done
    state[_ATOM] = state[_GLOBAL] = 2
    for root in range(2, n_nodes):
        if state[root]:
            continue
        todo = [root]
        while todo:
            node = todo[-1]
            if state[node] == 0:
                state[node] = 1
                for child in children[start[node]:start[node + 1]]:
                    if state[child] == 1:
                        raise CheckpointLimitError("pickle builds a container that contains itself (self "
                                                   "reference); refused before unpickling")
                    if state[child] == 0:
                        todo.append(child)
                continue
            todo.pop()
            if state[node] == 2:
                continue
            total, deepest = 1, 0
            for child in children[start[node]:start[node + 1]]:
                total += size[child]
                deepest = max(deepest, depth[child])
            if deepest + 1 > MAX_DEPTH:
                raise CheckpointLimitError(f"pickle nests containers more than {MAX_DEPTH} levels deep "
                                           "(limit MAX_DEPTH); refused before unpickling")
            if total > MAX_OBJECTS:
                raise CheckpointLimitError(
                    f"pickle re-uses objects so that one structure expands to more than {MAX_OBJECTS:,} "
                    "objects (limit MAX_OBJECTS); refused before unpickling")
            size[node], depth[node], state[node] = total, deepest + 1, 2
    walked = sum(size[node] for node in visited)
    if walked > MAX_OBJECTS:
        raise CheckpointLimitError(
            f"pickle passes {walked:,} objects (re-used ones counted again) through calls and dict keys, "
            f"more than {MAX_OBJECTS:,} (limit MAX_OBJECTS); refused before unpickling")


# ----------------------------------------------------------------------------------------------
# Unpickling (after the scan).

class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed, persistent_load=None):
        super().__init__(file)
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"checkpoint wants to import {_one_line(f'{module}.{name}', 120)}, which is not a plain tensor or "
                "container; file refused, nothing from it was run") from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafeCheckpointError("unexpected persistent reference in pickle; file refused")
        return self._persistent(pid)


def _remaining(f):
    here = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(here)
    return end - here


def _unpickle(f, table, persistent_load, budget, available=None, exact=True):
    """Scans the pickle at `f`'s position, then unpickles it; leaves `f` just after it."""
    start = f.tell()
    if exact and available is None:
        available = _remaining(f)
    stream = _PickleStream(f, available, budget.max_bytes, exact)
    _scan(stream)
    f.seek(start)
    obj = _RestrictedUnpickler(f, table, persistent_load).load()
    f.seek(start + stream.pos)
    return obj


class _Load:
    """One top-level load: its byte budget and allowlist."""

    def __init__(self, max_bytes):
        self.budget = _Budget(max_bytes)
        self._in_storage_file = False

    def table(self, extra=None):
        return {**BASE_GLOBALS, **TORCH_TENSOR_GLOBALS, **(extra or {}),
                ("torch.storage", "_load_from_bytes"): self._storage_from_bytes}

    def _storage_from_bytes(self, b):
        """`torch.storage._load_from_bytes`: a legacy-format torch file holding one storage inside a
        plain pickle (NVlabs). One level only: a storage's file holding another is refused."""
        if self._in_storage_file or not isinstance(b, (bytes, bytearray)):
            raise UnsafeCheckpointError("unexpected torch file inside a storage in checkpoint; file refused")
        self._in_storage_file = True
        try:
            storage = _load_legacy(io.BytesIO(b), None, self)
        finally:
            self._in_storage_file = False
        if not isinstance(storage, _Storage):
            raise ConversionError("embedded torch storage holds something else; the checkpoint is corrupt")
        return storage


def restricted_load(fileobj, allowed=None, persistent_load=None, max_bytes=DEFAULT_MAX_BYTES):
    """`pickle.load` from a seekable file that resolves globals only through `allowed` (+ the base and
    torch tensor sets), after `_scan` has bounded the pickle. Tensors come back as numpy views."""
    load = _Load(max_bytes)
    return _unpickle(fileobj, load.table(allowed), persistent_load, load.budget)


# ----------------------------------------------------------------------------------------------
# torch.save containers.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _check_storage_pid(pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[4], int) and pid[4] >= 0):
        raise UnsafeCheckpointError(f"unexpected persistent id {_short_repr.repr(pid)}; file refused")
    return pid[1].dtype, str(pid[2]), pid[4]


def _read_zip_storage(zf, name, key, dtype, numel, big_endian, budget):
    """Reads the storage's declared bytes from its zip entry, in chunks. A record whose size disagrees with
    its storage is corrupt: the entry header must say the declared size, and what the entry really inflates
    to is read no further than the declared size plus one byte (enough to see that it is longer)."""
    nbytes = numel * dtype.itemsize
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ConversionError(f"storage {key} is missing from the zip file; the checkpoint is corrupt") from None
    if info.file_size != nbytes:
        raise ConversionError(f"storage {key} declares {_size(nbytes)} but its zip entry holds "
                              f"{_size(info.file_size)}; the checkpoint is corrupt")
    budget.charge_storage(nbytes, f"storage {key}")
    data = np.empty(numel, dtype)
    flat = data.view(np.uint8).reshape(-1)
    with zf.open(info) as f:
        pos = 0
        while pos < nbytes:
            chunk = f.read(min(nbytes - pos, 16 * MiB))
            if not chunk:
                raise ConversionError(f"storage {key} holds {_size(pos)} of its declared {_size(nbytes)}; "
                                      "the checkpoint is truncated")
            flat[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
            pos += len(chunk)
        if f.read(1):
            raise ConversionError(f"storage {key} inflates to more than its declared {_size(nbytes)}; the "
                                  "checkpoint is corrupt")
    if big_endian and dtype.itemsize > 1:
        data.byteswap(inplace=True)
    return _Storage(data)


def _load_zip(path, extra_globals, load):
    with open(path, "rb") as fp:
        try:
            end_record = zipfile._EndRecData(fp)  # the entry count, before ZipFile parses them all
        except AttributeError:  # pragma: no cover - private helper gone in some future Python
            end_record = None
    entries = end_record[getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)] if end_record else 0
    if entries > MAX_ZIP_ENTRIES:
        raise CheckpointLimitError(f"zip file lists {entries:,} entries, more than the limit of "
                                   f"{MAX_ZIP_ENTRIES:,} (MAX_ZIP_ENTRIES)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise ConversionError(f"{path}: zip file without data.pkl, not a PyTorch checkpoint")
        root = pkl[0][: -len("data.pkl")]
        big_endian = False
        if root + "byteorder" in names:
            with zf.open(root + "byteorder") as f:
                big_endian = f.read(16).strip() == b"big"
        storages = {}
        from stylejax import cli

        # a bar over the tensor storages read (large files: e4e is ~1.2 GB); quiet off a terminal / --json
        bar = cli.progress(total=sum(n.startswith(root + "data/") for n in names), desc="read", unit="tensor")

        def persistent_load(pid):
            dtype, key, numel = _check_storage_pid(pid)
            if key not in storages:
                storages[key] = _read_zip_storage(zf, f"{root}data/{key}", key, dtype, numel, big_endian,
                                                  load.budget)
                bar.update(1)
            return storages[key]

        info = zf.getinfo(pkl[0])
        try:
            with zf.open(info) as f:
                return _unpickle(f, load.table(extra_globals), persistent_load, load.budget,
                                 available=info.file_size, exact=False)
        finally:
            bar.close()


def is_torch_file(path):
    """True for a torch.save file: a zip archive, or a legacy file starting with the pickled magic number."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(14)
    # protocol 2 PROTO opcode, then LONG1 of 10 bytes holding the magic number
    return head == b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")


def _load_legacy(f, extra_globals, load):
    base = load.table()

    def plain():
        return _unpickle(f, base, None, load.budget)

    if plain() != _LEGACY_MAGIC:
        raise ConversionError("not a PyTorch checkpoint (bad magic number)")
    protocol = plain()
    if protocol != 1001:
        raise ConversionError(f"unsupported legacy torch protocol {_short_repr.repr(protocol)}")
    plain()  # sys info
    room = _remaining(f)  # the storages' bytes follow the pickles: they must fit in what is left
    declared = 0
    storages = {}  # key -> _Storage

    def persistent_load(pid):
        nonlocal declared
        dtype, key, numel = _check_storage_pid(pid)
        if key not in storages:
            nbytes = numel * dtype.itemsize
            declared += nbytes
            if declared > room:
                raise ConversionError(f"storage {key} declares {_size(nbytes)}, more than the file holds; "
                                      "the checkpoint is corrupt")
            load.budget.charge_storage(nbytes, f"storage {key}")
            storages[key] = _Storage(np.empty(numel, dtype))
        st = storages[key]
        if len(pid) > 5 and pid[5] is not None:  # view: (view_key, offset, numel)
            view = pid[5]
            if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])
                    and 0 <= view[1] and 0 <= view[2] and view[1] + view[2] <= st.data.size):
                raise ConversionError("storage view outside its storage; the checkpoint is corrupt")
            view_key, offset, view_numel = view
            if str(view_key) not in storages:
                storages[str(view_key)] = _Storage(st.data[offset: offset + view_numel])
            return storages[str(view_key)]
        return st

    result = _unpickle(f, load.table(extra_globals), persistent_load, load.budget)
    keys = plain()
    if not isinstance(keys, list):
        raise ConversionError("legacy storage key list is not a list; the checkpoint is corrupt")
    for key in keys:
        st = storages[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        if numel != st.data.size:
            raise ConversionError("storage data does not match its declaration; the checkpoint is corrupt")
        if f.readinto(st.data.view(np.uint8).reshape(-1)) != st.data.nbytes:
            raise ConversionError("storage data is truncated; the checkpoint is corrupt")
    return result


def _materialise(root, budget, copy=True):
    """Turns every tensor view into its own contiguous array (charged to the budget first), in place.
    Memoised by identity: a re-used object is copied once and stays shared. Recursion is bounded by
    the scan's MAX_DEPTH. With `copy=False` only the numpy stand-ins are resolved: tensors stay read-only
    views into their storages (nothing allocated), for a converter's `select` to check."""
    done = {}

    def walk(obj):
        key = id(obj)
        if key in done:
            return done[key][1]
        original = out = obj
        if isinstance(obj, _NumpyArray):
            if obj.array is None:
                raise ConversionError("numpy array without its data in checkpoint; the file is corrupt")
            obj = obj.array
        if isinstance(obj, _NumpyDType):
            out = obj.dtype
        elif isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise UnsafeCheckpointError("checkpoint holds an object-dtype array; file refused")
            out = obj
            if copy:
                budget.charge_array(obj)
                out = np.array(obj, dtype=obj.dtype.newbyteorder("="))  # a copy, in native byte order
        elif isinstance(obj, tuple):
            out = tuple(walk(v) for v in obj)
        elif isinstance(obj, list):
            obj[:] = [walk(v) for v in obj]
        elif isinstance(obj, (_Storage, _StorageType, _Token, type, np.dtype, np.generic)) or callable(obj):
            pass
        else:
            if isinstance(obj, dict):
                for k in list(obj):
                    obj[k] = walk(obj[k])
            attrs = getattr(obj, "__dict__", None)  # our stand-ins (_Opaque, NVlabs/TF modules)
            if isinstance(attrs, dict):
                for k in list(attrs):
                    attrs[k] = walk(attrs[k])
        done[key] = (original, out)  # keeps it alive so that its id is not reused during the walk
        return out

    return walk(root)


_READ_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, LookupError,
                ValueError, TypeError, AttributeError, OverflowError, NotImplementedError, OSError, MemoryError,
                RuntimeError)  # RuntimeError: encrypted zip entries (and RecursionError, a subclass)


def _read(path, load, what, hint, max_bytes, select=None):
    """Runs `load(path, _Load)`, then `select` on the tensor views, then copies what it kept; every failure
    becomes a one-line ConversionError that names the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    state = _Load(max_bytes)
    try:
        obj = load(path, state)
        if select is not None:
            obj = select(_materialise(obj, state.budget, copy=False))
        return _materialise(obj, state.budget)
    except ConversionError as e:
        msg = _one_line(e)
        raise type(e)(msg if msg.startswith(path) else f"{path}: {msg}") from None
    except _READ_ERRORS as e:
        raise ConversionError(
            f"{path}: cannot be read as {what} ({type(e).__name__}: {_one_line(e, 80)}); {hint}") from None


def load_torch_file(path, extra_globals=None, max_bytes=DEFAULT_MAX_BYTES, select=None):
    """Reads a `torch.save` file like `torch.load(weights_only=True)`, tensors as numpy arrays.

    `extra_globals` extends the allowlist ({(module, name): stand-in}) for formats that need more.
    `max_bytes` bounds the tensor data (storage read, and arrays returned, each).
    `select(obj)`: called before any tensor is copied out of its storage, with the loaded object whose
    tensors are still read-only views (shape, dtype, `nbytes` known; a stride-0 view costs nothing yet): a
    converter checks there that the shapes are the ones it expects and returns the part it uses, and only
    that part is copied. Without it, every tensor is copied.
    Raises ConversionError (UnsafeCheckpointError for disallowed content, CheckpointLimitError for a
    limit) with a one-line message.
    """
    def load(p, state):
        if zipfile.is_zipfile(p):
            return _load_zip(p, extra_globals, state)
        with open(p, "rb") as f:
            return _load_legacy(f, extra_globals, state)

    return _read(path, load, "a PyTorch checkpoint", "is the file complete and a torch.save file?", max_bytes, select)


def load_pickle_file(path, allowed=None, max_bytes=DEFAULT_MAX_BYTES, select=None):
    """Plain pickle (e.g. NVlabs / TF StyleGAN2 .pkl) through the allowlist; one-line errors.
    `max_bytes` bounds the file itself and the tensor data in it; `select` as in `load_torch_file`."""
    def load(p, state):
        size = os.path.getsize(p)
        if size > state.budget.max_bytes:
            raise CheckpointLimitError(f"the file is {_size(size)}, over the limit of "
                                       f"{_size(state.budget.max_bytes)} (max_bytes)")
        with open(p, "rb") as f:
            return _unpickle(f, state.table(allowed), None, state.budget)

    return _read(path, load, "a pickle", "is the file complete?", max_bytes, select)


def check_tensor_sizes(tensors, expected_shapes, what, check_total=True):
    """For a converter's `select`, on tensor views before anything is copied: refuses a tensor with more
    values than the largest array of `expected_shapes` (a network's, e.g. the one the file's shapes describe
    or the reference one: `what` names it), and
    (`check_total`) tensors holding more values in total than that network has (plus one per tensor, for
    scalars such as BatchNorm's `num_batches_tracked`). `tensors`: {name: array}; non-arrays are skipped."""
    sizes = [int(np.prod(shape, dtype=object)) for shape in expected_shapes.values()]
    largest, total = max(sizes, default=0), sum(sizes)
    arrays = {k: v for k, v in tensors.items() if isinstance(v, np.ndarray)}
    for name, a in arrays.items():
        if a.size > largest:
            raise ConversionError(
                f"{_one_line(name, 120)} has shape {list(a.shape)} ({_size(a.nbytes)}), more values than any "
                f"array of the {what} (at most {largest:,}); the checkpoint is corrupt, refused before copying it")
    held = sum(a.size for a in arrays.values())
    if check_total and held > total + len(arrays):
        raise ConversionError(f"the tensors hold {held:,} values, more than the {total:,} of the {what}; the "
                              "checkpoint is corrupt, refused before copying them")


def flatten_state_dict(obj, prefix=""):
    """{'a': {'b': arr}} -> {'a.b': arr}; keeps only numpy arrays."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_state_dict(v, f"{prefix}{k}."))
    elif isinstance(obj, np.ndarray):
        out[prefix[:-1]] = obj
    return out
