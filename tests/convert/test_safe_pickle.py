"""The torch-free checkpoint reader: exact tensors from both torch formats, nothing executed."""
import argparse
import os
import pickle

import numpy as np
import pytest

from convert import ConversionError
from convert.safe_pickle import UnsafeCheckpointError, load_pickle_file, load_torch_file

torch = pytest.importorskip("torch")


def _sample():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    base = torch.randn(10)
    return conv, {
        "sd": conv.state_dict(),
        "param": torch.nn.Parameter(torch.randn(2)),
        "half": torch.randn(2, 3, dtype=torch.float16),
        "bf16": torch.randn(2, dtype=torch.bfloat16),
        "long": torch.arange(3),
        "strided": torch.randn(4, 4)[:, 1:3],
        "view_a": base[2:5],
        "view_b": base[::2],
        "empty": torch.zeros(0, 3),
        "dtype": torch.float32,
        "size": torch.Size([2, 3]),
        "opts": {"a": 1, "b": "x", "l": [1.0, None]},
        "ns": argparse.Namespace(x=1),
        "np_scalar": np.float64(3.5),
        "np_array": np.arange(4.0),
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_tensors_exactly(tmp_path, zip_format):
    conv, obj = _sample()
    path = tmp_path / "x.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    out = load_torch_file(path)
    for key in ["half", "long", "strided", "view_a", "view_b", "empty"]:
        assert out[key].dtype == obj[key].numpy().dtype
        np.testing.assert_array_equal(out[key], obj[key].numpy())
        assert out[key].flags.c_contiguous
    np.testing.assert_array_equal(out["bf16"].astype(np.float32), obj["bf16"].float().numpy())
    np.testing.assert_array_equal(out["sd"]["weight"], conv.weight.detach().numpy())
    np.testing.assert_array_equal(out["param"], obj["param"].detach().numpy())
    assert out["size"] == (2, 3)
    assert out["opts"] == {"a": 1, "b": "x", "l": [1.0, None]}
    assert out["ns"].x == 1 and out["np_scalar"] == 3.5
    np.testing.assert_array_equal(out["np_array"], np.arange(4.0))


def test_plain_pickle_of_tensors(tmp_path):
    t = torch.randn(3, 3)
    path = tmp_path / "x.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G": {"w": t[:, 1]}}, f)
    np.testing.assert_array_equal(load_pickle_file(path)["G"]["w"], t[:, 1].numpy())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["pkl", "pt-zip", "pt-legacy"])
def test_malicious_files_refused_and_not_run(tmp_path, kind):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"evil.{kind}"
    obj = {"weights": torch.ones(2), "payload": _Evil(marker)}
    if kind == "pkl":
        with open(path, "wb") as f:
            pickle.dump(obj, f)
        load = load_pickle_file
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=(kind == "pt-zip"))
        load = load_torch_file
    with pytest.raises(UnsafeCheckpointError) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and "system" in msg and "refused" in msg
    assert not marker.exists()


def test_bad_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(100)}, good)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    for path, expected in [(truncated, "cannot be read"), (text, "cannot be read"),
                           (tmp_path / "missing.pt", "no such file")]:
        with pytest.raises(ConversionError) as e:
            load_torch_file(path)
        assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("protocol", range(6))
def test_plain_objects_and_numpy_arrays_every_protocol(tmp_path, protocol):
    """numpy arrays are rebuilt from validated state, never by numpy's own __setstate__: same values,
    dtypes and memory order as pickle.load gives, always in native byte order."""
    obj = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "be": np.arange(4, dtype=">i4"),
           "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "empty": np.zeros((0, 2), np.int16),
           "scalars": (np.float32(1.5), np.int64(-3), np.bool_(True)), "dtype": np.dtype("<f8"),
           "py": [frozenset({1}), {2}, slice(1, 4), complex(1, -2), 10 ** 40, b"\x00\xff", "é"]}
    path = tmp_path / "x.pkl"
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    with open(path, "rb") as f:
        expected = pickle.load(f)
    got = load_pickle_file(path)
    for key in ("f32", "be", "fortran", "empty"):
        assert got[key].dtype == expected[key].dtype.newbyteorder("=") and got[key].shape == expected[key].shape
        np.testing.assert_array_equal(got[key], expected[key])
    assert got["fortran"].flags.f_contiguous
    assert got["scalars"] == expected["scalars"] and [type(v) for v in got["scalars"]] == [np.float32, np.int64, np.bool_]
    assert got["dtype"] == np.dtype("<f8") and got["py"] == expected["py"]
