"""Hostile or damaged checkpoints must not exhaust the machine (issue 9).

Every bomb is built here, small, from raw pickle opcodes or a hand-written torch zip / legacy file. The
loads run in a subprocess whose address space is capped (RLIMIT_AS 1.5 GiB, far below what any bomb
would take): each must end in the exact one-line error naming the limit, the process neither killed
nor crashed, and no MemoryError or traceback anywhere.
"""
import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import DATA, REPO
from convert import ConversionError
from convert._params_check import check_finite
from convert.safe_pickle import UnsafeCheckpointError, load_pickle_file, load_torch_file

torch = pytest.importorskip("torch")

CAP = 3 << 29  # 1.5 GiB of address space for the loading process


def _run_capped(calls, setup=""):
    """Runs each `calls` expression in one fresh, memory-capped process; returns one line per call:
    'REFUSED <ErrorClass> <message>' or 'LOADED <repr of the result's summary>'."""
    lines = "\n".join(f"    attempt({call!r}, lambda: {call})" for call in calls)
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, ({CAP}, {CAP}))
from convert import ConversionError
from convert.safe_pickle import load_pickle_file, load_torch_file
from convert.stylegan2_formats import read_stylegan2
import convert.safe_pickle as sp
{setup}
def attempt(text, fn):
    try:
        out = fn()
    except ConversionError as e:
        print("REFUSED", type(e).__name__, e, flush=True)
    else:
        print("LOADED", type(out).__name__, flush=True)
if True:
{lines}
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"loader died (rc {r.returncode}): {r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stdout + r.stderr, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert len(out) == len(calls), r.stdout
    return out


def _refused(path, cls, message):
    return f"REFUSED {cls} {path}: {message}"


# ----------------------------------------------------------------------------------------------
# Pickles written opcode by opcode.

PROTO2 = b"\x80\x02"


def _memo_bomb(levels=9, fanout=10):
    """List i holds `fanout` memo references to list i-1: a few hundred bytes, fanout**levels leaves."""
    ops = [PROTO2, b"]q\x00(" + b"K\x01" * fanout + b"e"]
    for i in range(1, levels):
        ops.append(b"]q" + bytes([i]) + b"(" + (b"h" + bytes([i - 1])) * fanout + b"e")
    return b"".join(ops) + b"."


def _nested_lists(levels):
    return PROTO2 + b"]" * levels + b"a" * (levels - 1) + b"."


def _nested_tuple_key(levels):
    """{(((...(1,)...),),): 2}: hashing the key recurses in C once per level."""
    return PROTO2 + b"}" + b"K\x01" + b"\x85" * levels + b"K\x02s."


def _count_expanded(obj, memo=None):
    """Objects a tree walk of `obj` visits, re-used references counted again (memoised on identity)."""
    memo = {} if memo is None else memo
    if id(obj) not in memo:
        memo[id(obj)] = 1 + sum(_count_expanded(v, memo) for v in obj) if isinstance(obj, list) else 1
    return memo[id(obj)]


def test_memo_reuse_bomb_is_real_but_small():
    """Guards the test below: the bytes really are tiny and really expand past a billion objects
    (unpickling them is cheap, walking them is not)."""
    data = _memo_bomb()
    assert len(data) < 250
    assert _count_expanded(pickle.loads(data)) == sum(10 ** k for k in range(10))  # 1,111,111,111


