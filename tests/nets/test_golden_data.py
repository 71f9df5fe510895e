"""Sanity of the committed reference goldens (tests/data/stylegan2_small*.npz).

They were produced by running rosinality/stylegan2-pytorch and NVlabs/stylegan2-ada-pytorch on the
same random weights; these checks guard the files themselves (plain data, consistent shapes, the two
references agreeing), so a generator parity failure can't be blamed on a broken golden.
"""
import json
import os

import numpy as np
import pytest

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(DATA, "stylegan2_small.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def nv_names():
    with np.load(os.path.join(DATA, "stylegan2_small_nvlabs_names.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_config_matches_shapes(golden):
    cfg = json.loads(str(golden["config_json"]))
    res, w_dim = cfg["resolution"], cfg["w_dim"]
    log_size = int(np.log2(res))
    num_ws = 2 * log_size - 2
    assert cfg["num_ws"] == num_ws
    channels = {int(r): c for r, c in cfg["channels"].items()}
    assert len(set(channels.values())) > 1, "channels must differ per resolution to catch bookkeeping bugs"
    for key in ["ws_from_z", "ws_trunc", "ws_trunc_cutoff", "ws_plus"]:
        assert golden[key].shape == (4, num_ws, w_dim)
    for key in ["img_ws_plus", "img_ws_plus_nonoise", "img_z_trunc", "img_z_trunc_cutoff", "nv/img_ws_plus"]:
        assert golden[key].shape == (4, res, res, 3) and golden[key].dtype == np.float32
    # StyleSpace: conv 4, torgb 4, then (conv0_up, conv1, torgb) per block; torgb/conv1 see C(res).
    expected = [channels[4], channels[4]]
    for r in [2 ** i for i in range(3, log_size + 1)]:
        expected += [channels[r // 2], channels[r], channels[r]]
    assert [golden[f"styles/{l}"].shape[1] for l in range(len(expected))] == expected
    assert f"styles/{len(expected)}" not in golden
    assert golden["sd/noises.noise_0"].shape == (1, 1, 4, 4)
    assert f"sd/noises.noise_{2 * log_size - 4}" in golden  # 2*(log_size-2)+1 noise maps


def test_parameters_are_not_defaults(golden):
    # zero biases / unit modulation biases / zero noise strengths would hide bugs
    for key, value in golden.items():
        if key.startswith("sd/") and not key.endswith("kernel"):
            assert np.std(value) > 0 or value.size == 1, key
            assert not np.all(value == 0), key
    assert not np.allclose(golden["sd/conv1.conv.modulation.bias"], 1.0)
    assert np.any(golden["w_avg"] != 0)
    rows = golden["ws_plus"][0]
    assert np.min(np.abs(rows[1:] - rows[:-1])) > 0  # a real W+, not a repeated w


def test_truncation_semantics(golden):
    w_avg, ws = golden["w_avg"], golden["ws_from_z"]
    trunc = w_avg + 0.7 * (ws - w_avg)
    np.testing.assert_allclose(golden["ws_trunc"], trunc, atol=1e-5)
    np.testing.assert_allclose(golden["ws_trunc_cutoff"][:, :4], trunc[:, :4], atol=1e-5)
    np.testing.assert_array_equal(golden["ws_trunc_cutoff"][:, 4:], ws[:, 4:])


def test_rosinality_and_nvlabs_agree(golden):
    pairs = [("ws_trunc", "nv/ws_trunc"), ("ws_trunc_cutoff", "nv/ws_trunc_cutoff"),
             ("img_ws_plus", "nv/img_ws_plus"), ("img_ws_plus_nonoise", "nv/img_ws_plus_nonoise"),
             ("img_z_trunc", "nv/img_z_trunc"), ("img_z_trunc_cutoff", "nv/img_z_trunc_cutoff")]
    pairs += [(f"img_edit_{k}", f"nv/img_edit_{k}") for k in range(len(golden["edit_layers"]))]
    for ros, nv in pairs:
        np.testing.assert_allclose(golden[ros], golden[nv], atol=1e-5, rtol=0, err_msg=ros)


def test_cases_differ_from_each_other(golden):
    # each golden case must actually exercise its feature
    base = golden["img_ws_plus"]
    assert np.max(np.abs(base - golden["img_ws_plus_nonoise"])) > 0.1  # noise matters
    assert np.max(np.abs(golden["img_z_trunc"] - golden["img_z_trunc_cutoff"])) > 0.1  # cutoff matters
    for k in range(len(golden["edit_layers"])):
        assert np.max(np.abs(golden[f"img_edit_{k}"] - base)) > 0.1  # the edit matters
    torgb_layers = [l for l in golden["edit_layers"] if l % 3 == 1]
    assert torgb_layers, "need at least one ToRGB edit"


def test_nvlabs_names_hold_the_same_weights(golden, nv_names):
    cfg = json.loads(str(golden["config_json"]))
    log_size = int(np.log2(cfg["resolution"]))
    np.testing.assert_array_equal(nv_names["mapping.w_avg"], golden["w_avg"])
    for i in range(cfg["mapping_layers"]):
        np.testing.assert_array_equal(nv_names[f"mapping.fc{i}.weight"], golden[f"sd/style.{i + 1}.weight"])
        np.testing.assert_array_equal(nv_names[f"mapping.fc{i}.bias"], golden[f"sd/style.{i + 1}.bias"])
    np.testing.assert_array_equal(nv_names["synthesis.b4.const"], golden["sd/input.input"][0])
    last = 2 ** log_size
    np.testing.assert_array_equal(nv_names[f"synthesis.b{last}.conv0.weight"],
                                  golden[f"sd/convs.{2 * (log_size - 3)}.conv.weight"][0])
    np.testing.assert_array_equal(nv_names[f"synthesis.b{last}.conv1.noise_const"],
                                  golden[f"sd/noises.noise_{2 * log_size - 4}"][0, 0])
    np.testing.assert_array_equal(nv_names[f"synthesis.b{last}.torgb.bias"],
                                  golden[f"sd/to_rgbs.{log_size - 3}.bias"].reshape(3))
    assert nv_names["synthesis.b8.conv0.noise_strength"].shape == ()
    assert nv_names["synthesis.b8.conv0.noise_strength"] == golden["sd/convs.0.noise.weight"][0]
