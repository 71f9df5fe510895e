"""scripts/check_conventions.py on the tiny random networks: every check reports, and the ones random weights
cannot answer say so (dlib finds no face in a 32 px render; unit affine biases give ToRGB style means near 1)."""
import importlib.util
import json
import os

import numpy as np
import pytest

import tiny_encoder
from conftest import REPO
from stylejax import demo
from stylejax.stages import head_pose


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("check_conventions", os.path.join(REPO, "scripts",
                                                                                    "check_conventions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nets_dir(tmp_path_factory):
    return tiny_encoder.save_networks(str(tmp_path_factory.mktemp("nets")))


def test_reports_every_check_on_random_networks(script, nets_dir, tmp_path, capsys):
    g, _, flow, _ = tiny_encoder.networks()
    truth = demo.ground_truth(g, flow, 4)
    frames = demo.synthesise(g, flow, *truth, 8)
    workdir = demo.synthetic_workdir(str(tmp_path / "workdir"), frames, truth[1])
    workdir.dir("invert")  # "refined" latents at w_avg itself: rows 0-3 at distance 0
    w_avg = np.asarray(g.buffers["mapping"]["w_avg"])
    np.save(workdir.file("invert", "ws.npy"), np.broadcast_to(w_avg, (4, g.config.num_ws, g.config.w_dim)))
    argv = ["--generator", nets_dir["generator"], "--styleflow", nets_dir["styleflow"], "--e4e", nets_dir["e4e"],
            "--aligned", workdir.path, "--frames", "3", "--samples", "64", "--condition-steps", "5", "--json"]
    assert script.main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) == {"torgb_styles", "flow_prior", "w_avg_rows", "w_avg_rows_refined", "source_condition",
                           "pose_edit", "message"}
    assert report["w_avg_rows_refined"]["ratio_per_frame"] == [0.0, 0.0, 0.0]

    # the demo generator's affine biases are 1 (random init), so its ToRGB styles average about 1: the check
    # flags what would be a doubled +1 on real weights
    layers = report["torgb_styles"]["layers"]
    assert [r["layer"] for r in layers] == ["b4.torgb", "b8.torgb", "b16.torgb", "b32.torgb"]
    assert report["torgb_styles"]["verdict"].startswith("SUSPECT: ToRGB style means near 1")

    # 3 of the 4 synthetic frames (evenly spaced), e4e's W+; the identity is the most frontal of them (frame 0)
    assert len(report["w_avg_rows"]["ratio_per_frame"]) == 3
    assert report["w_avg_rows"]["source"] == "e4e W+ of 3 aligned frames"
    assert report["source_condition"]["identity"] == "e4e W+ of frame 0 of the 3 aligned frames"
    entries = report["source_condition"]["entries"]
    assert sorted(entries) == sorted(head_pose.condition_data()["names"])  # the JSON summary sorts keys
    for name, entry in entries.items():
        lo, hi = entry["data_range"]
        assert lo <= entry["value"] <= hi, name

    # dlib finds no face in the 32 px texture renders, and the report says so instead of a slope
    pose = report["pose_edit"]
    assert pose["faces_found"] == 0 and pose["renders"] == 5 and "yaw_slope" not in pose
    assert pose["verdict"] == ("dlib found no face in 5 of 5 renders (32 px): the sign and slope of the yaw/pitch "
                               "edits cannot be checked (random weights render no faces)")
    assert all(v is None for p in pose["landmark_pose_deg"] for v in p)
    assert np.isfinite(report["flow_prior"]["z_std"])


@pytest.mark.parametrize("argv, message", [
    (["--generator", "G", "--styleflow", "F"], "error: --e4e is required (see --help)"),
    (["--aligned", "/nonexistent/dir"], "error: --aligned /nonexistent/dir: no frames.npy there; give an encode "
                                        "work directory, an align/ folder or a frames.npy"),
])
def test_user_errors_are_one_line(script, nets_dir, capsys, argv, message):
    if "--generator" not in argv:
        argv = ["--generator", nets_dir["generator"], "--styleflow", nets_dir["styleflow"], "--e4e",
                nets_dir["e4e"]] + argv
    assert script.main(argv) == 2
    assert capsys.readouterr().err.strip() == message
