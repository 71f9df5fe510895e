"""head_pose's landmark -> StyleFlow factors measured on renders (stylejax/stages/pose_calibration.py).

The decision logic runs on real faces: a stand-in renderer answers each StyleFlow edit with a frame of the
fixture clip 8775004 (or its mirror image, whose yaw is the frame's negated) chosen so that the landmark pose
rises with the edit ("+") or falls with it ("-"), and the calibration must find that sign, per axis.
"""
import os

import numpy as np
import pytest

from conftest import FIXTURES
from stylejax.stages import pose_calibration as pc

# Frames of 8775004_aligned.mp4 and their landmark (yaw, pitch) in degrees, measured once with
# `stylejax.align.stage.track_landmarks` + `estimate_head_pose` on the 1024² frames: the nominal poses the
# stand-in stands for. Frame 93 is the identity (edit 0 on both axes).
IDENTITY = 93                                              # (1.3, 0.3)
YAW_FRAMES = ((15, True), (9, True), (93, False), (9, False), (15, False))   # (frame, mirrored): -9.2 .. 9.2
YAW_NOMINAL = (-9.2, -4.5, 1.3, 4.5, 9.2)
PITCH_FRAMES = (75, 54, 93, 45, 12)                        # pitch -5.5, -1.7, 0.3, 3.8, 6.0
PITCH_NOMINAL = (-5.5, -1.7, 0.3, 3.8, 6.0)
SIZE = 256  # the stand-in renders at 256² (measure_pose scales up to 512 for dlib)
# dlib is not exactly mirror-symmetric or scale-invariant: the mirror of frame 9 measures -3.0° against the
# frame's 4.5°, the other copies within 0.7° of the 1024² values
TOLERANCE_DEG = 2.0


@pytest.fixture(scope="module")
def faces():
    import cv2

    from stylejax.io.video import iter_frames

    if not os.path.isdir(FIXTURES):
        pytest.skip("../shared/fixtures is absent")
    wanted = {IDENTITY} | {f for f, _ in YAW_FRAMES} | set(PITCH_FRAMES)
    out = {}
    for t, frame in enumerate(iter_frames(os.path.join(FIXTURES, "8775004_aligned.mp4"))):
        if t in wanted:
            out[t] = cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return out


def stand_in(faces, yaw_order, pitch_order):
    """render(yaw [N], pitch [N]) -> fixture faces: edit k of an axis gets the k-th frame of the axis, in the
    given order ("+": rising landmark pose, "-": falling); no edit gets the identity frame."""
    def frame(spec):
        t, mirrored = spec
        return faces[t][:, ::-1] if mirrored else faces[t]

    def render(yaw, pitch):
        out = []
        for y, p in zip(np.asarray(yaw), np.asarray(pitch)):
            if y == 0 and p == 0:
                out.append(faces[IDENTITY])
            elif p == 0:
                k = pc.YAW_EDITS.index(float(y))
                out.append(frame(YAW_FRAMES[k if yaw_order == "+" else len(YAW_FRAMES) - 1 - k]))
            else:
                k = pc.PITCH_EDITS.index(float(p))
                out.append(faces[PITCH_FRAMES[k if pitch_order == "+" else len(PITCH_FRAMES) - 1 - k]])
        return np.stack(out)
    return render


def slope_of(edits, nominal):
    return np.polyfit(edits, nominal, 1)[0]


