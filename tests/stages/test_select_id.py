"""`select_id.choose`: which frame becomes the identity, and why (pure: losses and landmark poses in, frame out).

Near-frontal frames (|yaw| <= max_yaw and |pitch| <= max_pitch, bounds included) win by lowest inversion loss
even against lower-loss frames that are turned; without one, the frames within 5° of the most frontal one;
without any landmark pose, every frame. `--id-frame N` forces the frame, and one past the end is refused with
the video's frame range.
"""
import numpy as np
import pytest

from stylejax.errors import PipelineError, UserError
from stylejax.stages.select_id import choose

NAN = np.nan


def poses(*yaw_pitch):
    return np.array([[y, p, 0.0] for y, p in yaw_pitch], np.float32)


def test_lowest_loss_among_near_frontal_frames():
    loss = np.array([0.1, 0.01, 0.3, 0.2, 0.05])
    pose = poses((1, 1), (25, 0), (-3, 2), (9, -9), (0, 12))
    # frame 1 has the lowest loss but is turned 25°, frame 4 has pitch 12° > 10°: frame 0 of 0, 2, 3
    assert choose(loss, pose, 10.0, 10.0) == (0, "lowest loss among near-frontal frames")
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
    assert choose(loss, pose, 10.0, 10.0) == (1, "lowest loss among near-frontal frames")


def test_fallback_to_the_most_frontal_frames():
    """No frame within the bounds: the candidates are within 5° (of hypot(yaw, pitch)) of the most frontal."""
    loss = np.array([0.3, 0.2, 0.1, 0.05, 0.01])
    pose = poses((12, 0), (0, 16), (15, 9), (NAN, NAN), (40, 0))
    # most frontal: frame 0 at 12°; frame 1 at 16° is within 5°, frame 2 at 17.5° is not, 3 is unknown
    assert choose(loss, pose, 10.0, 10.0) == (1, "lowest loss among the most frontal frames")
    # a frame with only half a pose is unknown too, whatever its loss
    loss, pose = np.append(loss, 0.001), np.concatenate([pose, poses((1, NAN))])
    assert choose(loss, pose, 10.0, 10.0) == (1, "lowest loss among the most frontal frames")


def test_fallback_to_every_frame_without_landmark_poses():
    loss = np.array([0.3, 0.2, 0.4])
    pose = np.full((3, 3), NAN, np.float32)
    assert choose(loss, pose, 10.0, 10.0) == (1, "lowest loss (no landmark pose)")


def test_forced_frame_and_its_range():
    loss = np.array([0.3, 0.2, 0.1, 0.4, 0.5])
    pose = poses((0, 0), (0, 0), (0, 0), (40, 0), (0, 0))
    assert choose(loss, pose, 10.0, 10.0, forced=3) == (3, "forced")  # even a turned, high-loss frame
    assert choose(loss, pose, 10.0, 10.0, forced=0) == (0, "forced")
    assert choose(loss, pose, 10.0, 10.0, forced=4) == (4, "forced")
    with pytest.raises(PipelineError) as e:
        choose(loss, pose, 10.0, 10.0, forced=5)
    assert isinstance(e.value, UserError)  # the CLI prints it as one line with exit status 2
    assert str(e.value) == "--id-frame 5 is out of range: the video has 5 frames (0..4)"