def _torch_zip(path, data_pkl, storages=(), compress=zipfile.ZIP_STORED):
    """A torch.save zip written by hand: archive/data.pkl + archive/data/<key>."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        for key, raw in dict(storages).items():
            z.writestr(f"archive/data/{key}", raw, compress_type=compress)
        z.writestr("archive/version", "3\n")
    return path


def test_structure_bombs_refused_in_bounded_memory(tmp_path):
    files = {
        "memo.pkl": _memo_bomb(),
        "deep.pkl": _nested_lists(100_000),
        "deepkey.pkl": _nested_tuple_key(300_000),  # plain pickle.load segfaults (8 MiB C stack)
        "selflist.pkl": PROTO2 + b"]q\x00h\x00a.",
        "selfdict.pkl": PROTO2 + b"}q\x00K\x01h\x00s.",
        "memoindex.pkl": PROTO2 + b"Nr" + struct.pack("<I", 0xFFFFFFF0) + b".",  # C memo would take 32 GiB
        "ok100.pkl": _nested_lists(100),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    _torch_zip(tmp_path / "memo.pt", _memo_bomb())
    _torch_zip(tmp_path / "deep.pt", _nested_lists(100_000))
    names = list(files) + ["memo.pt", "deep.pt"]
    calls = [f"load_{'torch' if n.endswith('.pt') else 'pickle'}_file({str(tmp_path / n)!r})" for n in names]
    out = dict(zip(names, _run_capped(calls)))

    expand = ("pickle re-uses objects so that one structure expands to more than 1,000,000 objects "
              "(limit MAX_OBJECTS); refused before unpickling")
    deep = "pickle nests containers more than 100 levels deep (limit MAX_DEPTH); refused before unpickling"
    cycle = "pickle builds a container that contains itself (self reference); refused before unpickling"
    for name, message in [("memo.pkl", expand), ("memo.pt", expand), ("deep.pkl", deep), ("deep.pt", deep),
                          ("deepkey.pkl", deep), ("selflist.pkl", cycle), ("selfdict.pkl", cycle),
                          ("memoindex.pkl", "pickle memo index 4294967280 is beyond the limit of 1,000,000 "
                                            "(MAX_PICKLE_OPS); refused before unpickling")]:
        assert out[name] == _refused(tmp_path / name, "CheckpointLimitError", message), name
    assert out["ok100.pkl"] == "LOADED list"


def test_nesting_at_the_limit_loads_and_walks_without_recursion_error(tmp_path):
    path = tmp_path / "ok.pkl"
    path.write_bytes(_nested_lists(100))
    obj, depth = load_pickle_file(path), 0
    while obj:
        obj, depth = obj[0], depth + 1
    assert depth == 99  # 100 lists, the innermost empty
    path.write_bytes(_nested_lists(101))
    with pytest.raises(ConversionError, match="more than 100 levels deep"):
        load_pickle_file(path)


def test_operation_walk_and_zip_entry_limits(tmp_path):
    (tmp_path / "ops.pkl").write_bytes(PROTO2 + b"]0" * 600 + b"N.")  # 1,202 operations
    # a tuple of 2^19 - 1 objects (allowed: T0 = (1, 1), T(i+1) = (Ti, Ti)), hashed as the key of three
    # dicts: 3 * (2^19 - 1) visits in C for a 130-byte file; 10^6 such keys would take hours
    tree = b"K\x01K\x01\x86q\x000" + b"".join(b"h%ch%c\x86q%c0" % (i, i, i + 1) for i in range(17))
    (tmp_path / "keys.pkl").write_bytes(PROTO2 + tree + b"}h\x11K\x00s0" * 3 + b"N.")
    with zipfile.ZipFile(tmp_path / "many.pt", "w") as z:
        for i in range(11):
            z.writestr(f"archive/data/{i}", b"")
    out = _run_capped([f"load_pickle_file({str(tmp_path / 'ops.pkl')!r})",
                       f"load_pickle_file({str(tmp_path / 'keys.pkl')!r})",
                       f"load_torch_file({str(tmp_path / 'many.pt')!r})"],
                      setup="sp.MAX_PICKLE_OPS = 1000\nsp.MAX_ZIP_ENTRIES = 10")
    assert out[0] == _refused(tmp_path / "ops.pkl", "CheckpointLimitError",
                              "pickle has more than 1,000 operations (limit MAX_PICKLE_OPS); refused before unpickling")
    assert out[1] == _refused(tmp_path / "keys.pkl", "CheckpointLimitError",
                              f"pickle passes {3 * (2 ** 19 - 1):,} objects (re-used ones counted again) through "
                              "calls and dict keys, more than 1,000,000 (limit MAX_OBJECTS); refused before unpickling")
    assert out[2] == _refused(tmp_path / "many.pt", "CheckpointLimitError",
                              "zip file lists 11 entries, more than the limit of 10 (MAX_ZIP_ENTRIES)")


def test_declared_lengths_beyond_the_file_are_not_allocated(tmp_path):
    huge = 1 << 40
    files = {"bytes8.pkl": PROTO2 + b"\x8e" + struct.pack("<Q", huge) + b"xx.",
             "frame.pkl": b"\x80\x04\x95" + struct.pack("<Q", huge) + b"N.",
             "ndarray.pkl": PROTO2 + b"cnumpy\nndarray\n\x8a\x06" + huge.to_bytes(6, "little") + b"\x85R."}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = _run_capped([f"load_pickle_file({str(tmp_path / n)!r})" for n in files])
    hint = "; is the file complete?"
    assert out[0] == (f"REFUSED ConversionError {tmp_path / 'bytes8.pkl'}: cannot be read as a pickle "
                      f"(UnpicklingError: 1.0 TiB declared at offset 11, only 3 bytes follow){hint}")
    assert out[1] == (f"REFUSED ConversionError {tmp_path / 'frame.pkl'}: cannot be read as a pickle "
                      f"(UnpicklingError: 1.0 TiB declared at offset 11, only 2 bytes follow){hint}")
    assert out[2] == _refused(tmp_path / "ndarray.pkl", "UnsafeCheckpointError",
                              "checkpoint calls numpy.ndarray directly; file refused")


# ----------------------------------------------------------------------------------------------
# Tensors and storages.

class _FakeStorage:
    def __init__(self, key, numel, kind="FloatStorage"):
        self.key, self.numel, self.kind = key, numel, kind


class _FakeTensor:
    def __init__(self, storage, size, stride, offset=0):
        self.storage, self.size, self.stride, self.offset = storage, size, stride, offset

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, self.offset, tuple(self.size), tuple(self.stride),
                                                 False, collections.OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            return "storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel
        return None


def _torch_pickle(obj):
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _torch_legacy(path, obj, storages):
    """The pre-1.6 torch.save layout: magic, protocol, sys info, pickle, storage keys, raw storages."""
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(_torch_pickle(obj))
        pickle.dump(list(storages), f, protocol=2)
        for numel, raw in storages.values():
            f.write(struct.pack("<q", numel) + raw)
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_stride0_broadcast_is_charged_at_full_size(tmp_path, zip_format):
    one = torch.full((1,), 0.5)
    torch.save({"w": one.expand(2 ** 34)}, tmp_path / "bomb.pt", _use_new_zipfile_serialization=zip_format)
    torch.save({"w": one.expand(2 ** 20)}, tmp_path / "small.pt", _use_new_zipfile_serialization=zip_format)
    assert (tmp_path / "bomb.pt").stat().st_size < 2000
    out = _run_capped([f"load_torch_file({str(tmp_path / 'bomb.pt')!r})",
                       f"load_torch_file({str(tmp_path / 'small.pt')!r}, max_bytes=2 << 20)"])
    assert out == [
        _refused(tmp_path / "bomb.pt", "CheckpointLimitError",
                 "tensors declare 64.0 GiB in total (this one [17179869184] float32, 64.0 GiB), over the limit "
                 "of 4.0 GiB (max_bytes); refused before allocating it"),
        _refused(tmp_path / "small.pt", "CheckpointLimitError",
                 "tensors declare 4.0 MiB in total (this one [1048576] float32, 4.0 MiB), over the limit "
                 "of 2.0 MiB (max_bytes); refused before allocating it")]
    w = load_torch_file(tmp_path / "small.pt")["w"]  # within the default limit it is a real array
    assert w.shape == (2 ** 20,) and w.strides == (4,) and np.all(w == 0.5)


def test_tensor_and_storage_declarations_checked_against_real_bytes(tmp_path):
    s1 = _FakeStorage("0", 1)
    paths = {
        "outside.pt": _torch_zip(tmp_path / "outside.pt", _torch_pickle({"w": _FakeTensor(s1, [10], [1])}),
                                 {"0": b"\0" * 4}),
        "offset.pt": _torch_zip(tmp_path / "offset.pt", _torch_pickle({"w": _FakeTensor(s1, [1], [1], offset=1)}),
                                {"0": b"\0" * 4}),
        "negative.pt": _torch_zip(tmp_path / "negative.pt", _torch_pickle({"w": _FakeTensor(s1, [2], [-1])}),
                                  {"0": b"\0" * 4}),
        "entry.pt": _torch_zip(tmp_path / "entry.pt",
                               _torch_pickle({"w": _FakeTensor(_FakeStorage("0", 2 ** 30), [2 ** 30], [1])}),
                               {"0": b"\0" * 4}),
        "legacy.pt": _torch_legacy(tmp_path / "legacy.pt",
                                   {"w": _FakeTensor(_FakeStorage("0", 2 ** 40), [1], [1])}, {"0": (1, b"\0" * 4)}),
    }
    out = _run_capped([f"load_torch_file({str(p)!r})" for p in paths.values()])
    corrupt = "the checkpoint is corrupt"
    assert out == [
        _refused(paths["outside.pt"], "ConversionError",
                 f"tensor [10] (stride [1], offset 0) reaches element 9 of a 1-element storage; {corrupt}"),
        _refused(paths["offset.pt"], "ConversionError",
                 f"tensor [1] (stride [1], offset 1) reaches element 1 of a 1-element storage; {corrupt}"),
        _refused(paths["negative.pt"], "ConversionError",
                 f"tensor has a negative size, stride or offset; {corrupt}"),
        _refused(paths["entry.pt"], "ConversionError",
                 f"storage 0 declares 4.0 GiB but its zip entry holds 4 bytes; {corrupt}"),
        _refused(paths["legacy.pt"], "ConversionError",
                 f"storage 0 declares 4.0 TiB, more than the file holds; {corrupt}")]


def test_deflated_storage_bomb_bounded_by_max_bytes(tmp_path):
    """A 32 MiB storage deflated to ~32 KiB (the issue's 3 MB -> 3 GiB, scaled down with the limit)."""
    n = 8 << 20
    bomb = _torch_zip(tmp_path / "zip.pt", _torch_pickle({"w": _FakeTensor(_FakeStorage("0", n), [n], [1])}),
                      {"0": bytes(4 * n)}, compress=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 64 << 10
    two = _torch_zip(tmp_path / "two.pt", _torch_pickle({"a": _FakeTensor(_FakeStorage("0", n // 4), [n // 4], [1]),
                                                         "b": _FakeTensor(_FakeStorage("1", n // 4), [n // 4], [1])}),
                     {"0": bytes(n), "1": bytes(n)}, compress=zipfile.ZIP_DEFLATED)
    out = _run_capped([f"load_torch_file({str(bomb)!r}, max_bytes=8 << 20)",
                       f"load_torch_file({str(two)!r}, max_bytes=12 << 20)",
                       f"read_stylegan2({str(bomb)!r}, max_bytes=8 << 20)"])
    over = "over the limit of {} (max_bytes); refused before reading it"
    assert out == [
        _refused(bomb, "CheckpointLimitError",
                 "storage 0 declares 32.0 MiB, bringing the tensor storage to 32.0 MiB, " + over.format("8.0 MiB")),
        _refused(two, "CheckpointLimitError",
                 "storage 1 declares 8.0 MiB, bringing the tensor storage to 16.0 MiB, " + over.format("12.0 MiB")),
        _refused(bomb, "CheckpointLimitError",
                 "storage 0 declares 32.0 MiB, bringing the tensor storage to 32.0 MiB, " + over.format("8.0 MiB"))]
    w = load_torch_file(bomb, max_bytes=64 << 20)["w"]  # with room for it, the same file is fine
    assert w.shape == (n,) and not w.any()


def test_stylegan2_cli_refuses_stride0_bomb_in_bounded_memory(tmp_path):
    torch.save({"g_ema": {"style.1.weight": torch.zeros(1).expand(2 ** 34)}}, tmp_path / "g.pt")
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({CAP}, {CAP})); "
            f"from convert.__main__ import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "stylegan2", "--src", str(tmp_path / "g.pt"),
                        "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stderr
    # refused by its shape, checked before anything is copied (before: by max_bytes, when copying it)
    assert r.stderr == f"error: {tmp_path / 'g.pt'}: style.1.weight has shape [17179869184], expected 2 dimensions\n"
    assert not (tmp_path / "out" / "config.json").exists()


# ----------------------------------------------------------------------------------------------
# Objects shared across loads cannot be changed; embedded torch files do not nest.

class _Storage:
    """Pickles as `torch.storage._load_from_bytes(payload)`, as torch storages do inside plain pickles."""

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.payload,)


def test_build_on_an_allowlisted_global_refused(tmp_path):
    path = tmp_path / "poison.pkl"
    path.write_bytes(PROTO2 + b"ctorch\nFloatStorage\n}U\x05dtypeU\x02f8sb.")
    with pytest.raises(UnsafeCheckpointError) as e:
        load_pickle_file(path)
    assert str(e.value) == f"{path}: checkpoint tries to change a class or function it names; file refused"
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert load_torch_file(tmp_path / "ok.pt")["w"].dtype == np.float32  # nothing was changed


def test_storage_file_inside_storage_file_refused(tmp_path):
    header = b"".join(pickle.dumps(h, protocol=2) for h in (0x1950A86A20F9469CFC6C, 1001, {}))
    inner = header + pickle.dumps(_Storage(b"x"), protocol=2)
    path = tmp_path / "nested.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": _Storage(inner)}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_pickle_file(path)
    assert str(e.value) == f"{path}: unexpected torch file inside a storage in checkpoint; file refused"


# ----------------------------------------------------------------------------------------------
# NaN / inf refused at conversion.

def test_check_finite_names_the_first_bad_key():
    tree = {"a": {"b": np.ones(3), "c": np.array([1.0, np.nan]), "d": np.array([np.inf])},
            "e": np.array([np.nan]), "steps": np.arange(3), "none": None}
    with pytest.raises(ConversionError) as e:
        check_finite("f.pt", tree)
    assert str(e.value) == "f.pt: a/c contains NaN or inf values (1 of 2); the checkpoint is corrupt"
    check_finite(None, {"a": {"b": np.ones(2)}, "n": np.arange(2), "w": None})  # all finite: no error


def _write_generator(path, nan_key=None, bad_w_avg=False):
    import test_stylegan2_formats as fmt

    mapping, synthesis, w_avg = fmt._tf_weights()
    sd = fmt._canonical_from_tf(mapping, synthesis)
    if nan_key:
        sd[nan_key] = sd[nan_key].copy()
        sd[nan_key].reshape(-1)[3] = np.nan
    if bad_w_avg:
        w_avg = w_avg.copy()
        w_avg[5] = np.inf
    fmt.write_rosinality(path, sd, w_avg)
    return sd


@pytest.mark.parametrize("case", ["weight", "latent_avg"])
def test_stylegan2_cli_refuses_non_finite_values(tmp_path, case):
    path = tmp_path / "g.pt"
    sd = _write_generator(path, nan_key="convs.1.conv.weight" if case == "weight" else None,
                          bad_w_avg=case == "latent_avg")
    r = subprocess.run([sys.executable, "-m", "convert", "stylegan2", "--src", str(path),
                        "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    what = (f"convs.1.conv.weight contains NaN or inf values (1 of {sd['convs.1.conv.weight'].size})"
            if case == "weight" else "latent_avg contains NaN or inf values (1 of 8)")
    assert r.stderr == f"error: {path}: {what}; the checkpoint is corrupt\n"
    assert not (tmp_path / "out" / "config.json").exists()


def _lie_about_size(path, entry, size):
    """Rewrites the zip so `entry`'s headers claim `size` uncompressed bytes (its data unchanged)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(entry)
    for sig, field in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.find(sig)
        while at >= 0:
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(entry)] == entry.encode():
                assert struct.unpack_from("<I", data, at + field)[0] == info.file_size
                struct.pack_into("<I", data, at + field, size)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))
    return path


def test_storage_record_larger_than_its_storage_is_refused_unread(tmp_path, monkeypatch):
    """The issue: a record inflating to 3 GiB behind a 4-byte storage was accepted (4 bytes read, the rest
    ignored). Scaled to 64 MiB: refused, reading no more of the record than the declared size plus one byte,
    also when the zip headers lie about the record's size."""
    pkl = _torch_pickle({"w": _FakeTensor(_FakeStorage("0", 1), [1], [1])})
    big = _torch_zip(tmp_path / "big.pt", pkl, {"0": bytes(64 << 20)}, compress=zipfile.ZIP_DEFLATED)
    one_more = _torch_zip(tmp_path / "one_more.pt", pkl, {"0": bytes(5)})
    lying = _lie_about_size(_torch_zip(tmp_path / "lying.pt", pkl, {"0": bytes(64 << 20)},
                                       compress=zipfile.ZIP_DEFLATED), "archive/data/0", 4)
    assert big.stat().st_size < 128 << 10
    read = collections.Counter()
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        out = real_read(self, n)
        read[self.name] += len(out)
        return out

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    corrupt = "the checkpoint is corrupt"
    for path, message in ((big, f"storage 0 declares 4 bytes but its zip entry holds 64.0 MiB; {corrupt}"),
                          (one_more, f"storage 0 declares 4 bytes but its zip entry holds 5 bytes; {corrupt}")):
        read.clear()
        with pytest.raises(ConversionError) as e:
            load_torch_file(path)
        assert str(e.value) == f"{path}: {message}"
        assert read["archive/data/0"] == 0
    read.clear()
    with pytest.raises(ConversionError) as e:
        load_torch_file(lying)
    assert str(e.value).startswith(f"{lying}: ")
    assert read["archive/data/0"] <= 5
    ok = _torch_zip(tmp_path / "ok.pt", pkl, {"0": np.float32(2.5).tobytes()})
    assert load_torch_file(ok)["w"].tolist() == [2.5]


def _stride0_bomb():
    """The issue's tensor: 23000 x 23000 float32 (2.0 GiB) with stride 0 over a 4-float storage."""
    return torch.zeros(4).as_strided((23000, 23000), (0, 0))


def test_stride0_tensor_checked_against_the_network_before_it_is_copied(tmp_path):
    """The issue: a 1.2 KB file whose tensor fits the converters' max_bytes (2 GiB) was copied out (over 1 GiB
    resident) before its shape was refused. Each converter now checks shapes against the network it expects
    on the un-copied views, and copies only the tensors it uses: in a process capped at 1.5 GiB of address
    space every bomb is refused, and a bomb in a part the converter does not use costs nothing."""
    import test_stylegan2_formats as fmt
    from convert.e4e import infer_config
    from stylejax.nets.e4e import E4E, E4EConfig

    bomb = _stride0_bomb()
    torch.save({"w": bomb}, tmp_path / "issue.pt")
    assert (tmp_path / "issue.pt").stat().st_size < 2000
    sd = fmt._canonical_from_tf(*fmt._tf_weights()[:2])
    g = fmt._rosinality_g_ema(sd)
    torch.save({"g_ema": {**g, "convs.0.conv.modulation.weight": bomb}}, tmp_path / "g_bomb.pt")
    torch.save({"g_ema": g, "d": {"convs.0.0.weight": bomb}}, tmp_path / "g_unused_bomb.pt")
    e4e_npz = np.load(os.path.join(DATA, "e4e_small.npz"))
    e4e_sd = {k[3:]: torch.from_numpy(np.array(e4e_npz[k])) for k in e4e_npz.files if k.startswith("sd/")}
    latent_avg = torch.from_numpy(np.array(e4e_npz["latent_avg"]))
    torch.save({"state_dict": {**e4e_sd, "encoder.styles.0.linear.weight": bomb}, "latent_avg": latent_avg},
               tmp_path / "e4e_bomb.pt")
    torch.save({"state_dict": {**e4e_sd, "decoder.style.1.weight": bomb}, "latent_avg": latent_avg},
               tmp_path / "e4e_unused_bomb.pt")

    def e4e(name):
        return (f"convert.e4e.convert_checkpoint(load_torch_file({str(tmp_path / name)!r}, max_bytes=2 << 30, "
                f"select=convert.e4e.select))")

    issue = str(tmp_path / "issue.pt")
    out = _run_capped([f"read_stylegan2({str(tmp_path / 'g_bomb.pt')!r})",
                       f"read_stylegan2({str(tmp_path / 'g_unused_bomb.pt')!r})",
                       f"read_stylegan2({issue!r})", e4e("e4e_bomb.pt"), e4e("e4e_unused_bomb.pt"), e4e("issue.pt"),
                       f"convert.arcface.convert_checkpoint(load_torch_file({issue!r}, select=convert.arcface.select))",
                       f"load_torch_file({issue!r}, select=convert.styleflow.select)",
                       f"load_torch_file({issue!r}, select=convert.lpips._select_torch)"],
                      setup="import convert.e4e, convert.arcface, convert.styleflow, convert.lpips")

    def largest(config):
        return f"{max(int(np.prod(s)) for s in E4E.expected_shapes(config).values()):,}"

    small = infer_config({k: v.numpy() for k, v in e4e_sd.items()})
    corrupt = "the checkpoint is corrupt, refused before copying it"
    g_shape = list(g["convs.0.conv.modulation.weight"].shape)
    assert out[0] == _refused(tmp_path / "g_bomb.pt", "ConversionError",
                              f"convs.0.conv.modulation.weight has shape [23000, 23000], expected {g_shape}")
    assert out[1] == "LOADED tuple"  # the discriminator is never copied
    assert out[2].startswith(f"REFUSED ConversionError {issue}: not a StyleGAN2 generator checkpoint "
                             "(top-level keys: w)")
    assert out[3] == _refused(tmp_path / "e4e_bomb.pt", "ConversionError",
                              "encoder.styles.0.linear.weight has shape [23000, 23000] (2.0 GiB), more values than any "
                              f"array of the e4e encoder its shapes describe (at most {largest(small)}); {corrupt}")
    assert out[4] == "LOADED tuple"  # the decoder is never copied
    assert out[5] == _refused(issue, "ConversionError",
                              "w has shape [23000, 23000] (2.0 GiB), more values than any array of the reference FFHQ "
                              f"e4e encoder (at most {largest(E4EConfig())}); {corrupt}")
    for line, what in zip(out[6:], ("reference ArcFace IR-SE50", "reference StyleFlow CNF (modellarge10k)",
                                    "torchvision VGG16 / AlexNet LPIPS")):
        assert line.startswith(f"REFUSED ConversionError {issue}: w has shape [23000, 23000] (2.0 GiB), more values "
                               f"than any array of the {what} (at most "), line
        assert line.endswith(corrupt), line


def test_consistent_but_widened_generator_refused_before_copying(tmp_path):
    """Anchor shapes that describe a bigger network than the converter supports (here: any, with the limit
    lowered to 1 KiB) are refused before a tensor is copied."""
    import test_stylegan2_formats as fmt

    path = tmp_path / "g.pt"
    fmt.write_rosinality(path, fmt._canonical_from_tf(*fmt._tf_weights()[:2]), fmt._tf_weights()[2])
    out = _run_capped([f"read_stylegan2({str(path)!r})"], setup="import convert.stylegan2_formats as f\n"
                                                                "f.MAX_GENERATOR_BYTES = 1024")
    assert out[0].startswith(f"REFUSED ConversionError {path}: the shapes describe a generator of ")
    assert out[0].endswith("MiB (float32), more than the 0 MiB this converter supports (config-f at 1024² is "
                           "~120 MB); not a supported StyleGAN2 generator, refused before copying it")
