"""The head_pose stage's conventions: the identity's StyleFlow source condition (the flow's full likelihood,
started from StyleFlow's data mean, kept inside the data's range) and the roll of crops that kept it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_encoder
from stylejax import demo
from stylejax.errors import UserError
from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX, StyleFlow, StyleFlowConfig
from stylejax.stages import head_pose

FREE = np.array([i not in (YAW_INDEX, PITCH_INDEX) for i in range(17)])


@pytest.fixture(scope="module")
def fitted():
    """The demo's networks with the flow fitted to the generator's W; an identity W+ whose 8 rows are drawn
    independently from the flow under a known non-zero condition."""
    g, _, flow, _ = tiny_encoder.networks()
    flow = demo.fit_flow_to_w(flow, g)
    cond = demo.true_condition()
    z = 0.5 * np.random.RandomState(1).randn(1, g.config.num_ws, g.config.w_dim).astype(np.float32)
    id_latent = np.asarray(flow.reverse(jnp.asarray(z), jnp.asarray(cond)[None]))[0]
    return g, flow, cond, id_latent


def log_posterior(flow, ws, cond, data, rk4_steps=8):
    """log p(w | c) + log p(c) (up to a constant) from the flow's density and the data's Gaussian prior: the
    sum over the W+ rows, computed here from `StyleFlow.log_likelihood` (tests/nets/test_styleflow_likelihood.py
    checks it against slogdet and the density's integral), not through the stage's objective."""
    ll = flow.log_likelihood(jnp.asarray(ws)[None], jnp.asarray(cond, jnp.float32)[None], rk4_steps)
    return jnp.sum(ll) - 0.5 * jnp.sum(jnp.where(FREE, jnp.square((cond - data["mean"]) / data["std"]), 0.0))


def range_error(cond, truth, data):
    return (np.abs(cond - truth) / (data["max"] - data["min"]))[FREE]


def test_source_condition_maximises_the_posterior_inside_the_data_range(fitted):
    g, flow, truth, id_latent = fitted
    data = head_pose.condition_data()
    found, info = head_pose.source_condition(flow, id_latent, 1.5, -2.0, "map", data, steps=100)
    # pose entries are the landmark values; every other entry inside StyleFlow's data range
    assert (found[YAW_INDEX], found[PITCH_INDEX]) == (1.5, -2.0)
    assert np.all((found >= data["min"]) & (found <= data["max"])), found
    # the optimiser improved log p(w | c) + log p(c) over its start, the data mean, and reached at least the
    # posterior of the condition that drew the latent
    start = np.where(FREE, data["mean"], found)
    assert log_posterior(flow, id_latent, found, data) > log_posterior(flow, id_latent, start, data) + 1.0
    assert log_posterior(flow, id_latent, found, data) >= log_posterior(flow, id_latent, np.where(FREE, truth, found),
                                                                        data)
    assert info["nats_per_dim"] > info["nats_per_dim_at_data_mean"]
    # against the condition that drew the latent: zeros (the old default, far outside the data for the first
    # lighting coefficient and age) is far off; the posterior mode is closer than the data mean it started from
    # (measured median |error| 0.15 of the range for map, 0.16 for the mean, 0.25 for zeros: 8 rows of 32
    # dimensions identify the strongly conditioned entries, the prior keeps the weak ones near the mean)
    zeros = head_pose.source_condition(flow, id_latent, 1.5, -2.0, "zeros", data)[0]
    err_map, err_mean, err_zeros = (np.median(range_error(c, truth, data)) for c in (found, start, zeros))
    assert err_map < err_mean < err_zeros, (err_map, err_mean, err_zeros)
    age = data["names"].index("age_years")
    assert abs(found[age] - truth[age]) < abs(start[age] - truth[age]) and found[age] > 5.0


def test_source_condition_is_a_stationary_point_of_the_full_posterior():
    """A small flow whose condition matters as much as the latent (hyper-net weights scaled by 1 / the data's
    std): the condition found is where the gradient of log p(w | c) + log p(c), in the bounded parameters
    u (c = min + (max - min) sigmoid(u)), vanishes. This depends on the log-determinant: minimising |z|²
    alone stops where this gradient is ~0.5 (measured), the data mean has ~12."""
    data = head_pose.condition_data()
    cfg = StyleFlowConfig(dim=6, hidden_dims=(16, 16))
    flow = StyleFlow.random(cfg, jax.random.PRNGKey(2))
    scale = jnp.concatenate([jnp.ones(1), 1.0 / jnp.asarray(data["std"])])[:, None]  # rows: [t, condition]
    odenet = {name: {**layer, "hyper_gate": {**layer["hyper_gate"], "kernel": layer["hyper_gate"]["kernel"] * scale},
                     "hyper_bias": {"kernel": layer["hyper_bias"]["kernel"] * scale}}
              for name, layer in flow.params["odenet"].items()}
    flow = StyleFlow(cfg, {**flow.params, "odenet": odenet})
    truth = np.clip(data["mean"] + data["std"] * np.random.RandomState(3).randn(17), data["min"], data["max"])
    truth = np.where(FREE, truth, [1.5 if i == YAW_INDEX else -2.0 for i in range(17)]).astype(np.float32)
    z = np.random.RandomState(4).randn(1, 8, 6).astype(np.float32)
    ws = np.asarray(flow.reverse(jnp.asarray(z), jnp.asarray(truth)[None], steps=16))[0]
    found, _ = head_pose.source_condition(flow, ws, 1.5, -2.0, "map", data, steps=200, rk4_steps=16)
    lo, hi = data["min"], data["max"]

    def grad_u(c):
        s = (c - lo) / (hi - lo)
        grad = np.asarray(jax.grad(lambda c: log_posterior(flow, ws, c, data, 16))(jnp.asarray(c)))
        return np.where(FREE, grad * (hi - lo) * s * (1 - s), 0.0)

    # measured 0.008 after 200 Adam steps (12 at the start): 0.05 leaves room for other CPUs' rounding
    assert np.abs(grad_u(data["mean"])).max() > 5.0
    assert np.abs(grad_u(found)).max() < 0.05, grad_u(found)


def test_source_condition_data_file_errors(tmp_path):
    bad = tmp_path / "cond.json"
    bad.write_text('{"names": ["a"], "mean": [0], "std": [1], "min": [0], "max": [1]}')
    with pytest.raises(UserError, match="must each have 17 entries"):
        head_pose.condition_data(str(bad))
    with pytest.raises(UserError, match="must be 'map', 'mean' or 'zeros'"):
        head_pose.source_condition(None, np.zeros((2, 4)), 0.0, 0.0, "max", head_pose.condition_data())


def test_roll_of_crops_that_kept_it_is_not_reapplied():
    roll = np.array([2.0, 5.0, -1.0], np.float32)
    level, note = head_pose.relative_roll({"roll_deg": roll, "keep_roll": np.bool_(False)}, 3, id_frame=1)
    np.testing.assert_array_equal(level, roll - 5.0)
    assert note == "re-applied at render time"
    kept, note = head_pose.relative_roll({"roll_deg": roll, "keep_roll": np.bool_(True)}, 3, id_frame=1)
    np.testing.assert_array_equal(kept, np.zeros(3))  # the crops show the roll: rendering it again doubles it
    assert note == "kept in the crops (keep_roll): not re-applied"
    assert head_pose.relative_roll({}, 3, 0)[1] == "no roll in the transforms: 0"


def test_closed_loop_with_a_non_zero_true_condition(tmp_path):
    """The demo's closed loop (configs/encode_tiny.py, 8 frames) on a clip made with a condition drawn from
    StyleFlow's data and an identity drawn from the (W-fitted) flow under it, encoded with `map`."""
    import json

    from stylejax import pipeline
    from stylejax.io.encoding import load_encoding

    g, e4e, flow, lp = tiny_encoder.networks()
    flow = demo.fit_flow_to_w(flow, g)
    truth = demo.true_condition()
    id_true, pose, offsets, channels = demo.ground_truth(g, flow, 8, condition=truth)
    frames = demo.synthesise(g, flow, id_true, pose, offsets, channels, 8, truth)
    config = demo.load_config(demo.TINY_CONFIG)
    config.chunk_size, config.head_pose.condition = 8, "map"
    (tmp_path / "channels.json").write_text(json.dumps({"channels": channels}))
    config.attributes.channels = str(tmp_path / "channels.json")
    workdir = demo.synthetic_workdir(str(tmp_path / "workdir"), frames, pose)
    nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp).check()
    _, summary = pipeline.encode(workdir, nets, config, out=str(tmp_path / "clip.enc"), log=lambda msg: None)
    enc = load_encoding(str(tmp_path / "clip.enc"))
    data = head_pose.condition_data()
    found = np.load(workdir.file("head_pose", "cond_src.npy"))
    assert json.load(open(workdir.file("head_pose", "condition.json")))["method"] == "map"
    # frame 0 is the only one within the tiny config's 2° of frontal; the demo's lids and lips give it a score
    assert summary["id_frame"] == 0 and summary["id_frame_reason"].startswith("lowest inversion loss among the 1 "
                                                                              "most neutral"), summary
    # The condition: one 32-d latent (8 equal rows) identifies the strongly conditioned entries, the prior keeps
    # the rest near the data mean. Measured (16 frames) median |error| 0.072 of each entry's range for map,
    # 0.088 for the data mean, 0.196 for zeros (the old 'map', from zeros without the log-determinant and
    # unbounded, gave 4.1).
    err = np.median(range_error(found, truth, data))
    assert err < 0.12 < np.median(range_error(np.zeros(17), truth, data)), err
    # Re-synthesis and pose: the joint refinement absorbs most of what the condition gets wrong (measured on 16
    # frames with map / zeros / mean: PSNR 52.2 / 52.1 / 51.9 dB, max yaw error 0.97 / 1.28 / 1.11°, pitch 0.99 /
    # 0.82 / 1.08°; docs/encoder.md); bounds 45 dB (the demo's) and 2°, 1.5x the worst seen
    assert summary["psnr_db_min"] > 45.0, summary
    err_pose = np.abs(enc.pose_deg[:, :2] - pose[:, :2])  # frame 0 is the identity: truth relative to it
    assert err_pose.max() < 2.0, err_pose


def test_a_slow_condition_search_is_announced_on_cpu_only():
    """The exact log-determinant at StyleFlow's size takes ~70 s a step on CPU: the stage says so, once, and
    names the setting; nothing on accelerators, with probes, for small latents or without a search."""
    line = head_pose.slow_condition_warning("map", 0, 512, "cpu")
    assert line.startswith("warning: [head_pose]") and "--config.head_pose.condition_probes=16" in line
    assert head_pose.slow_condition_warning("map", 0, 512, "gpu") is None
    assert head_pose.slow_condition_warning("map", 16, 512, "cpu") is None
    assert head_pose.slow_condition_warning("map", 0, 32, "cpu") is None
    assert head_pose.slow_condition_warning("mean", 0, 512, "cpu") is None
