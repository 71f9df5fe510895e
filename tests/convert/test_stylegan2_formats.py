"""StyleGAN2 checkpoint readers: four formats -> one canonical state dict; nothing in a file ever runs.

All input files are crafted here at test time from one set of small random weights (16 px, channels
8/6/4, z_dim 6 != w_dim 8 so that transposes show). The NVlabs and TF pickles are written through fake
`torch_utils.persistence` / `dnnlib` modules that reproduce the pickled layouts of the real ones (a
persistent module pickles as `_reconstruct_persistent_obj(meta)` with the module's `__dict__` as
`meta["state"]`; a TF Network pickles its `__getstate__` dict). Their embedded source would create a
marker file if anything executed it.
"""
import collections
import os
import pickle
import sys
import types

import numpy as np
import pytest

from convert import ConversionError
from convert.stylegan2_formats import UnsafeCheckpointError, read_stylegan2

torch = pytest.importorskip("torch")

Z_DIM, W_DIM, N_MAP = 6, 8, 2
CHANNELS = {4: 8, 8: 6, 16: 4}
RESOLUTIONS = sorted(CHANNELS)
FIR4 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64 * 4  # rosinality: gain 4 baked in


# ----------------------------------------------------------------------------------------------
# One set of weights in TF layout, and the canonical (rosinality) dict it must read as.

