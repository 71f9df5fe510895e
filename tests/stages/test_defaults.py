"""The settings a user runs (configs/encode.py), each exercised: W+ inversion, the default channel file at 1024,
eye/mouth weighting, the flow's maximum-likelihood source condition ("map") and the ArcFace identity loss.

The tests of the closed loop use configs/encode_tiny.py, which switches several of these off (W inversion, the
"zeros" condition, no weighting) because the tiny demo clip is made from a W latent. Here: one encode of a
4-frame synthetic clip with configs/encode.py as it is, except fewer steps and an ArcFace network with
`id_weight` 0.1 (about 40 s of CPU); unit checks of each default's behaviour; the default channels' effect on
a full-size generator with `--slow`.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_encoder
from conftest import DATA, REPO
from stylejax import demo, pipeline
from stylejax.stages import attributes, invert

pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")

FRAMES = 4


def user_config():
    return demo.load_config(os.path.join(REPO, "configs", "encode.py"))


def test_the_defaults_exercised_here():
    c = user_config()
    assert (c.invert.space, c.attributes.channels, c.head_pose.condition) == ("w+", "default", "map")
    assert c.attributes.eye_weight > 0 and c.attributes.mouth_weight > 0


@pytest.fixture(scope="module")
def arcface_net():
    from convert import arcface as convert_arcface
    from stylejax.nets import arcface

    with np.load(os.path.join(DATA, "arcface.npz")) as g:
        sd = {k[3:]: g[k] for k in g.files if k.startswith("sd/")}
    config = arcface.small_config()
    return arcface.ArcFace(config, convert_arcface.params_from_state_dict(sd, config))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, arcface_net):
    """configs/encode.py with a handful of steps, plus an ArcFace identity loss, on the demo's clip."""
    g, e4e, flow, lp = tiny_encoder.networks()
    truth = demo.ground_truth(g, flow, FRAMES)
    frames = demo.synthesise(g, flow, *truth, 8)
    config = user_config()
    config.chunk_size, config.microbatch = FRAMES, 0
    config.invert.steps, config.head_pose.steps, config.attributes.steps = 20, 4, 8
    config.attributes.auto_samples = 64
    config.attributes.id_weight = 0.1
    workdir = demo.synthetic_workdir(str(tmp_path_factory.mktemp("defaults") / "workdir"), frames, truth[1])
    nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp, arcface=arcface_net).check()
    enc, summary = pipeline.encode(workdir, nets, config, log=lambda msg: None)
    return {"workdir": workdir, "enc": enc, "summary": summary, "frames": frames, "config": config, "nets": nets}


def test_w_plus_inversion_refines_every_row(encoded):
    """space "w+": the refinement moves e4e's W+ rows independently and lowers the loss below e4e's in the frames
    it refines (`refine_frames`: the identity frame's candidates, the identity frame among them); the others keep
    e4e's inversion and loss."""
    wd, config, nets = encoded["workdir"], encoded["config"], encoded["nets"]
    ws = np.asarray(wd.load("invert", "ws.npy"))
    assert ws.shape == (FRAMES, 8, 32)
    refined = np.asarray(wd.load("invert", "refined.npy"))
    # rows differ in every refined frame: not a W latent (the random e4e's own rows differ by ~5e-4 only)
    assert np.ptp(ws[refined], axis=1).max(axis=-1).min() > 1e-3
    target = jnp.asarray(encoded["frames"], jnp.float32) / 127.5 - 1.0
    start = {"ws": invert.encode_e4e(nets.e4e, target)}
    # the stage's loss at e4e's start: the W+ regulariser (on by default) is 0 there, its anchor being e4e's W+
    assert config.invert.reg == "e4e" and config.invert.reg_weight > 0
    e4e_loss = np.asarray(invert.loss_fn(config.invert, 32, jnp.float32)(
        start, {"generator": nets.generator, "lpips": nets.lpips}, {"target": target, "anchor": start["ws"]}))
    loss = np.asarray(wd.load("invert", "loss.npy"))
    assert config.invert.refine_frames > 0 and refined[encoded["summary"]["id_frame"]], refined
    assert (loss[refined] < e4e_loss[refined]).all(), (loss, e4e_loss, refined)
    # unrefined frames: e4e's loss as computed here (same program on the same inputs; float32 rounding only)
    np.testing.assert_allclose(loss[~refined], e4e_loss[~refined], rtol=1e-5)


