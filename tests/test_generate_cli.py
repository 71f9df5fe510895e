"""`python -m stylejax.generate`: NVlabs seed convention, --ws, --save-npy, and clear errors."""
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA, REPO
from convert.stylegan2 import from_rosinality
from stylejax.io.checkpoint import load_generator, save_generator
from stylejax.nets.generator import Generator


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = np.load(os.path.join(DATA, "stylegan2_small.npz"))
    sd = {k[3:]: d[k] for k in d.files if k.startswith("sd/")}
    cfg, params, buffers = from_rosinality(sd, d["w_avg"])
    out = tmp_path_factory.mktemp("ckpt")
    save_generator(Generator(cfg, params, buffers), out)
    return str(out)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "stylejax.generate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_seeds_follow_nvlabs_convention(ckpt, tmp_path):
    r = _cli("--checkpoint", ckpt, "--seeds", "0-2", "--trunc", "0.7", "--outdir", str(tmp_path), "--save-npy")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["images.npy", "seed0000.png", "seed0001.png", "seed0002.png"]
    g = load_generator(ckpt)
    z = np.concatenate([np.random.RandomState(s).randn(1, g.config.z_dim) for s in range(3)])
    expected = np.asarray(g.synthesize(g.mapping(z, 0.7)))
    np.testing.assert_allclose(np.load(tmp_path / "images.npy"), expected, atol=1e-5)
    import imageio.v3 as iio
    png = iio.imread(tmp_path / "seed0001.png")
    assert png.shape == (32, 32, 3) and png.dtype == np.uint8
    assert np.abs(png.astype(float) - np.clip(expected[1] * 127.5 + 128, 0, 255)).max() <= 1


def test_ws_input(ckpt, tmp_path):
    ws = np.asarray(np.load(os.path.join(DATA, "stylegan2_small.npz"))["ws_plus"][:2])
    np.save(tmp_path / "ws.npy", ws)
    r = _cli("--checkpoint", ckpt, "--ws", str(tmp_path / "ws.npy"), "--outdir", str(tmp_path / "o"), "--save-npy")
    assert r.returncode == 0, r.stderr
    g = load_generator(ckpt)
    np.testing.assert_allclose(np.load(tmp_path / "o" / "images.npy"), g.synthesize(jnp.asarray(ws)), atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--seeds", "3-1"], "bad --seeds"),
    (["--ws", "/nonexistent.npy"], "cannot read --ws"),
])
def test_bad_input_one_line_error(ckpt, tmp_path, args, message):
    r = _cli("--checkpoint", ckpt, *args, "--outdir", str(tmp_path))
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_wrong_ws_shape_and_missing_checkpoint(ckpt, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1, 18, 512), np.float32))
    r = _cli("--checkpoint", ckpt, "--ws", str(tmp_path / "bad.npy"), "--outdir", str(tmp_path))
    assert r.returncode == 2 and "expected [B, 8, 64]" in r.stderr and r.stderr.count("\n") == 1
    r = _cli("--checkpoint", str(tmp_path / "nope"), "--seeds", "0", "--outdir", str(tmp_path))
    assert r.returncode == 2 and "no such checkpoint directory" in r.stderr and r.stderr.count("\n") == 1