def _tf_weights(seed=0):
    rng = np.random.RandomState(seed)

    def rand(*shape):
        return rng.randn(*shape).astype(np.float32)

    def mod_bias(n):  # values whose (b + 1) - 1 round trip is exact, so all formats agree bitwise
        return (np.round(rng.randn(n) * 256) / 1024).astype(np.float32)

    mapping = {}
    fan_in = Z_DIM
    for i in range(N_MAP):
        mapping[f"Dense{i}/weight"] = rand(fan_in, W_DIM)  # TF dense: [in, out]
        mapping[f"Dense{i}/bias"] = rand(W_DIM)
        fan_in = W_DIM
    synthesis = {"lod": np.float32(0)}

    def layer(name, cin, cout, k, noise=True):
        synthesis[f"{name}/weight"] = rand(k, k, cin, cout)  # [kh, kw, in, out]
        synthesis[f"{name}/mod_weight"] = rand(W_DIM, cin)
        synthesis[f"{name}/mod_bias"] = mod_bias(cin)  # +1 added at run time in TF
        if noise:
            synthesis[f"{name}/noise_strength"] = np.float32(rng.randn())  # numpy scalar, like tfutil.run
        synthesis[f"{name}/bias"] = rand(cout)

    synthesis["4x4/Const/const"] = rand(1, CHANNELS[4], 4, 4)
    layer("4x4/Conv", CHANNELS[4], CHANNELS[4], 3)
    layer("4x4/ToRGB", CHANNELS[4], 3, 1, noise=False)
    for r in RESOLUTIONS[1:]:
        layer(f"{r}x{r}/Conv0_up", CHANNELS[r // 2], CHANNELS[r], 3)
        layer(f"{r}x{r}/Conv1", CHANNELS[r], CHANNELS[r], 3)
        layer(f"{r}x{r}/ToRGB", CHANNELS[r], 3, 1, noise=False)
    for i in range(2 * len(RESOLUTIONS) - 1):
        r = 2 ** ((i + 5) // 2)
        synthesis[f"noise{i}"] = rand(1, 1, r, r)
    return mapping, synthesis, rand(W_DIM)


def _canonical_from_tf(mapping, synthesis):
    """The rosinality g_ema the TF weights correspond to (the rules of convert_weight.py / legacy.py)."""
    sd = {}
    for i in range(N_MAP):
        sd[f"style.{i + 1}.weight"] = mapping[f"Dense{i}/weight"].T
        sd[f"style.{i + 1}.bias"] = mapping[f"Dense{i}/bias"]
    sd["input.input"] = synthesis["4x4/Const/const"]

    def layer(tf, dst, noise=None, flip=False):
        w = np.einsum("hwio->oihw", synthesis[f"{tf}/weight"])
        if flip:
            w = w[:, :, ::-1, ::-1]
        sd[f"{dst}.conv.weight"] = w[None]
        sd[f"{dst}.conv.modulation.weight"] = synthesis[f"{tf}/mod_weight"].T
        sd[f"{dst}.conv.modulation.bias"] = synthesis[f"{tf}/mod_bias"] + np.float32(1)
        if noise is None:
            sd[f"{dst}.bias"] = synthesis[f"{tf}/bias"][None, :, None, None]
        else:
            sd[f"{dst}.noise.weight"] = np.array([synthesis[f"{tf}/noise_strength"]], np.float32)
            sd[f"{dst}.activate.bias"] = synthesis[f"{tf}/bias"]
            sd[f"noises.noise_{noise}"] = synthesis[f"noise{noise}"]

    layer("4x4/Conv", "conv1", noise=0)
    layer("4x4/ToRGB", "to_rgb1")
    for k, r in enumerate(RESOLUTIONS[1:]):
        layer(f"{r}x{r}/Conv0_up", f"convs.{2 * k}", noise=2 * k + 1, flip=True)
        layer(f"{r}x{r}/Conv1", f"convs.{2 * k + 1}", noise=2 * k + 2)
        layer(f"{r}x{r}/ToRGB", f"to_rgbs.{k}")
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


@pytest.fixture(scope="module")
def weights():
    mapping, synthesis, w_avg = _tf_weights()
    return mapping, synthesis, w_avg, _canonical_from_tf(mapping, synthesis)


# ----------------------------------------------------------------------------------------------
# Writers for the four formats.

def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def _rosinality_g_ema(sd):
    """A g_ema state dict as rosinality's Generator would save it (incl. the kernel buffers)."""
    out = collections.OrderedDict((k, _t(v)) for k, v in sd.items())
    for k in range(len(RESOLUTIONS) - 1):
        out[f"convs.{2 * k}.conv.blur.kernel"] = _t(FIR4)
        out[f"to_rgbs.{k}.upsample.kernel"] = _t(FIR4)
    return out


def write_rosinality(path, sd, w_avg, zip_format=True):
    torch.save({"g_ema": _rosinality_g_ema(sd), "latent_avg": _t(w_avg)}, path,
               _use_new_zipfile_serialization=zip_format)


def write_rosinality_train(path, sd):
    import argparse

    g = _rosinality_g_ema(sd)
    optim = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
             "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99), "eps": 1e-8, "params": [0]}]}
    torch.save({"g": g, "d": {"convs.0.0.weight": torch.randn(4, 3, 1, 1)}, "g_ema": g,
                "g_optim": optim, "d_optim": optim,
                "args": argparse.Namespace(size=16, latent=W_DIM, n_mlp=N_MAP), "ada_aug_p": 0.0}, path)


def write_e4e(path, sd, w_avg):
    state = collections.OrderedDict()
    state["encoder.input_layer.0.weight"] = torch.randn(4, 3, 3, 3)
    state["encoder.styles.0.linear.weight"] = torch.randn(W_DIM, W_DIM)
    for k, v in _rosinality_g_ema(sd).items():
        state["decoder." + k] = v
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 16, "start_from_latent_avg": True}
    n_ws = 2 * len(RESOLUTIONS)
    torch.save({"state_dict": state, "opts": opts, "latent_avg": _t(np.tile(w_avg, (n_ws, 1)))}, path)


def _fake_modules(monkeypatch, marker):
    """Fake `torch_utils.persistence`, `dnnlib.util.EasyDict`, `dnnlib.tflib.network.Network` so that
    `pickle` writes the same globals as the real classes. Their embedded source creates `marker`."""
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\n"

    def _reconstruct_persistent_obj(meta):  # what the real one does: exec(meta['module_src'])
        exec(meta["module_src"], {})

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"

    class Network:
        def __init__(self, name, static_kwargs, components, variables):
            self.name, self.static_kwargs = name, static_kwargs
            self.components, self.variables = components, variables

        def __getstate__(self):  # same fields as dnnlib/tflib/network.py
            return {"version": 4, "name": self.name, "static_kwargs": dict(self.static_kwargs),
                    "components": dict(self.components), "build_module_src": src,
                    "build_func_name": "G_main", "variables": list(self.variables.items())}

        def __setstate__(self, state):  # the real one execs build_module_src
            exec(state["build_module_src"], {})

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"

    mods = {name: types.ModuleType(name) for name in
            ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "dnnlib.tflib",
             "dnnlib.tflib.network"]}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["dnnlib.util"].EasyDict = EasyDict
    mods["dnnlib.tflib.network"].Network = Network
    for name, mod in mods.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(mods[parent], child, mod)
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict,
                                 Network=Network, src=src)


