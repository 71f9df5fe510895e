"""The identity frame (`select_id`): near-frontal, then a neutral expression (closed mouth, open eyes) from the
landmarks, then the lowest inversion loss; the choice and its scores are recorded in select_id/id.json.

`choose` is pure (losses, landmark poses and expression scores in, frame out). Near-frontal frames (|yaw| <=
max_yaw and |pitch| <= max_pitch, bounds included) win against lower-loss frames that are turned; without one,
the frames within 5° of the most frontal one; without any landmark pose, every frame. `--id-frame N` forces the
frame, and one past the end is refused with the video's frame range.
"""
import types

import ml_collections
import numpy as np
import pytest

from stylejax import demo, pipeline
from stylejax.errors import PipelineError, UserError
from stylejax.io import atomic
from stylejax.stages import select_id
from stylejax.stages.select_id import choose

NAN = np.nan


def poses(*yaw_pitch):
    return np.array([[y, p, 0.0] for y, p in yaw_pitch], np.float32)


def test_lowest_loss_among_near_frontal_frames():
    loss = np.array([0.1, 0.01, 0.3, 0.2, 0.05])
    pose = poses((1, 1), (25, 0), (-3, 2), (9, -9), (0, 12))
    # frame 1 has the lowest loss but is turned 25°, frame 4 has pitch 12° > 10°: frame 0 of 0, 2, 3
    assert choose(loss, pose, 10.0, 10.0)[:2] == (0, "lowest inversion loss among the 3 near-frontal frames")
    loss[3] = 0.02
    assert choose(loss, pose, 10.0, 10.0)[0] == 3


def test_thresholds_include_their_bound_and_are_separate_for_yaw_and_pitch():
    loss = np.array([0.5, 0.1, 0.2])
    pose = poses((0, 0), (10, 0), (0, 10))
    assert choose(loss, pose, 10.0, 10.0)[0] == 1  # |yaw| = 10 is near-frontal
    assert choose(loss, pose, 9.9, 10.0)[0] == 2  # yaw bound only excludes frame 1
    assert choose(loss, pose, 10.0, 9.9)[0] == 1  # pitch bound only excludes frame 2
    assert choose(loss, pose, 9.9, 9.9)[0] == 0
    # negative angles count by their size
    assert choose(loss, -pose, 9.9, 10.0)[0] == 2


def test_frames_without_a_landmark_pose_are_not_frontal():
    loss = np.array([0.01, 0.2, 0.1])
    pose = poses((NAN, NAN), (2, 2), (1, NAN))
    assert choose(loss, pose, 10.0, 10.0)[:2] == (1, "lowest inversion loss among the 1 near-frontal frame")


def test_fallback_to_the_most_frontal_frames():
    """No frame within the bounds: the candidates are within 5° (of hypot(yaw, pitch)) of the most frontal."""
    loss = np.array([0.3, 0.2, 0.1, 0.05, 0.01])
    pose = poses((12, 0), (0, 16), (15, 9), (NAN, NAN), (40, 0))
    # most frontal: frame 0 at 12°; frame 1 at 16° is within 5°, frame 2 at 17.5° is not, 3 is unknown
    most_frontal = "lowest inversion loss among the 2 most frontal frames (none within the near-frontal bounds)"
    assert choose(loss, pose, 10.0, 10.0)[:2] == (1, most_frontal)
    # a frame with only half a pose is unknown too, whatever its loss
    loss, pose = np.append(loss, 0.001), np.concatenate([pose, poses((1, NAN))])
    assert choose(loss, pose, 10.0, 10.0)[:2] == (1, most_frontal)


def test_fallback_to_every_frame_without_landmark_poses():
    loss = np.array([0.3, 0.2, 0.4])
    pose = np.full((3, 3), NAN, np.float32)
    assert choose(loss, pose, 10.0, 10.0)[:2] == (1, "lowest inversion loss among all 3 frames (no landmark pose)")


