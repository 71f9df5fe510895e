"""The work directory's rules (stylejax/stages/README.md): a stage whose settings changed is recomputed with
every stage after it and nothing before it; a work directory belongs to one video; `--id-frame` past the end is
refused before anything runs.

One few-step encode of a 6-frame synthetic clip, then two reruns with one setting changed each (about 40 s of
CPU, mostly compilation).
"""
import os

import numpy as np
import pytest

import tiny_encoder
from stylejax import demo, pipeline
from stylejax.errors import PipelineError
from stylejax.optimize import Optimiser

pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")

FRAMES = 6
STAGES = ("invert", "select_id", "head_pose", "attributes")


@pytest.fixture(scope="module")
def clip():
    g, _, flow, _ = tiny_encoder.networks()
    truth = demo.ground_truth(g, flow, FRAMES)
    return truth, demo.synthesise(g, flow, *truth, 8)


def markers(workdir):
    """{stage: (marker mtime, signature)}."""
    out = {}
    for s in STAGES:
        p = workdir.file(s, "done.json")
        out[s] = (os.stat(p).st_mtime_ns, workdir.done(s)["signature"])
    return out


def encode(workdir, config, monkeypatch, id_frame=None):
    """Runs the encoder; returns the stages that optimised something, in order."""
    ran = []
    run = Optimiser.run

    def recording(opt, *args, **kwargs):
        ran.append(kwargs.get("stage"))
        return run(opt, *args, **kwargs)

    monkeypatch.setattr(Optimiser, "run", recording)
    enc, _ = pipeline.encode(workdir, tiny_encoder.nets(), config, id_frame=id_frame, log=lambda msg: None)
    monkeypatch.undo()
    return enc, ran


@pytest.fixture(scope="module")
def first(tmp_path_factory, clip):
    truth, frames = clip
    workdir = demo.synthetic_workdir(str(tmp_path_factory.mktemp("rules") / "workdir"), frames, truth[1])
    with pytest.MonkeyPatch.context() as mp:
        enc, ran = encode(workdir, tiny_encoder.few_steps_config(FRAMES), mp)
    assert ran == ["invert", "head_pose", "attributes"]
    return workdir, enc


def test_a_changed_setting_recomputes_its_stage_and_the_ones_after(first, monkeypatch):
    workdir, enc = first
    before = markers(workdir)
    config = tiny_encoder.few_steps_config(FRAMES)
    config.attributes.steps = 9
    _, ran = encode(workdir, config, monkeypatch)
    after = markers(workdir)
    assert ran == ["attributes"]
    assert {s: after[s] == before[s] for s in STAGES} == {"invert": True, "select_id": True, "head_pose": True,
                                                          "attributes": False}

    # the identity frame (select_id's setting, as --id-frame sets it): select_id and everything after it
    assert enc.settings["id_frame"] != 2
    before = after
    enc2, ran = encode(workdir, config, monkeypatch, id_frame=2)
    after = markers(workdir)
    assert ran == ["head_pose", "attributes"]
    assert {s: after[s] == before[s] for s in STAGES} == {"invert": True, "select_id": False, "head_pose": False,
                                                          "attributes": False}
    assert enc2.settings["id_frame"] == 2 and workdir.done("select_id")["frame"] == 2
    ws = np.load(workdir.file("invert", "ws.npy"))
    np.testing.assert_array_equal(enc2.id_latent, ws[2])


def test_id_frame_past_the_end_is_refused_before_any_stage(clip, tmp_path):
    truth, frames = clip
    workdir = demo.synthetic_workdir(str(tmp_path / "workdir"), frames, truth[1])
    with pytest.raises(PipelineError) as e:
        pipeline.encode(workdir, tiny_encoder.nets(), tiny_encoder.few_steps_config(FRAMES), id_frame=FRAMES,
                        out=str(tmp_path / "clip.enc"), log=lambda msg: None)
    assert str(e.value) == f"--id-frame {FRAMES} is out of range: the video has {FRAMES} frames (0..{FRAMES - 1})"
    assert sorted(os.listdir(workdir.path)) == ["align", "workdir.json"]  # nothing inverted
    assert not (tmp_path / "clip.enc").exists()


def test_a_work_directory_belongs_to_one_video(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"video a")
    b.write_bytes(b"video b")
    os.symlink(a, tmp_path / "a_link.mp4")
    path = str(tmp_path / "workdir")
    pipeline.Workdir(path, video=str(a))
    (tmp_path / "workdir" / "invert").mkdir()  # work of video a
    marker = (tmp_path / "workdir" / "workdir.json").read_bytes()
    pipeline.Workdir(path, video=str(tmp_path / "a_link.mp4"))  # the same video by another name
    pipeline.Workdir(path)  # no video given (a rerun from the aligned frames)
    with pytest.raises(PipelineError) as e:
        pipeline.Workdir(path, video=str(b))
    assert str(e.value) == (f"--workdir {os.path.realpath(path)} holds the run of {os.path.realpath(a)}, not "
                            f"{os.path.realpath(b)}; use a new --workdir for another video")
    assert (tmp_path / "workdir" / "workdir.json").read_bytes() == marker
    assert sorted(os.listdir(path)) == ["invert", "workdir.json"]