def write_nvlabs(path, sd, w_avg, fakes, conv_clamp=None):
    """An NVlabs stylegan2-ada-pytorch snapshot: {G, D, G_ema, augment_pipe, training_set_kwargs}."""

    class Persistent:
        def __init__(self, class_name, state):
            self.class_name, self.state = class_name, state

        def __reduce__(self):
            meta = {"type": "class", "version": 6, "module_src": fakes.src,
                    "class_name": self.class_name, "state": self.state}
            return fakes.reconstruct, (meta,)

    def module(class_name, params=(), buffers=(), children=(), **attrs):
        state = {"training": False,
                 "_parameters": collections.OrderedDict(
                     (k, torch.nn.Parameter(_t(v), requires_grad=False)) for k, v in params),
                 "_buffers": collections.OrderedDict((k, _t(v)) for k, v in buffers),
                 "_non_persistent_buffers_set": set(), "_backward_hooks": collections.OrderedDict(),
                 "_forward_hooks": collections.OrderedDict(), "_forward_pre_hooks": collections.OrderedDict(),
                 "_state_dict_hooks": collections.OrderedDict(), "_modules": collections.OrderedDict(children),
                 "_init_args": (), "_init_kwargs": fakes.EasyDict(attrs.get("init", {})), **attrs}
        state.pop("init", None)
        return Persistent(class_name, state)

    fir = FIR4 / 4

    def fc(weight, bias, lr, activation):
        return module("FullyConnectedLayer", [("weight", weight), ("bias", bias)], activation=activation,
                      weight_gain=np.float64(lr / np.sqrt(weight.shape[1])), bias_gain=lr)

    def synth_layer(src, res, up):
        return module(
            "SynthesisLayer",
            [("weight", sd[f"{src}.conv.weight"][0]), ("noise_strength", sd[f"{src}.noise.weight"].reshape(())),
             ("bias", sd[f"{src}.activate.bias"])],
            [("resample_filter", fir)],
            [("affine", fc(sd[f"{src}.conv.modulation.weight"], sd[f"{src}.conv.modulation.bias"], 1, "linear"))],
            resolution=res, up=up, use_noise=True, activation="lrelu", conv_clamp=conv_clamp, padding=1,
            act_gain=np.float64(np.sqrt(2)))

    def torgb(src):
        return module(
            "ToRGBLayer", [("weight", sd[f"{src}.conv.weight"][0]), ("bias", sd[f"{src}.bias"].reshape(3))],
            children=[("affine", fc(sd[f"{src}.conv.modulation.weight"], sd[f"{src}.conv.modulation.bias"],
                                    1, "linear"))],
            conv_clamp=conv_clamp, weight_gain=np.float64(1 / np.sqrt(sd[f"{src}.conv.weight"].shape[2])))

    def with_noise(layer, noise):  # noise_const is a buffer of the layer, [r, r]
        layer.state["_buffers"]["noise_const"] = _t(sd[f"noises.noise_{noise}"][0, 0])
        return layer

    blocks = []
    for k, r in enumerate(RESOLUTIONS):
        if r == 4:
            children = [("conv1", with_noise(synth_layer("conv1", 4, 1), 0)), ("torgb", torgb("to_rgb1"))]
            params = [("const", sd["input.input"][0])]
        else:
            j = k - 1
            children = [("conv0", with_noise(synth_layer(f"convs.{2 * j}", r, 2), 2 * j + 1)),
                        ("conv1", with_noise(synth_layer(f"convs.{2 * j + 1}", r, 1), 2 * j + 2)),
                        ("torgb", torgb(f"to_rgbs.{j}"))]
            params = []
        blocks.append((f"b{r}", module("SynthesisBlock", params, [("resample_filter", fir)], children,
                                       resolution=r, architecture="skip", use_fp16=False,
                                       init={"resolution": r, "conv_clamp": None})))
    synthesis = module("SynthesisNetwork", children=blocks, block_resolutions=list(RESOLUTIONS))
    fcs = [(f"fc{i}", fc(sd[f"style.{i + 1}.weight"], sd[f"style.{i + 1}.bias"], 0.01, "lrelu"))
           for i in range(N_MAP)]
    mapping = module("MappingNetwork", buffers=[("w_avg", w_avg)], children=fcs, z_dim=Z_DIM, w_dim=W_DIM)
    G = module("Generator", children=[("synthesis", synthesis), ("mapping", mapping)],
               z_dim=Z_DIM, c_dim=0, w_dim=W_DIM, img_resolution=16, img_channels=3)
    D = module("Discriminator", params=[("b16.fromrgb.weight", np.ones((4, 3, 1, 1), np.float32))])
    snapshot = {"training_set_kwargs": fakes.EasyDict(path="ffhq.zip", resolution=16),
                "G": G, "D": D, "G_ema": G, "augment_pipe": None}
    with open(path, "wb") as f:
        pickle.dump(snapshot, f)