def test_forced_frame_and_its_range():
    loss = np.array([0.3, 0.2, 0.1, 0.4, 0.5])
    pose = poses((0, 0), (0, 0), (0, 0), (40, 0), (0, 0))
    assert choose(loss, pose, 10.0, 10.0, forced=3) == (3, "forced", {})  # even a turned, high-loss frame
    assert choose(loss, pose, 10.0, 10.0, forced=0) == (0, "forced", {})
    assert choose(loss, pose, 10.0, 10.0, forced=4) == (4, "forced", {})
    with pytest.raises(PipelineError) as e:
        choose(loss, pose, 10.0, 10.0, forced=5)
    assert isinstance(e.value, UserError)  # the CLI prints it as one line with exit status 2
    assert str(e.value) == "--id-frame 5 is out of range: the video has 5 frames (0..4)"


# ---------------------------------------------------------------------------------------- the expression

def face(num_frames, mouth_gap=0.0, ear=0.3, iod=60.0):
    """dlib-68 landmarks [T, 68, 2] of a frontal face: eye centres `iod` px apart, eyes whose aspect ratio is
    `ear` (scalar or [T]), inner lips `mouth_gap` px apart (scalar or [T]); the other points are the generic
    face of `demo.synthetic_landmarks`."""
    lm = demo.synthetic_landmarks(np.zeros((num_frames, 3)))
    ear = np.broadcast_to(np.asarray(ear, np.float64), (num_frames,))
    gap = np.broadcast_to(np.asarray(mouth_gap, np.float64), (num_frames,))
    width = 20.0  # eye corner to corner
    for t in range(num_frames):
        for first, cx in ((36, 128.0 - iod / 2), (42, 128.0 + iod / 2)):
            h = ear[t] * width  # (|p1-p5| + |p2-p4|) / (2 |p0-p3|) = 2h / (2 width)
            lm[t, first:first + 6] = [(cx - 10, 100), (cx - 4, 100 - h / 2), (cx + 4, 100 - h / 2), (cx + 10, 100),
                                      (cx + 4, 100 + h / 2), (cx - 4, 100 + h / 2)]
        lm[t, 61:64, 0] = lm[t, 65:68, 0][::-1] = [120.0, 128.0, 136.0]  # 61-67, 62-66, 63-65 share x
        lm[t, 61:64, 1] = 160.0 - gap[t] / 2
        lm[t, 65:68, 1] = 160.0 + gap[t] / 2
    return lm


def test_expression_scores():
    ear = np.array([0.3, 0.3, 0.15, 0.3, 0.36])  # frame 2 half closed, frame 4 wider than usual
    gap = np.array([0.0, 12.0, 0.0, 3.0, 0.0])
    scores = select_id.expression_scores(face(5, gap, ear, iod=60.0))
    # mouth opening = inner-lip gap / eye-centre distance; eye closure = 1 - EAR / median EAR (0.3), at least 0
    np.testing.assert_allclose(scores[:, 0], gap / 60.0, atol=1e-6)
    np.testing.assert_allclose(scores[:, 1], [0.0, 0.0, 0.5, 0.0, 0.0], atol=1e-6)
    # degenerate eyes (all six points at one place) are unknown, not a blink
    lm = face(3)
    lm[1, 36:48] = lm[1, 36]
    assert np.isnan(select_id.expression_scores(lm)[1]).all()


