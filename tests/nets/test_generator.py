"""Flax StyleGAN2 vs golden outputs of rosinality/stylegan2-pytorch and NVlabs stylegan2-ada-pytorch.

tests/data/stylegan2_small.npz: a 32 px generator (channels 64/64/32/16, z=w=64) with random, non-trivial
weights, and what both references computed from it (see docs/networks.md for how it was made).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DATA
from convert.stylegan2 import count_params, from_rosinality
from stylejax.nets.generator import Generator, GeneratorConfig, config_f, init_variables
from stylejax.nets.stylespace import (channel_to_flat_index, edit_channels, flat_index_to_channel,
                                 flatten_styles, format_channel_name, parse_channel_name)

FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(os.path.join(DATA, "stylegan2_small.npz")))


@pytest.fixture(scope="module")
def gen(golden):
    sd = {k[3:]: v for k, v in golden.items() if k.startswith("sd/")}
    cfg, params, buffers = from_rosinality(sd, golden["w_avg"])
    return Generator(cfg, jax.tree_util.tree_map(jnp.asarray, params),
                     jax.tree_util.tree_map(jnp.asarray, buffers))


def _maxabs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("ref", ["", "nv/"], ids=["rosinality", "nvlabs"])
def test_mapping_and_truncation(gen, golden, ref):
    z = golden["z"]
    assert _maxabs(gen.mapping(z), golden[ref + "ws_from_z"]) < FP32_TOL
    assert _maxabs(gen.mapping(z, 0.7), golden[ref + "ws_trunc"]) < FP32_TOL
    ws_cut = gen.mapping(z, 0.7, truncation_cutoff=4)
    assert _maxabs(ws_cut, golden[ref + "ws_trunc_cutoff"]) < FP32_TOL
    # rows past the cutoff are untruncated
    assert _maxabs(ws_cut[:, 4:], golden["ws_from_z"][:, 4:]) < FP32_TOL


@pytest.mark.parametrize("ref", ["", "nv/"], ids=["rosinality", "nvlabs"])
def test_images_match_references(gen, golden, ref):
    assert _maxabs(gen.synthesize(golden["ws_plus"]), golden[ref + "img_ws_plus"]) < FP32_TOL
    assert _maxabs(gen.synthesize(golden["ws_plus"], "none"), golden[ref + "img_ws_plus_nonoise"]) < FP32_TOL
    assert _maxabs(gen.synthesize(gen.mapping(golden["z"], 0.7)), golden[ref + "img_z_trunc"]) < FP32_TOL
    assert _maxabs(gen.synthesize(gen.mapping(golden["z"], 0.7, 4)), golden[ref + "img_z_trunc_cutoff"]) < FP32_TOL


def test_noise_modes_differ(gen, golden):
    ws = golden["ws_plus"]
    const, none = gen.synthesize(ws, "const"), gen.synthesize(ws, "none")
    r1 = gen.synthesize(ws, "random", rng=jax.random.PRNGKey(0))
    r2 = gen.synthesize(ws, "random", rng=jax.random.PRNGKey(1))
    assert _maxabs(const, none) > 1e-2 and _maxabs(r1, r2) > 1e-2 and _maxabs(r1, const) > 1e-2
    with pytest.raises(ValueError, match="rng"):
        gen.synthesize(ws, "random")


def test_styles_match_reference(gen, golden):
    styles = gen.styles_from_ws(golden["ws_plus"])
    n = len([k for k in golden if k.startswith("styles/")])
    assert len(styles) == n == len(gen.config.style_layers())
    for i, s in enumerate(styles):
        assert _maxabs(s, golden[f"styles/{i}"]) < FP32_TOL, i


def test_styles_to_image_equals_ws_to_image(gen, golden):
    ws = golden["ws_plus"]
    assert _maxabs(gen.synthesize_from_styles(gen.styles_from_ws(ws)), gen.synthesize(ws)) < 1e-6


@pytest.mark.parametrize("ref", ["", "nv/"], ids=["rosinality", "nvlabs"])
def test_single_channel_edits_match_reference(gen, golden, ref):
    styles = gen.styles_from_ws(golden["ws_plus"])
    base = gen.synthesize_from_styles(styles)
    for k, (layer, ch, delta) in enumerate(zip(golden["edit_layers"], golden["edit_channels"], golden["edit_deltas"])):
        edited = gen.synthesize_from_styles(edit_channels(styles, [(layer, ch)], [delta], gen.config))
        assert _maxabs(edited, base) > 1e-2  # the edit changes the image ...
        assert _maxabs(edited, golden[f"{ref}img_edit_{k}"]) < FP32_TOL  # ... exactly as in the reference


def test_bf16_close_to_fp32(gen, golden):
    ws = golden["ws_plus"]
    fp32 = np.asarray(gen.synthesize(ws))
    bf16 = np.asarray(gen.synthesize(ws, dtype=jnp.bfloat16))
    # bf16 has an 8-bit mantissa (rel. step 2^-8 = 0.4%); errors of a few such steps per layer accumulate
    # through 7 convs. Relative to the image's dynamic range we accept 3%, and a mean error below 1%.
    scale = np.abs(fp32).max()
    assert np.abs(bf16 - fp32).max() / scale < 0.03
    assert np.abs(bf16 - fp32).mean() / scale < 0.01


def test_grad_wrt_styles_and_params(gen, golden):
    styles = gen.styles_from_ws(golden["ws_plus"][:2])

    def loss(s, g):
        return jnp.mean(g.synthesize_from_styles(s) ** 2)

    gs, gg = jax.jit(jax.grad(loss, argnums=(0, 1)))(styles, gen)
    assert all(np.isfinite(np.asarray(x)).all() and np.abs(np.asarray(x)).max() > 0 for x in gs)
    assert np.abs(np.asarray(gg.params["synthesis"]["b8"]["conv0"]["weight"])).max() > 0
    # vmap over frames gives the same as the batch
    one = jax.vmap(lambda w: gen.synthesize(w[None])[0])(jnp.asarray(golden["ws_plus"][:2]))
    assert _maxabs(one, gen.synthesize(golden["ws_plus"][:2])) < 1e-5


def test_config_f_stylespace_shapes():
    cfg = config_f()
    variables = jax.eval_shape(lambda k: init_variables(cfg, k), jax.random.PRNGKey(0))
    g = Generator(cfg, variables["params"], variables["buffers"])
    assert count_params(g.params) == 30_370_060  # the published StyleGAN2-F size
    ws = jax.ShapeDtypeStruct((2, 18, 512), jnp.float32)
    styles = jax.eval_shape(lambda g, w: g.styles_from_ws(w), g, ws)
    dims = [s.shape[1] for s in styles]
    assert len(styles) == 26 and sum(dims) == 9088
    assert sum(d for d, (_, _, _, rgb) in zip(dims, cfg.style_layers()) if not rgb) == 6048
    assert dims[15] == 256 and dims[25] == 32
    img = jax.eval_shape(lambda g, s: g.synthesize_from_styles(s), g, styles)
    assert img.shape == (2, 1024, 1024, 3)
    # channel names: layer 6 starts at 3072, layer 25 is the last ToRGB
    assert channel_to_flat_index("6_501", cfg) == 3072 + 501
    assert flat_index_to_channel(9087, cfg) == "25_31"
    assert parse_channel_name(format_channel_name(12, 479)) == (12, 479)
    with pytest.raises(ValueError, match="out of range"):
        channel_to_flat_index("25_32", cfg)
    with pytest.raises(ValueError, match="bad StyleSpace channel name"):
        parse_channel_name("smile")


def test_flatten_roundtrip(gen, golden):
    styles = gen.styles_from_ws(golden["ws_plus"])
    flat = flatten_styles(styles)
    assert flat.shape == (4, sum(s.shape[1] for s in styles))
    idx = channel_to_flat_index((5, 17), gen.config)
    assert float(flat[0, idx]) == float(styles[5][0, 17])


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        GeneratorConfig(resolution=48, channels=((4, 8),))
    with pytest.raises(ValueError, match="no entry"):
        GeneratorConfig(resolution=16, channels=((4, 8), (8, 8)))


@pytest.mark.parametrize("res", [8, 16])
def test_max_resolution_is_the_generator_cut_after_that_block(gen, golden, res):
    """synthesize(max_resolution=r) is the image of the generator whose last block is r, with the same weights
    (a generator built from the blocks up to r: the skip architecture's image at r); the W+ rows of the finer
    blocks change nothing."""
    import dataclasses

    keep = lambda tree: {k: v for k, v in tree.items() if not k.startswith("b") or int(k[1:]) <= res}
    cfg = dataclasses.replace(gen.config, resolution=res,
                              channels=tuple((r, c) for r, c in gen.config.channels if r <= res))
    cut = Generator(cfg, {**gen.params, "synthesis": keep(gen.params["synthesis"])},
                    {**gen.buffers, "synthesis": keep(gen.buffers["synthesis"])})
    ws = np.asarray(golden["ws_plus"])
    coarse = gen.synthesize(ws, max_resolution=res)
    assert coarse.shape == (ws.shape[0], res, res, 3)
    assert _maxabs(coarse, cut.synthesize(ws[:, :cfg.num_ws])) < 1e-6
    other = ws.copy()
    other[:, cfg.num_ws:] += 1.0
    assert _maxabs(gen.synthesize(other, max_resolution=res), coarse) == 0.0
    assert _maxabs(gen.synthesize(ws, max_resolution=32), gen.synthesize(ws)) == 0.0
    with pytest.raises(ValueError, match="max_resolution must be one of"):
        gen.synthesize(ws, max_resolution=12)