def write_tf(path, mapping, synthesis, w_avg, fakes, protocol=4):
    """The official TF StyleGAN2 pickle: (G, D, Gs) of dnnlib.tflib.network.Network."""
    kw = {"num_channels": 3, "resolution": 16, "label_size": 0, "latent_size": Z_DIM,
          "dlatent_size": W_DIM, "mapping_layers": N_MAP}
    Net = fakes.Network
    comps = {"mapping": Net("G_mapping", kw, {}, mapping), "synthesis": Net("G_synthesis", kw, {}, synthesis)}
    Gs = Net("Gs", kw, comps, {"lod": np.float32(0), "dlatent_avg": w_avg})
    G = Net("G", kw, comps, {"lod": np.float32(0), "dlatent_avg": np.zeros_like(w_avg)})
    D = Net("D", kw, {}, {"Output/weight": np.ones((4, 1), np.float32)})
    with open(path, "wb") as f:
        pickle.dump((G, D, Gs), f, protocol=protocol)


# ----------------------------------------------------------------------------------------------
# Equivalence across formats

def _check(out, expected_sd, expected_w_avg, fmt):
    sd, w_avg, info = out
    assert sorted(sd) == sorted(expected_sd)
    for k, v in expected_sd.items():
        assert sd[k].dtype == np.float32 and sd[k].shape == v.shape, k
        np.testing.assert_array_equal(sd[k], v, err_msg=k)
    if expected_w_avg is None:
        assert w_avg is None
    else:
        np.testing.assert_array_equal(w_avg, expected_w_avg)
    assert info["format"] == fmt
    assert {k: info[k] for k in ["resolution", "z_dim", "w_dim", "mapping_layers", "channels"]} == {
        "resolution": 16, "z_dim": Z_DIM, "w_dim": W_DIM, "mapping_layers": N_MAP, "channels": CHANNELS}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_rosinality(tmp_path, weights, zip_format):
    _, _, w_avg, sd = weights
    path = tmp_path / "g.pt"
    write_rosinality(path, sd, w_avg, zip_format)
    _check(read_stylegan2(path), sd, w_avg, "rosinality")


