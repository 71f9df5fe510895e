"""LPIPS: parity with the reference `lpips` package (random narrowed weights), gradients, converter CLI."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA
from convert import ConversionError
from convert.__main__ import main as convert_main
from convert.lpips import convert_state_dicts
from stylejax.nets.lpips import LPIPS, config_from_params, distance, init_params, load_lpips


def _golden(net):
    z = np.load(os.path.join(DATA, f"lpips_{net}.npz"))
    trunk = {k[len("trunk/"):]: z[k] for k in z.files if k.startswith("trunk/")}
    heads = {k[len("heads/"):]: z[k] for k in z.files if k.startswith("heads/")}
    return z, trunk, heads


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_parity_with_reference(net):
    z, trunk, heads = _golden(net)
    config, params = convert_state_dicts(heads, trunk)
    assert config.net == net and config.widths == tuple(z["widths"])
    d = np.asarray(distance(params, z["x0"], z["x1"]))
    assert d.shape == z["distance"].shape
    np.testing.assert_array_less(0.0, z["distance"])  # golden distances are non-trivial
    assert np.abs(d - z["distance"]).max() <= 1e-4, (d, z["distance"])
    # the bound callable gives the same numbers
    np.testing.assert_allclose(np.asarray(LPIPS(config, params)(z["x0"], z["x1"])), d, rtol=0, atol=1e-7)


def test_identity_and_symmetry():
    z, trunk, heads = _golden("alex")
    _, params = convert_state_dicts(heads, trunk)
    x0, x1 = z["x0"], z["x1"]
    # zero up to rounding (taps are bitwise equal; XLA's vectorised divide may differ by an ulp per lane)
    assert np.abs(np.asarray(distance(params, x0, x0))).max() <= 1e-12
    np.testing.assert_allclose(np.asarray(distance(params, x1, x0)), np.asarray(distance(params, x0, x1)), atol=1e-7)


def test_input_gradient_matches_finite_differences():
    # alexnet (5 convs) compiles fastest; the 11x11 stride-4 stem and 3x3/2 pools are its odd parts
    params = init_params(jax.random.PRNGKey(0), "alex", widths=(4, 8, 8, 8, 8))
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(1), 3)
    x0 = jax.random.uniform(k0, (2, 48, 48, 3), minval=-1, maxval=1)
    x1 = jax.random.uniform(k1, (2, 48, 48, 3), minval=-1, maxval=1)
    v = jax.random.normal(k2, x0.shape)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        x0, x1, v = (jnp.asarray(a, jnp.float64) for a in (x0, x1, v))
        f = lambda x: jnp.sum(distance(p64, x, x1))  # noqa: E731
        grad = jax.grad(f)(x0)
        assert grad.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(grad)))
        directional = float(jnp.vdot(grad, v))
        h = 1e-6
        fd = float((f(x0 + h * v) - f(x0 - h * v)) / (2 * h))
    assert abs(directional) > 1e-4
    assert abs(directional - fd) <= 1e-5 * max(1.0, abs(fd)), (directional, fd)


def test_gradient_finite_at_identical_inputs_and_dead_features():
    # d(x, x) has a zero-valued minimum; all-black images give all-zero ReLU taps for some pixels.
    params = init_params(jax.random.PRNGKey(2), "alex", widths=(4, 8, 8, 8, 8))
    x = jnp.full((1, 48, 48, 3), -1.0)
    g = jax.grad(lambda a: jnp.sum(distance(params, a, x)))(x)
    assert bool(jnp.all(jnp.isfinite(g)))


def _save_torch_files(tmp_path, net):
    torch = pytest.importorskip("torch")
    _, trunk, heads = _golden(net)
    trunk_file, heads_file = tmp_path / f"{net}_trunk.pth", tmp_path / f"{net}_heads.pth"
    # torchvision ships zip-format state dicts; the lpips package ships legacy (pre-1.6) files
    sd = {k: torch.from_numpy(v) for k, v in trunk.items()}
    sd["classifier.1.weight"] = torch.zeros(3, 2)  # torchvision files carry the classifier too
    torch.save(sd, trunk_file)
    torch.save({k: torch.from_numpy(v) for k, v in heads.items()}, heads_file, _use_new_zipfile_serialization=False)
    assert not __import__("zipfile").is_zipfile(heads_file)
    return trunk_file, heads_file


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_convert_cli_end_to_end(tmp_path, net, capsys):
    z, _, _ = _golden(net)
    trunk_file, heads_file = _save_torch_files(tmp_path, net)
    out = tmp_path / "out"
    assert convert_main(["lpips", "--src", str(heads_file), "--src2", str(trunk_file), "--out", str(out), "--net", net]) == 0
    model = load_lpips(out)
    assert model.config.net == net
    d = np.asarray(model(z["x0"], z["x1"]))
    assert np.abs(d - z["distance"]).max() <= 1e-4


def test_convert_full_lpips_state_dict_single_file(tmp_path):
    torch = pytest.importorskip("torch")
    z, trunk, heads = _golden("alex")
    # lpips.LPIPS().state_dict() layout: trunk under net.slice{s}.{i}, duplicated heads under lins.{k}
    stage = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    sd = {f"net.slice{stage[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": torch.from_numpy(v) for k, v in trunk.items()}
    sd.update({k: torch.from_numpy(v) for k, v in heads.items()})
    sd.update({k.replace("lin", "lins.", 1): torch.from_numpy(v) for k, v in heads.items()})
    sd["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    torch.save(sd, tmp_path / "lpips_full.pth")
    assert convert_main(["lpips", "--src", str(tmp_path / "lpips_full.pth"), "--out", str(tmp_path / "o")]) == 0
    d = np.asarray(load_lpips(tmp_path / "o")(z["x0"], z["x1"]))
    assert np.abs(d - z["distance"]).max() <= 1e-4


def _cli_error(capsys, argv, out):
    assert convert_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not os.path.exists(os.path.join(out, "config.json"))
    return err


def test_convert_bad_inputs_one_line_errors(tmp_path, capsys):
    vgg_trunk, vgg_heads = _save_torch_files(tmp_path, "vgg")
    alex_trunk, alex_heads = _save_torch_files(tmp_path, "alex")
    out = str(tmp_path / "out")
    base = ["lpips", "--out", out]
    err = _cli_error(capsys, base + ["--src", str(vgg_trunk), "--src2", str(vgg_heads)], out)
    assert "torchvision trunk" in err and "--src2" in err
    err = _cli_error(capsys, base + ["--src", str(vgg_heads), "--src2", str(vgg_heads)], out)
    assert "swapped" in err
    err = _cli_error(capsys, base + ["--src", str(vgg_heads)], out)
    assert "--src2" in err
    err = _cli_error(capsys, base + ["--src", str(alex_heads), "--src2", str(vgg_trunk)], out)
    assert "lin1.model.1.weight has 48 channels" in err and "gives 32" in err
    err = _cli_error(capsys, base + ["--src", str(vgg_heads), "--src2", str(vgg_trunk), "--net", "alex"], out)
    assert "--net alex" in err and "vgg trunk" in err
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint" * 10)
    err = _cli_error(capsys, base + ["--src", str(tmp_path / "junk.pth"), "--src2", str(alex_trunk)], out)
    assert "junk.pth" in err
    err = _cli_error(capsys, base + ["--src", str(tmp_path / "missing.pth"), "--src2", str(alex_trunk)], out)
    assert "missing.pth" in err


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_head_file_refused_not_run(tmp_path, capsys, legacy):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    _, trunk, heads = _golden("alex")
    sd = {k: torch.from_numpy(v) for k, v in heads.items()}
    sd["payload"] = _Evil(marker)
    torch.save(sd, tmp_path / "evil.pth", _use_new_zipfile_serialization=not legacy)
    trunk_file, _ = _save_torch_files(tmp_path, "alex")
    out = str(tmp_path / "out")
    err = _cli_error(capsys, ["lpips", "--src", str(tmp_path / "evil.pth"), "--src2", str(trunk_file), "--out", out], out)
    assert "system" in err and not marker.exists()


def test_pure_converter_rejects_bad_arrays():
    _, trunk, heads = _golden("alex")
    bad = dict(trunk)
    bad["features.3.weight"] = bad["features.3.weight"][:, :5]
    with pytest.raises(ConversionError, match="features.3.weight"):
        convert_state_dicts(heads, bad)
    bad = dict(heads)
    bad["lin2.model.1.weight"] = np.full_like(bad["lin2.model.1.weight"], np.nan)
    with pytest.raises(ConversionError, match="NaN"):
        convert_state_dicts(bad, trunk)
    bad = {k: v for k, v in trunk.items() if k != "features.8.bias"}
    with pytest.raises(ConversionError, match="features.8.bias"):
        convert_state_dicts(heads, bad)


def test_config_inferred_from_params():
    params = init_params(jax.random.PRNGKey(0), "alex", widths=(4, 6, 8, 10, 12))
    cfg = config_from_params(params)
    assert cfg.net == "alex" and cfg.widths == (4, 6, 8, 10, 12)
    assert all(float(jnp.min(params[f"lin{k}"]["kernel"])) >= 0 for k in range(5))