def test_choose_prefers_a_neutral_frontal_frame():
    loss = np.array([0.01, 0.05, 0.02, 0.04, 0.001])
    pose = np.zeros((5, 3))
    pose[4, 0] = 30.0  # frame 4: the lowest loss but turned away
    # mouth opening, eye closure: 0 talks, 1 and 3 neutral, 2 blinks
    expression = np.array([[0.3, 0.0], [0.01, 0.0], [0.0, 0.9], [0.02, 0.03], [0.0, 0.0]])
    frame, reason, details = select_id.choose(loss, pose, 10.0, 10.0, expression=expression, neutral_margin=0.05)
    # frames 1 and 3 are within 0.05 of the most neutral (0.01): the lower loss of the two
    assert frame == 3 and details == {"candidates": 4, "neutral_candidates": 2, "neutral_margin": 0.05}
    assert reason == ("lowest inversion loss among the 2 most neutral (mouth opening + eye closure within 0.05 "
                      "of the lowest) of the 4 near-frontal frames")
    # without the expression: the lowest loss among the near-frontal frames (the talking frame)
    assert select_id.choose(loss, pose, 10.0, 10.0, expression=expression)[0] == 0
    # frames whose expression is unknown are not neutral candidates while others are known...
    unknown = expression.copy()
    unknown[0] = np.nan
    assert select_id.choose(loss, pose, 10.0, 10.0, expression=unknown, neutral_margin=0.05)[0] == 3
    # ...and when none is known the loss decides, and the reason says why
    frame, reason, _ = select_id.choose(loss, pose, 10.0, 10.0, expression=np.full((5, 2), np.nan),
                                        neutral_margin=0.05)
    assert (frame, reason) == (0, "lowest inversion loss among the 4 near-frontal frames; no eye or lip landmarks "
                                  "for the expression")
    assert select_id.choose(loss, pose, 10.0, 10.0, forced=2, expression=expression,
                            neutral_margin=0.05) == (2, "forced", {})


def test_run_records_the_choice(tmp_path):
    """The stage on a work directory: a talking frame with the lowest loss loses to a neutral one, and id.json
    carries the reason and the chosen frame's scores."""
    t = 4
    frames = np.zeros((t, 8, 8, 3), np.uint8)
    quad = np.tile(np.array([[0, 0], [0, 8], [8, 8], [8, 0]], np.float64) - 0.5, (t, 1, 1))
    workdir = pipeline.Workdir(str(tmp_path / "workdir"))
    pipeline.write_aligned(workdir, frames, quad=quad, frame_size=np.array([256, 256], np.int32),
                           landmarks=face(t, mouth_gap=[18.0, 0.0, 0.0, 6.0]).astype(np.float32))
    workdir.dir("invert")
    np.save(workdir.file("invert", "loss.npy"), np.array([0.01, 0.03, 0.02, 0.005], np.float32))
    np.save(workdir.file("invert", "ws.npy"), np.arange(t * 2 * 3, dtype=np.float32).reshape(t, 2, 3))
    workdir.mark_done("invert", "sig")
    config = ml_collections.ConfigDict({"select_id": {"max_yaw_deg": 10.0, "max_pitch_deg": 10.0, "frame": -1,
                                                      "prefer_neutral": True, "neutral_margin": 0.05},
                                        "loss_size": 8, "dtype": "float32"})
    nets = types.SimpleNamespace(generator=types.SimpleNamespace(config=types.SimpleNamespace(resolution=8)))
    ctx = pipeline.Context(workdir, nets, config, mesh=None, chunk=4, microbatch=0, log=lambda msg: None)
    select_id.run(ctx)
    ident = atomic.read_json(workdir.file("select_id", "id.json"))
    # mouth openings 0.3, 0, 0, 0.1: frames 1 and 2 are neutral, frame 2 has the lower loss
    assert ident["frame"] == 2 and ident["neutral_candidates"] == 2 and ident["candidates"] == 4
    assert ident["expression"] == pytest.approx({"mouth_opening": 0.0, "eye_closure": 0.0, "score": 0.0}, abs=1e-6)
    assert ident["reason"].startswith("lowest inversion loss among the 2 most neutral")
    np.testing.assert_array_equal(np.load(workdir.file("select_id", "id_latent.npy")), np.load(
        workdir.file("invert", "ws.npy"))[2])
    assert np.load(workdir.file("select_id", "expression.npy"))[0, 0] == pytest.approx(0.3, abs=1e-6)