def test_rosinality_train_checkpoint_has_no_w_avg(tmp_path, weights):
    sd = weights[3]
    path = tmp_path / "010000.pt"
    write_rosinality_train(path, sd)
    _check(read_stylegan2(path), sd, None, "rosinality")


def test_e4e(tmp_path, weights):
    _, _, w_avg, sd = weights
    path = tmp_path / "e4e.pt"
    write_e4e(path, sd, w_avg)
    _check(read_stylegan2(path), sd, w_avg, "e4e")


def test_nvlabs_pickle_read_without_running_its_source(tmp_path, weights, monkeypatch):
    _, _, w_avg, sd = weights
    marker = tmp_path / "EXECUTED"
    fakes = _fake_modules(monkeypatch, marker)
    path = tmp_path / "network-snapshot.pkl"
    write_nvlabs(path, sd, w_avg, fakes)
    assert "write_text('executed')".encode() in path.read_bytes()  # the source really is inside
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")  # as on a user's machine: no NVlabs code
    out = read_stylegan2(path)
    _check(out, sd, w_avg, "nvlabs")
    assert out[2]["conv_clamp"] is None and out[2]["mapping_lr_multiplier"] == 0.01
    assert not marker.exists()


def test_nvlabs_conv_clamp_reported(tmp_path, weights, monkeypatch):
    """ADA-trained pickles clamp conv outputs (conv_clamp=256); the canonical dict cannot hold that,
    so it is reported in info for the converter to act on."""
    _, _, w_avg, sd = weights
    fakes = _fake_modules(monkeypatch, tmp_path / "EXECUTED")
    write_nvlabs(tmp_path / "ada.pkl", sd, w_avg, fakes, conv_clamp=256)
    assert read_stylegan2(tmp_path / "ada.pkl")[2]["conv_clamp"] == 256.0


@pytest.mark.parametrize("protocol", [4, 5])
def test_tf_pickle_read_without_tensorflow(tmp_path, weights, monkeypatch, protocol):
    mapping, synthesis, w_avg, sd = weights
    marker = tmp_path / "EXECUTED"
    fakes = _fake_modules(monkeypatch, marker)
    path = tmp_path / "stylegan2-tiny-config-f.pkl"
    write_tf(path, mapping, synthesis, w_avg, fakes, protocol)
    monkeypatch.delitem(sys.modules, "dnnlib.tflib.network")
    _check(read_stylegan2(path), sd, w_avg, "tf")
    assert not marker.exists()


