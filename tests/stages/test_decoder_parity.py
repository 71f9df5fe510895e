"""The decoder (`stylejax.decoder`) against the reference implementations, not against itself.

The encoder's closed loop (tests/stages/test_encoder.py) draws its target with the decoder it tests, so a
mistake in `pose_latents` or `apply_offsets` would cancel there. Here each is compared with golden outputs of
the reference code run on random weights (how they were made: docs/testing.md):

- `pose_latents` with StyleFlow's own edit: `main.py: real_time_editing` (yaw slider, then pitch slider; z =
  F(w, c_src), w' = R(z, c_tgt), rows 4-17 restored) on the weights of tests/data/styleflow.npz, solved by
  torchdiffeq's dopri5 at rtol = atol = 1e-10 in float64, i.e. the exact edit (tests/data/decoder_pose_edit.npz).
- `apply_offsets` with StyleSpace's manipulation s[l][c] += alpha * std[l][c] (manipulate.py `EditOneC`), done by
  forward hooks on the affine layers of NVlabs/stylegan2-ada-pytorch's Generator on the weights of
  tests/data/stylegan2_small.npz: ten channels, two in one layer, four in ToRGB layers, per-frame alphas
  (tests/data/decoder_offsets.npz).
"""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA
from stylejax.decoder import apply_offsets, flat_indices, pose_latents


def load(name):
    with np.load(os.path.join(DATA, name), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ------------------------------------------------------------------------------------------------ pose

@pytest.fixture(scope="module")
def flow():
    from convert.styleflow import state_dict_to_params
    from stylejax.nets.styleflow import StyleFlow, StyleFlowConfig

    sd = {k[len("sd/"):]: v for k, v in load("styleflow.npz").items() if k.startswith("sd/")}
    config, params = state_dict_to_params(sd)
    return StyleFlow(StyleFlowConfig(**config), params)


# RK4 with N = 8 against the converged solve: 7.3e-6 relative on the edit (docs/networks.md, "RK4 error against
# N", 64-d column vs dopri5@1e-7; float32 floor 2e-6). 5e-5 leaves 7x; N = 4 (1.8e-4 there) would not pass.
POSE_EDIT_RTOL = 5e-5


def test_pose_latents_equal_styleflows_edit(flow):
    ref = load("decoder_pose_edit.npz")
    id_latent, want = ref["id_latent"], ref["ws_edit"]
    got = np.asarray(pose_latents(flow, jnp.asarray(id_latent), jnp.asarray(ref["cond_src"]),
                                  jnp.asarray(ref["rel_yaw_deg"]), jnp.asarray(ref["rel_pitch_deg"]), 8), np.float64)
    assert got.shape == want.shape == (5,) + id_latent.shape
    # rows 4-17 are the identity's, bit for bit (StyleFlow restores them for yaw and pitch)
    np.testing.assert_array_equal(got[:, 4:], np.broadcast_to(id_latent[4:], got[:, 4:].shape))
    moved = (ref["rel_yaw_deg"] != 0) | (ref["rel_pitch_deg"] != 0)
    delta_ref = want[moved, :4] - id_latent[:4]
    delta = got[moved, :4] - id_latent[:4]
    assert np.linalg.norm(delta_ref, axis=(1, 2)).min() > 0.5  # the edits are large (|dw| ~ 1 per frame)
    err = np.linalg.norm(delta - delta_ref, axis=(1, 2)) / np.linalg.norm(delta_ref, axis=(1, 2))
    assert err.max() <= POSE_EDIT_RTOL, err
    # a zero relative pose is the identity latent itself (the reference: to its solve's round trip, 1e-9)
    np.testing.assert_array_equal(got[~moved], np.broadcast_to(id_latent, got[~moved].shape))
    assert np.abs(want[~moved] - id_latent).max() < 1e-6


def test_pose_latents_poses_are_relative_to_the_source_condition(flow):
    """The golden's source condition has yaw 6°, pitch -4°: angles taken as absolute would miss the edit by
    ~40% (measured 0.36-0.83 relative), far outside POSE_EDIT_RTOL."""
    ref = load("decoder_pose_edit.npz")
    assert ref["cond_src"][11] == 6.0 and ref["cond_src"][12] == -4.0
    absolute = np.asarray(pose_latents(flow, jnp.asarray(ref["id_latent"]), jnp.asarray(ref["cond_src"]),
                                       jnp.asarray(ref["rel_yaw_deg"] + 6.0), jnp.asarray(ref["rel_pitch_deg"] - 4.0),
                                       8), np.float64)
    delta_ref = ref["ws_edit"][:, :4] - ref["id_latent"][:4]
    err = np.linalg.norm(absolute[:, :4] - ref["ws_edit"][:, :4], axis=(1, 2)) / np.linalg.norm(delta_ref, axis=(1, 2))
    assert err.min() > 100 * POSE_EDIT_RTOL


# ------------------------------------------------------------------------------------------------ offsets

@pytest.fixture(scope="module")
def generator():
    from convert.stylegan2 import from_rosinality
    from stylejax.nets.generator import Generator

    golden = load("stylegan2_small.npz")
    config, params, buffers = from_rosinality({k[3:]: v for k, v in golden.items() if k.startswith("sd/")},
                                              golden["w_avg"])
    return Generator(config, params, buffers)


# The generator's fp32 parity tolerance (tests/nets/test_generator.py): images in about [-1, 1], float32
# convolutions in another order than torch's.
FP32_TOL = 1e-4


def test_apply_offsets_equals_stylespace_manipulation(generator):
    ref = load("decoder_offsets.npz")
    channels = [str(c) for c in ref["channels"]]
    index = np.asarray(flat_indices(channels, generator.config))
    ws = jnp.asarray(ref["ws"])
    # offsets in units of each channel's std, as StyleSpace's alpha
    styles = apply_offsets(generator, ws, jnp.asarray(ref["alpha"]), index, jnp.asarray(ref["std"]))
    images = np.asarray(generator.synthesize_from_styles(styles, "const"))
    assert np.abs(images - ref["images"]).max() < FP32_TOL
    # raw style units (offset_scale None, format-1 encodings): the same edit given as alpha * std
    raw = apply_offsets(generator, ws, jnp.asarray(ref["alpha"] * ref["std"]), index)
    assert np.abs(np.asarray(generator.synthesize_from_styles(raw, "const")) - ref["images"]).max() < FP32_TOL
    # the edits matter: every edited frame moves by far more than the tolerance, and frame 0 (no edit) not at all
    base = np.asarray(generator.synthesize(ws, "const"))
    moved = np.abs(ref["images"] - base).max(axis=(1, 2, 3))
    assert moved[0] < FP32_TOL and moved[1:].min() > 0.3, moved

