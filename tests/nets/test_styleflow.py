"""StyleFlow CNF: parity with the reference (RameenAbdal/StyleFlow + torchdiffeq 0.0.1) on random
64-d weights (tests/data/styleflow.npz), round trip, pose-edit gradients, converter CLI."""
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA
from convert import ConversionError
from convert.styleflow import state_dict_to_params
from stylejax.io.checkpoint import load_styleflow
from stylejax.nets import styleflow as sf


@pytest.fixture(scope="module")
def golden():
    g = np.load(os.path.join(DATA, "styleflow.npz"))
    return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def state_dict(golden):
    return {k[len("sd/"):]: v for k, v in golden.items() if k.startswith("sd/")}


@pytest.fixture(scope="module")
def params(state_dict):
    return state_dict_to_params(state_dict)[1]


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def test_forward_matches_reference(golden, params):
    z = sf.forward(params, golden["ws"], golden["cond"])  # cond as the reference's [B, 17, 1, 1]
    assert rel_err(z, golden["z_forward"]) <= 1e-3
    # cond as [B, 17] gives the same
    z2 = sf.forward(params, golden["ws"], golden["cond"][:, :, 0, 0])
    np.testing.assert_array_equal(np.asarray(z), np.asarray(z2))


def test_reverse_matches_reference(golden, params):
    ws = sf.reverse(params, golden["z_in"], golden["cond_rev"])
    assert rel_err(ws, golden["ws_reverse"]) <= 1e-3


def test_pose_edit_matches_reference(golden, params):
    ws = golden["ws"]
    edit = sf.pose_edit(params, ws, golden["cond"], golden["yaw_deg"], golden["pitch_deg"], solver="dopri5")
    assert rel_err(edit, golden["ws_edit"]) <= 1e-3
    # the edit itself (w' - w on rows 0-3) is matched, not just the untouched rows
    assert rel_err(np.asarray(edit) - ws, golden["ws_edit"] - ws) <= 1e-3
    np.testing.assert_array_equal(np.asarray(edit)[:, 4:], ws[:, 4:])
    # RK4 with the default N reproduces the reference edit as well
    edit_rk4 = sf.pose_edit(params, ws, golden["cond"], golden["yaw_deg"], golden["pitch_deg"])
    assert rel_err(np.asarray(edit_rk4) - ws, golden["ws_edit"] - ws) <= 1e-3


def test_round_trip(golden, params):
    ws, cond = golden["ws"], golden["cond"]
    back = sf.reverse(params, sf.forward(params, ws, cond), cond)
    assert rel_err(back, ws) <= 1e-3  # two solves at tolerance 1e-5 each
    back_rk4 = sf.reverse(params, sf.forward(params, ws, cond, solver="rk4"), cond, solver="rk4")
    assert rel_err(back_rk4, ws) <= 1e-4


def test_rk4_converges_to_dopri5(golden, params):
    ws, cond = golden["ws"], golden["cond"]
    errs = [rel_err(sf.forward(params, ws, cond, solver="rk4", steps=n), golden["z_forward"]) for n in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]  # converging to the reference ...
    assert errs[0] / errs[1] > 6  # ... at roughly fourth order (until the reference's own error shows)
    assert errs[2] < 2e-5


def test_rows_outside_edit_band_unchanged(golden, params):
    ws = golden["ws"]
    for rows in (slice(0, 4), [2, 5, 9]):
        edit = np.asarray(sf.pose_edit(params, ws, golden["cond"], 20.0, -10.0, rows=rows))
        keep = np.zeros(18, bool)
        keep[rows] = True
        np.testing.assert_array_equal(edit[:, ~keep], ws[:, ~keep])
        assert np.abs(edit[:, keep] - ws[:, keep]).max() > 1e-2  # and the band did move
    # no change of pose -> (almost) no change at all
    same = sf.pose_edit(params, ws, golden["cond"], golden["cond"][:, 11, 0, 0], golden["cond"][:, 12, 0, 0])
    assert rel_err(same, ws) < 1e-5