def test_default_channels_below_1024_are_chosen_per_video(encoded):
    info = json.load(open(encoded["workdir"].file("attributes", "channels.json")))
    assert info["source"] == "auto" and len(info["channels"]) == 32 == len(encoded["enc"].channels)


def test_weighting_and_identity_loss_were_on(encoded, arcface_net):
    wd = encoded["workdir"]
    weights = attributes.region_weights(wd, FRAMES, 32, encoded["config"].attributes)
    assert weights is not None and weights.max() == pytest.approx(1 + encoded["config"].attributes.mouth_weight,
                                                                   abs=0.05)
    # with an ArcFace network the summary measures identity (the loss itself: the test below)
    assert -1.0 <= encoded["summary"]["identity_similarity"] <= 1.0


# ------------------------------------------------------------------------------------------------ units

def test_identity_loss_alone_moves_the_offsets_towards_the_target(arcface_net):
    """The attributes loss with only the ArcFace term (L2 and LPIPS off): Adam on the offsets lowers 1 - cos
    between the rendering and a target that differs by those offsets."""
    from stylejax.decoder import apply_offsets, flat_indices
    from stylejax.optimize import Optimiser

    g, _, flow, _ = tiny_encoder.networks()
    truth = demo.ground_truth(g, flow, FRAMES)
    index = np.asarray(flat_indices(truth[3][:4], g.config))
    ws = jnp.broadcast_to(jnp.asarray(truth[0]), (2, 8, 32))
    cfg = user_config().attributes
    cfg.l2_weight, cfg.lpips_weight, cfg.id_weight = 0.0, 0.0, 1.0
    loss = attributes.loss_fn(cfg, 32, jnp.float32, index, False, True, 8)
    true_offsets = jnp.asarray([[3.0, -3.0, 2.0, -2.0], [-3.0, 3.0, -2.0, 2.0]])
    target = g.synthesize_from_styles(apply_offsets(g, ws, true_offsets, index), "const")
    nets = {"generator": g, "lpips": None, "arcface": arcface_net, "offset_scale": jnp.ones(4)}
    batch = {"ws": ws, "target": target, "mask": jnp.ones(2)}
    start = {"offsets": jnp.zeros((2, 4))}
    opt = Optimiser(loss, 0.3, 40)
    before = opt.loss(start, nets, batch)
    params, after = opt.run(start, nets, batch)
    assert before.min() > 1e-3  # the target's identity differs at the start ...
    assert (after < 0.5 * before).all(), (before, after)  # ... and the identity loss alone closes most of it


