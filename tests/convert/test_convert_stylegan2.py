"""`python -m convert stylegan2` end to end: every format -> the same generator; goldens; refusals."""
import collections
import os
import pickle
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA, REPO
from stylejax.io.checkpoint import load_generator

torch = pytest.importorskip("torch")
import test_stylegan2_formats as fmt  # noqa: E402  (the format writers live with the reader tests)


def _convert(src, out):
    return subprocess.run([sys.executable, "-m", "convert", "stylegan2", "--src", str(src), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_rosinality_golden_through_cli(tmp_path):
    d = np.load(os.path.join(DATA, "stylegan2_small.npz"))
    sd = collections.OrderedDict((k[3:], torch.from_numpy(d[k])) for k in d.files if k.startswith("sd/"))
    torch.save({"g_ema": sd, "latent_avg": torch.from_numpy(d["w_avg"])}, tmp_path / "g.pt")
    r = _convert(tmp_path / "g.pt", tmp_path / "ckpt")
    assert r.returncode == 0, r.stderr
    g = load_generator(tmp_path / "ckpt")
    assert np.abs(np.asarray(g.synthesize(jnp.asarray(d["ws_plus"]))) - d["img_ws_plus"]).max() < 1e-4
    assert np.abs(np.asarray(g.synthesize(g.mapping(d["z"], 0.7, 4))) - d["nv/img_z_trunc_cutoff"]).max() < 1e-4


def test_all_formats_convert_to_identical_generators(tmp_path, monkeypatch):
    mapping, synthesis, w_avg = fmt._tf_weights()
    sd = fmt._canonical_from_tf(mapping, synthesis)
    fakes = fmt._fake_modules(monkeypatch, tmp_path / "EXECUTED")
    files = {"rosinality": tmp_path / "g.pt", "e4e": tmp_path / "e4e.pt",
             "nvlabs": tmp_path / "snap.pkl", "tf": tmp_path / "tf.pkl"}
    fmt.write_rosinality(files["rosinality"], sd, w_avg)
    fmt.write_e4e(files["e4e"], sd, w_avg)
    fmt.write_nvlabs(files["nvlabs"], sd, w_avg, fakes)
    fmt.write_tf(files["tf"], mapping, synthesis, w_avg, fakes)
    ws = np.random.RandomState(0).randn(2, 6, fmt.W_DIM).astype(np.float32)
    images = {}
    for name, path in files.items():
        r = _convert(path, tmp_path / name)  # a fresh process: no fake NVlabs/TF modules importable
        assert r.returncode == 0, (name, r.stderr)
        g = load_generator(tmp_path / name)
        images[name] = np.asarray(g.synthesize(jnp.asarray(ws)))
    for name in files:
        np.testing.assert_array_equal(images[name], images["rosinality"], err_msg=name)
    assert not (tmp_path / "EXECUTED").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("ext", ["pkl", "pt"])
def test_malicious_checkpoint_refused_by_cli(tmp_path, ext):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"evil.{ext}"
    payload = {"G_ema": _Evil(marker)} if ext == "pkl" else {"g_ema": {"style.1.weight": _Evil(marker)}}
    if ext == "pkl":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    r = _convert(path, tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "refused" in r.stderr
    assert not marker.exists()
    assert not (tmp_path / "out" / "config.json").exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    r = _convert(path, tmp_path / "out")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(path) in r.stderr