@pytest.mark.parametrize("orders", [("+", "+"), ("-", "-"), ("+", "-"), ("-", "+")])
def test_signs_and_slopes_follow_the_faces(faces, orders):
    record = pc.calibrate(stand_in(faces, *orders))
    assert record["method"] == "measured"
    for axis, order, edits, nominal in (("yaw", orders[0], pc.YAW_EDITS, YAW_NOMINAL),
                                        ("pitch", orders[1], pc.PITCH_EDITS, PITCH_NOMINAL)):
        fit = record[axis]
        assert fit["source"] == "measured", fit
        sign = 1.0 if order == "+" else -1.0
        assert np.sign(record[f"{axis}_factor"]) == sign, fit
        # slope: the nominal poses' spread over the edits (0.46 for yaw, 0.57 for pitch). The 256² copies (and
        # the mirror images) measure within TOLERANCE_DEG of their nominal values (below); that much on each of
        # five points at -2h, -h, 0, h, 2h moves the least-squares slope by at most 6h/(10h²)·e = 2.4·e/span
        expected = sign * slope_of(edits, nominal)
        assert fit["slope"] == pytest.approx(expected, abs=2.4 * TOLERANCE_DEG / (edits[-1] - edits[0])), fit
        measured = np.array(fit["measured_deg"]) if order == "+" else np.array(fit["measured_deg"])[::-1]
        assert np.abs(measured - np.array(nominal)).max() < TOLERANCE_DEG, measured
        assert record[f"{axis}_factor"] == pytest.approx(1.0 / fit["slope"])
        assert fit["r2"] > 0.9, fit
    assert pc.warnings(record) == []


def test_mirror_images_measure_the_opposite_yaw(faces):
    # what the stand-in relies on: the mirror image of a face has the negated landmark yaw and the same pitch
    for t in (9, 15):
        yaw, pitch = pc.measure_pose(faces[t])
        yaw_m, pitch_m = pc.measure_pose(faces[t][:, ::-1])
        assert abs(yaw) > 3 and yaw_m == pytest.approx(-yaw, abs=TOLERANCE_DEG)
        assert pitch_m == pytest.approx(pitch, abs=TOLERANCE_DEG)


def test_no_face_falls_back_to_plus_one_with_a_warning():
    rng = np.random.RandomState(0)
    calls = []

    def noise(yaw, pitch):
        calls.append(len(yaw))
        return rng.randint(0, 256, (len(yaw), 64, 64, 3)).astype(np.uint8)

    record = pc.calibrate(noise)
    assert (record["method"], record["yaw_factor"], record["pitch_factor"]) == ("fallback", 1.0, 1.0)
    assert calls == [1]  # only the identity was drawn: no face there, no edits rendered
    assert pc.warnings(record) == ["warning: landmark -> StyleFlow pose taken as +1, 1:1 for yaw and pitch: no face "
                                   "found in the render of the identity (random weights?)"]


def test_an_axis_that_cannot_decide_falls_back_alone(faces):
    render = stand_in(faces, "-", "+")

    def flat_pitch(yaw, pitch):  # every pitch edit draws the identity: the pitch line is flat
        images = render(yaw, np.zeros_like(pitch))
        return images

    record = pc.calibrate(flat_pitch)
    assert record["method"] == "measured"
    assert record["yaw"]["source"] == "measured" and record["yaw_factor"] < 0
    assert record["pitch"]["source"] == "fallback" and record["pitch_factor"] == 1.0
    assert "landmark deg per StyleFlow deg is too flat to decide" in record["pitch"]["reason"]
    assert pc.warnings(record) == ["warning: landmark -> StyleFlow pitch taken as +1, 1:1: "
                                   + record["pitch"]["reason"]]


def test_configured_factors_are_used_as_given():
    def never(yaw, pitch):
        raise AssertionError("nothing is rendered when both factors are configured")

    record = pc.calibrate(never, configured=(-1.0, 0.5))
    assert (record["method"], record["yaw_factor"], record["pitch_factor"]) == ("config", -1.0, 0.5)
    assert pc.parse_factor("auto", "yaw_sign") is None and pc.parse_factor("-1", "yaw_sign") == -1.0
    with pytest.raises(pc.PipelineError) as e:
        pc.parse_factor("0", "pitch_sign")
    assert str(e.value) == ("--config.head_pose.pitch_sign must be 'auto' or a non-zero number (landmark degrees -> "
                            "StyleFlow degrees), got '0'")