def test_fake_writers_would_execute_with_the_original_loaders(tmp_path, weights, monkeypatch):
    """Guards the safety tests above: with the fake modules in place, plain pickle.load runs the
    embedded source (as NVlabs' and TF's own loaders do), so 'marker absent' means something."""
    mapping, synthesis, w_avg, sd = weights
    marker = tmp_path / "EXECUTED"
    fakes = _fake_modules(monkeypatch, marker)
    write_nvlabs(tmp_path / "a.pkl", sd, w_avg, fakes)
    with open(tmp_path / "a.pkl", "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    write_tf(tmp_path / "b.pkl", mapping, synthesis, w_avg, fakes)
    with open(tmp_path / "b.pkl", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_tf_up_conv_flip_and_bias_offset_matter(weights):
    """The TF traps are real on these weights: without the flip / +1 the dicts would differ."""
    mapping, synthesis, _, sd = weights
    w = synthesis["8x8/Conv0_up/weight"]
    assert not np.array_equal(np.einsum("hwio->oihw", w)[None], sd["convs.0.conv.weight"])
    assert not np.array_equal(synthesis["8x8/Conv1/mod_bias"], sd["convs.1.conv.modulation.bias"])


def test_e4e_latent_avg_rows_differ_uses_mean(tmp_path, weights):
    sd = weights[3]
    rows = np.random.RandomState(1).randn(6, W_DIM).astype(np.float32)
    path = tmp_path / "e4e.pt"
    torch.save({"state_dict": {"decoder." + k: v for k, v in _rosinality_g_ema(sd).items()},
                "opts": {}, "latent_avg": _t(rows)}, path)
    np.testing.assert_allclose(read_stylegan2(path)[1], rows.mean(0), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Refusing malicious files

class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def _payloads(marker):
    return {"os.system": _Evil(os.system, f"touch {marker}"),
            "exec": _Evil(exec, f"open({str(marker)!r}, 'w').write('x')")}


@pytest.mark.parametrize("payload", ["os.system", "exec"])
def test_malicious_pkl_refused(tmp_path, payload):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": _payloads(marker)[payload], "G": None}, f)
    with pytest.raises(UnsafeCheckpointError) as e:
        read_stylegan2(path)
    msg = str(e.value)
    assert "\n" not in msg and "refused" in msg
    assert ("system" in msg) if payload == "os.system" else ("builtins.exec" in msg)
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pt_refused(tmp_path, weights, zip_format):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    g = _rosinality_g_ema(weights[3])
    torch.save({"g_ema": g, "latent_avg": _payloads(marker)["os.system"]}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as e:
        read_stylegan2(path)
    assert "\n" not in str(e.value) and "system" in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def test_nvlabs_pickle_with_foreign_module_class_refused(tmp_path, monkeypatch):
    """A pickle naming a real class outside the allowlist (here NVlabs-like but via a torch module
    class) is refused, even though that class would be harmless."""
    path = tmp_path / "m.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": torch.nn.Linear(2, 2)}, f)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        read_stylegan2(path)


# ----------------------------------------------------------------------------------------------
# Bad input: one-line ConversionError

def _one_line_error(path, *needles):
    with pytest.raises(ConversionError) as e:
        read_stylegan2(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    _one_line_error(path, "not a StyleGAN2 checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _one_line_error(empty, "empty")
    _one_line_error(tmp_path / "missing.pkl", "no such file")


@pytest.mark.parametrize("fmt", ["zip", "legacy", "nvlabs", "tf"])
def test_truncated_files(tmp_path, weights, monkeypatch, fmt):
    mapping, synthesis, w_avg, sd = weights
    path = tmp_path / "g.bin"
    if fmt in ("zip", "legacy"):
        write_rosinality(path, sd, w_avg, fmt == "zip")
    else:
        fakes = _fake_modules(monkeypatch, tmp_path / "EXECUTED")
        if fmt == "nvlabs":
            write_nvlabs(path, sd, w_avg, fakes)
        else:
            write_tf(path, mapping, synthesis, w_avg, fakes)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    _one_line_error(path)


def test_wrong_kind_of_checkpoint(tmp_path):
    path = tmp_path / "alex.pth"
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate([64, 192, 384])}, path)
    _one_line_error(path, "not a StyleGAN2 generator checkpoint", "lin0.model.1.weight")
    path2 = tmp_path / "list.pkl"
    with open(path2, "wb") as f:
        pickle.dump([1, 2, 3], f)
    _one_line_error(path2, "not a StyleGAN2 generator checkpoint", "list")


def test_incomplete_or_foreign_generator(tmp_path, weights):
    _, _, w_avg, sd = weights
    broken = {k: v for k, v in sd.items() if k != "convs.1.noise.weight"}
    path = tmp_path / "g.pt"
    write_rosinality(path, broken, w_avg)
    _one_line_error(path, "convs.1.noise.weight")
    resnet = dict(sd, **{"convs.0.skip.weight": np.ones((4, 4), np.float32)})
    write_rosinality(path, resnet, w_avg)
    _one_line_error(path, "unexpected generator weight convs.0.skip.weight")
    wrong = dict(sd, **{"conv1.noise.weight": np.ones((2,), np.float32)})
    write_rosinality(path, wrong, w_avg)
    _one_line_error(path, "conv1.noise.weight", "[2]", "[1]")
    write_rosinality(path, sd, w_avg[:5])
    _one_line_error(path, "mean latent")
