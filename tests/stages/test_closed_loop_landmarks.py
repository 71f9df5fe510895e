"""The closed loop with landmarks that lie: yaw and pitch must come from the images, not from the landmarks.

In the demo's closed loop (tests/stages/test_encoder.py) the landmarks are those of the true pose, so the
landmark initialisation is already within a fraction of a degree and the pose bound would hold if `head_pose`
did nothing. Here the landmarks are those of a wrong pose: 0.8 x the true yaw and pitch, plus 4° of yaw and -3°
of pitch, plus per-frame noise of 1.5° (a seeded draw), so the encoder starts 4-5° from the answer.

The clip (tiny networks, 6 frames, one encode: about 70 s of CPU) has frame 0 as the identity (forced with
`id_frame`, as `--id-frame 0`), frames 1-2 with head pose only and frames 3-5 with head pose and expression
(the demo's StyleSpace offsets). `head_pose` alone models no expression, so it is held to the bound on frames
0-2; the joint refinement of pose and offsets in `attributes` on every frame. `pytest -s` prints the errors.
"""
import numpy as np
import pytest

import tiny_encoder
from stylejax import demo, pipeline

pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")

FRAMES = 6
YAW = [0.0, 9.0, -7.0, 6.0, -9.0, 3.0]
PITCH = [0.0, 5.0, -4.0, -3.0, 6.0, 2.0]
POSE_ONLY = 3  # frames 0-2: no expression
# The closed loop's bound (tests/stages/test_encoder.py). Its budget here: the landmark offset also moves the
# identity frame's StyleFlow source condition to (7°, -3°) from the (0, 0) the clip was drawn with, and through
# the flow that alone shifts the pose whose latents best match the clip's by up to 0.19° (argmin over yaw, pitch
# of the rows-0-3 latent distance) and the image fit by more (measured 0.58° head_pose, 0.33° joint).
BOUND_DEG = 1.0


def wrong_landmark_pose(pose):
    rng = np.random.RandomState(3)
    wrong = np.array(pose, np.float64)
    wrong[:, :2] = 0.8 * wrong[:, :2] + [4.0, -3.0] + rng.normal(0.0, 1.5, (len(pose), 2))
    return wrong


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    import json

    d = tmp_path_factory.mktemp("wrong_landmarks")
    g, _, flow, _ = tiny_encoder.networks()
    id_latent, pose, offsets, channels = demo.ground_truth(g, flow, FRAMES)
    pose, offsets = np.array(pose), np.array(offsets)
    pose[:, 0], pose[:, 1] = YAW, PITCH
    offsets[:POSE_ONLY] = 0.0
    assert np.abs(offsets[POSE_ONLY:]).max(axis=1).min() > 0  # the other frames do have an expression
    config = demo.load_config(demo.TINY_CONFIG)
    config.chunk_size = FRAMES
    config.microbatch = 0
    frames = demo.synthesise(g, flow, id_latent, pose, offsets, channels, int(config.head_pose.rk4_steps))
    (d / "channels.json").write_text(json.dumps({"channels": channels}))
    config.attributes.channels = str(d / "channels.json")
    workdir = demo.synthetic_workdir(str(d / "workdir"), frames, wrong_landmark_pose(pose))
    enc, _ = pipeline.encode(workdir, tiny_encoder.nets(), config, id_frame=0, log=lambda msg: None)
    return {"truth": pose[:, :2], "workdir": workdir, "enc": enc}


def test_the_search_starts_away_from_the_answer(encoded):
    lm = np.asarray(encoded["workdir"].load("select_id", "landmark_pose.npy"))[:, :2]
    start = lm - lm[0]  # head_pose starts from the landmark pose relative to the identity frame
    err = np.abs(start - encoded["truth"])
    print(f"landmark start: max |error| yaw {err[:, 0].max():.2f}°, pitch {err[:, 1].max():.2f}°")
    assert err.max() > 4.0 and (err.max(axis=1) > 2 * BOUND_DEG).sum() >= 3, err


def test_head_pose_recovers_yaw_and_pitch_from_the_images(encoded):
    pose = np.asarray(encoded["workdir"].load("head_pose", "pose.npy"))[:, :2]
    err = np.abs(pose - encoded["truth"])[:POSE_ONLY]
    print(f"head_pose (frames 0-2): max |error| yaw {err[:, 0].max():.2f}°, pitch {err[:, 1].max():.2f}°")
    assert err.max() < BOUND_DEG, err


def test_joint_refinement_recovers_yaw_and_pitch_on_every_frame(encoded):
    enc = encoded["enc"]
    assert enc.settings["id_frame"] == 0
    err = np.abs(enc.pose_deg[:, :2] - encoded["truth"])
    print(f"joint refinement (all frames): max |error| yaw {err[:, 0].max():.2f}°, pitch {err[:, 1].max():.2f}°")
    assert err.max() < BOUND_DEG, err