def test_map_condition_with_the_default_settings_climbs_the_posterior():
    """The user's head_pose.condition settings (map, condition_steps, condition_lr, exact log-determinant) on a
    flow from StyleFlow's reference code (tests/data/styleflow.npz): from the data mean, the search ends inside
    StyleFlow's data range with a higher log p(w | c) + log p(c) than its start, for a latent drawn under a
    condition of the data. The posterior is evaluated here from `StyleFlow.log_likelihood` and the data's
    Gaussian, not through the stage's objective (tests/stages/test_head_pose.py checks the optimum itself)."""
    from convert.styleflow import state_dict_to_params
    from stylejax.nets.styleflow import PITCH_INDEX, YAW_INDEX, StyleFlow, StyleFlowConfig
    from stylejax.stages.head_pose import condition_data, source_condition

    with np.load(os.path.join(DATA, "styleflow.npz")) as f:
        sd = {k[3:]: f[k] for k in f.files if k.startswith("sd/")}
    config, params = state_dict_to_params(sd)
    flow = StyleFlow(StyleFlowConfig(**config), params)
    hp = user_config().head_pose
    data = condition_data(hp.condition_data)
    free = np.ones(17, bool)
    free[[YAW_INDEX, PITCH_INDEX]] = False
    rng = np.random.RandomState(0)
    c_true = np.clip(data["mean"] + data["std"] * rng.randn(17), data["min"], data["max"]).astype(np.float32)
    c_true[YAW_INDEX], c_true[PITCH_INDEX] = 5.0, -3.0  # yaw and pitch come from the landmarks, not the search
    z = rng.randn(1, 18, 64).astype(np.float32)
    w = flow.reverse(jnp.asarray(z), jnp.asarray(c_true)[None], solver="rk4", steps=hp.rk4_steps)[0]
    assert hp.condition == "map" and hp.condition_probes == 0
    found, info = source_condition(flow, w, 5.0, -3.0, hp.condition, data, hp.condition_steps, hp.condition_lr,
                                   hp.rk4_steps, None)

    def log_posterior(c):
        ll = flow.log_likelihood(jnp.asarray(w)[None], jnp.asarray(c, jnp.float32)[None], hp.rk4_steps)
        return float(jnp.sum(ll)) - 0.5 * float(np.sum(np.where(free, np.square((c - data["mean"]) / data["std"]), 0)))

    start = np.where(free, data["mean"], found)
    assert (found[YAW_INDEX], found[PITCH_INDEX]) == (5.0, -3.0)
    assert np.all((found >= data["min"]) & (found <= data["max"])), found
    # the best iterate is kept, so the end is at least the start; 1 nat over 18 x 64 dimensions is a margin far
    # above float32 rounding of the log-likelihood sum (~1e-3 nats)
    assert log_posterior(found) > log_posterior(start) + 1.0, (log_posterior(found), log_posterior(start))


# ------------------------------------------------------------------------------------------------ 1024

def test_default_channel_file_at_1024():
    """`--channels default` on FFHQ config-f: the 32 channels of configs/channels_ffhq1024.json, each a conv
    channel (not ToRGB) of the 1024 generator, from the file's face-region pool."""
    from types import SimpleNamespace

    from stylejax.nets.generator import GeneratorConfig
    from stylejax.nets.stylespace import channel_to_flat_index, parse_channel_name

    gconfig = GeneratorConfig()  # config-f 1024: the file needs no weights
    names, source = attributes.resolve_channels("default", SimpleNamespace(config=gconfig), None, 32, 64)
    data = json.load(open(attributes.DEFAULT_CHANNELS))
    assert (names, source) == (data["channels"], "channels_ffhq1024.json") and len(set(names)) == 32
    layers = gconfig.style_layers()
    pool = set(attributes.channel_pool(gconfig).tolist())
    for name in names:
        layer, channel = parse_channel_name(name)
        assert not layers[layer][3] and 0 <= channel < layers[layer][2], name  # conv layer, channel in range
        assert channel_to_flat_index(name, gconfig) in pool
    assert "6_501" in names  # StyleSpace's smile channel (reference facts 3.4)


@pytest.mark.slow
def test_default_channels_move_a_full_size_image():
    """Full size: every default channel, offset by +5 on a random config-f generator, changes the 1024² image
    (a channel that did nothing would be a wasted number per frame)."""
    from stylejax.decoder import apply_offsets, flat_indices
    from stylejax.nets.generator import Generator, GeneratorConfig

    g = Generator.random(GeneratorConfig(), jax.random.PRNGKey(0))
    index = np.asarray(flat_indices(json.load(open(attributes.DEFAULT_CHANNELS))["channels"], g.config))
    ws = g.mapping(jax.random.normal(jax.random.PRNGKey(1), (1, g.config.z_dim)), truncation_psi=0.7)
    render = jax.jit(lambda g, off: g.synthesize_from_styles(apply_offsets(g, ws, off, index), "const"))
    base = np.asarray(render(g, jnp.zeros((1, 32))))
    for k in range(32):
        moved = np.asarray(render(g, jnp.zeros((1, 32)).at[0, k].set(5.0)))
        assert np.abs(moved - base).max() > 1e-3, k