def test_pose_edit_gradients_match_finite_differences(golden, params):
    ws, cond = golden["ws"], golden["cond"]
    target = jnp.asarray(golden["ws_edit"])

    def loss(yaw_deg, pitch_deg):
        edit = sf.pose_edit(params, ws, cond, yaw_deg, pitch_deg, steps=4)
        return jnp.sum((edit[:, :4] - target[:, :4]) ** 2)

    yaw = jnp.asarray(golden["yaw_deg"]) + 3.0
    pitch = jnp.asarray(golden["pitch_deg"]) - 2.0
    g_yaw, g_pitch = jax.jit(jax.grad(loss, argnums=(0, 1)))(yaw, pitch)
    assert g_yaw.shape == (3,) and np.all(np.isfinite(g_yaw)) and np.all(np.isfinite(g_pitch))
    assert np.abs(g_yaw).min() > 0 and np.abs(g_pitch).min() > 0
    eps = 0.05
    for grad, arg in ((g_yaw, 0), (g_pitch, 1)):
        for i in range(3):
            d = jnp.zeros(3).at[i].set(eps)
            shift = lambda s: loss(yaw + s * d, pitch) if arg == 0 else loss(yaw, pitch + s * d)
            fd = (float(shift(1)) - float(shift(-1))) / (2 * eps)
            assert abs(fd - float(grad[i])) <= 2e-2 * abs(fd) + 1e-4, (arg, i, fd, float(grad[i]))


@pytest.fixture
def main():
    """The real `python -m convert` entry point."""
    from convert.__main__ import main
    return main


@pytest.mark.parametrize("zip_format", [True, False])  # modellarge10k.pt was saved by torch 1.1: legacy format
def test_converter_cli_end_to_end(tmp_path, golden, state_dict, main, zip_format):
    torch = pytest.importorskip("torch")
    src = tmp_path / "modellarge10k.pt"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, src,
               _use_new_zipfile_serialization=zip_format)
    out = tmp_path / "styleflow"
    assert main(["styleflow", "--src", str(src), "--out", str(out)]) == 0
    params = load_styleflow(out).params
    z = sf.forward(params, golden["ws"], golden["cond"])
    assert rel_err(z, golden["z_forward"]) <= 1e-3
    direct = sf.forward(state_dict_to_params(state_dict)[1], golden["ws"], golden["cond"])
    np.testing.assert_array_equal(np.asarray(z), np.asarray(direct))


def test_converter_rejects_wrong_state_dicts(state_dict):
    with pytest.raises(ConversionError, match="no 'chain.1.odefunc.diffeq.layers"):
        state_dict_to_params({"conv1.weight": np.zeros((3, 3), np.float32)})
    broken = dict(state_dict)
    del broken["chain.2.running_var"]
    with pytest.raises(ConversionError, match="'chain.2.running_var' is missing"):
        state_dict_to_params(broken)
    broken = dict(state_dict)
    broken["chain.1.odefunc.diffeq.layers.3._hyper_bias.weight"] = np.zeros((64, 5), np.float32)
    with pytest.raises(ConversionError, match="_hyper_bias.weight' has shape"):
        state_dict_to_params(broken)
    with pytest.raises(ConversionError, match="dict of named tensors"):
        state_dict_to_params([1, 2, 3])
    # a DataParallel 'module.' prefix is accepted
    config, _ = state_dict_to_params({"module." + k: v for k, v in state_dict.items()})
    assert config == {"dim": 64, "hidden_dims": [64] * 5, "cond_dim": 17, "bn_eps": 1e-4}


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/styleflow_pwned",))


@pytest.mark.parametrize("kind", ["malicious", "not_a_checkpoint", "missing"])
def test_converter_cli_bad_files_one_line_error(tmp_path, capsys, main, kind):
    src = tmp_path / "modellarge10k.pt"
    marker = "/tmp/styleflow_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    if kind == "malicious":
        src.write_bytes(pickle.dumps({"chain.0.weight": _Evil()}))
    elif kind == "not_a_checkpoint":
        src.write_bytes(b"this is not a checkpoint at all\n")
    out = tmp_path / "out"
    assert main(["styleflow", "--src", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not os.path.exists(marker)
    assert not (out / "config.json").exists()
