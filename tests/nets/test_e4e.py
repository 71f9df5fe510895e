"""e4e encoder: parity with the reference Encoder4Editing (random weights, reduced widths, real
24-unit/18-row structure, 96² input so every size is odd somewhere), converter CLI, bad input."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from convert.__main__ import parse_args
from conftest import DATA, REPO
from convert import ConversionError
from convert import e4e as convert_e4e
from stylejax.io.checkpoint import load_e4e
from stylejax.nets import e4e

GOLDEN = os.path.join(DATA, "e4e_small.npz")
OPTS = {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "start_from_latent_avg": True}


@pytest.fixture(scope="module")
def golden():
    d = np.load(GOLDEN)
    sd = {k[3:]: d[k] for k in d.files if k.startswith("sd/")}
    return sd, d["latent_avg"], d["images"], d["ws"]


@pytest.fixture(scope="module")
def apply_small():
    cfg = e4e.small_config()  # one compile shared by the tests below
    return jax.jit(lambda v, x: e4e.E4E(cfg, v["params"])(x))


def _cli(argv):
    convert_e4e.run(parse_args("e4e", argv))


def _save(path, obj):
    torch = pytest.importorskip("torch")

    def to_torch(v):
        if isinstance(v, dict):
            return {k: to_torch(x) for k, x in v.items()}
        return torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v

    torch.save(to_torch(obj), path)
    return str(path)


def test_golden_is_the_reduced_reference_config(golden):
    sd, _, images, ws = golden
    assert convert_e4e.infer_config(sd) == e4e.small_config()
    assert ws.shape == (2, 18, 22) and images.shape == (2, 96, 96, 3)
    assert sum(k.endswith("convs.10.weight") for k in sd) == 11  # rows 7..17 have 6 convs


def test_parity_with_reference(golden, apply_small):
    sd, latent_avg, images, ws_ref = golden
    params = convert_e4e.params_from_state_dict(sd, e4e.small_config(), latent_avg)
    ws = np.asarray(apply_small({"params": params}, images))
    assert np.abs(ws - ws_ref).max() <= 1e-4
    # the per-row deltas matter: rows differ from row 0 by more than the tolerance
    assert np.abs((ws_ref - latent_avg) - (ws_ref - latent_avg)[:, :1]).max() > 1e-2


def test_upsample_align_corners_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
    for out_hw in [(10, 14), (11, 13), (5, 7)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=out_hw,
                                              mode="bilinear", align_corners=True).permute(0, 2, 3, 1).numpy()
        ours = np.asarray(e4e.upsample_bilinear_align_corners(x, out_hw))
        assert np.abs(ours - ref).max() < 1e-6


def test_convert_cli_end_to_end(tmp_path, golden, apply_small):
    sd, latent_avg, images, ws_ref = golden
    src = _save(tmp_path / "e4e.pt", {"state_dict": sd, "latent_avg": latent_avg, "opts": OPTS})
    _cli(["--src", src, "--out", str(tmp_path / "out")])
    model = load_e4e(tmp_path / "out")
    params = model.params
    assert model.config == e4e.small_config()
    ws = np.asarray(apply_small({"params": params}, images))
    assert np.abs(ws - ws_ref).max() <= 1e-4


def test_latent_avg_of_one_row_is_broadcast(golden):
    sd, latent_avg, _, _ = golden
    _, params = convert_e4e.convert_checkpoint({"state_dict": sd, "latent_avg": latent_avg[0], "opts": OPTS})
    np.testing.assert_array_equal(params["latent_avg"], np.broadcast_to(latent_avg[0], (18, 22)))


def _error(ckpt):
    with pytest.raises(ConversionError) as e:
        convert_e4e.convert_checkpoint(ckpt, "f.pt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("f.pt: ")
    return msg


def test_bad_checkpoints_give_one_line_errors(golden):
    sd, latent_avg, _, _ = golden
    good = {"state_dict": sd, "latent_avg": latent_avg, "opts": OPTS}
    missing = dict(sd)
    del missing["encoder.body.13.res_layer.3.weight"]
    assert "encoder.body.13.res_layer.3.weight" in _error({**good, "state_dict": missing})
    wrong = {**sd, "encoder.styles.5.linear.weight": np.zeros((22, 21), np.float32)}
    assert "style_5/linear/kernel" in _error({**good, "state_dict": wrong})
    nan = {**sd, "encoder.latlayer1.bias": np.full(22, np.nan, np.float32)}
    assert "NaN" in _error({**good, "state_dict": nan})
    assert "Encoder4Editing" in _error({**good, "opts": {**OPTS, "encoder_type": "GradualStyleEncoder"}})
    assert "stylegan_size" in _error({**good, "opts": {**OPTS, "stylegan_size": 256}})
    assert "latent_avg" in _error({"state_dict": sd, "opts": OPTS})
    assert "latent_avg" in _error({**good, "latent_avg": np.zeros((3, 22), np.float32)})
    assert "arcface" in _error({"input_layer.0.weight": sd["encoder.input_layer.0.weight"],
                                "output_layer.3.weight": np.zeros((4, 4), np.float32)})
    assert "stylegan2" in _error({"g_ema": {"style.1.weight": np.zeros((4, 4), np.float32)}})
    assert "no encoder" in _error({"state_dict": {"foo": np.zeros(3, np.float32)}})
    assert "expected a dict" in _error([1, 2])


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_and_broken_files_are_refused(tmp_path):
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    src = _save(tmp_path / "evil.pt", {"state_dict": {"encoder.x": evil}})
    with pytest.raises(ConversionError) as e:
        _cli(["--src", src, "--out", str(tmp_path / "out")])
    assert "\n" not in str(e.value)
    assert not os.path.exists(evil.marker)
    assert not os.path.exists(tmp_path / "out" / "config.json")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConversionError):
        _cli(["--src", str(broken), "--out", str(tmp_path / "out")])
    with pytest.raises(ConversionError, match="no such file"):
        _cli(["--src", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "out")])


def test_python_m_convert_exit_code(tmp_path):
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    src = _save(tmp_path / "evil.pt", {"state_dict": {"encoder.x": evil}})
    r = subprocess.run([sys.executable, "-m", "convert", "e4e", "--src", src, "--out", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert not os.path.exists(evil.marker)
