"""Full-size (config-f 1024) checks; opt-in: `python -m pytest -q tests --slow` (several minutes on a CPU).

Random config-f weights are written in rosinality's checkpoint layout with torch.save, converted with
`python -m convert stylegan2`, and must come back bit-identical; at 1024 the StyleSpace path must equal
the W+ path and bf16 must stay within the stated tolerance of fp32.
"""
import collections
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from stylejax.io.checkpoint import load_generator
from stylejax.nets.generator import Generator, config_f

pytestmark = pytest.mark.slow


def to_rosinality(g):
    """Our params -> rosinality g_ema naming and layouts (the inverse of convert.stylegan2)."""
    p, b = jax.tree_util.tree_map(np.asarray, g.params), jax.tree_util.tree_map(np.asarray, g.buffers)
    sd = collections.OrderedDict()
    for i in range(g.config.mapping_layers):
        sd[f"style.{i + 1}.weight"] = p["mapping"][f"fc{i}"]["weight"].T
        sd[f"style.{i + 1}.bias"] = p["mapping"][f"fc{i}"]["bias"]
    syn = p["synthesis"]
    sd["input.input"] = syn["const"].transpose(2, 0, 1)[None]

    def layer(dst, src, noise=None):
        sd[f"{dst}.conv.weight"] = src["weight"].transpose(3, 2, 0, 1)[None]
        sd[f"{dst}.conv.modulation.weight"] = src["affine"]["weight"].T
        sd[f"{dst}.conv.modulation.bias"] = src["affine"]["bias"]
        if noise is None:
            sd[f"{dst}.bias"] = src["bias"].reshape(1, 3, 1, 1)
        else:
            sd[f"{dst}.noise.weight"] = src["noise_strength"].reshape(1)
            sd[f"{dst}.activate.bias"] = src["bias"]
            sd[f"noises.noise_{noise[0]}"] = noise[1][None, None]

    bs = b["synthesis"]
    layer("conv1", syn["b4"]["conv1"], (0, bs["b4"]["conv1"]["noise_const"]))
    layer("to_rgb1", syn["b4"]["torgb"])
    for k, res in enumerate(g.config.resolutions[1:]):
        blk, nb = syn[f"b{res}"], bs[f"b{res}"]
        layer(f"convs.{2 * k}", blk["conv0"], (2 * k + 1, nb["conv0"]["noise_const"]))
        layer(f"convs.{2 * k + 1}", blk["conv1"], (2 * k + 2, nb["conv1"]["noise_const"]))
        layer(f"to_rgbs.{k}", blk["torgb"])
    return sd, b["mapping"]["w_avg"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    torch = pytest.importorskip("torch")
    g = Generator.random(config_f(), jax.random.PRNGKey(0))
    # non-trivial noise strengths and biases so a dropped term would show
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 200))
    g.params = jax.tree_util.tree_map_with_path(
        lambda path, v: v + 0.1 * jax.random.normal(next(keys), v.shape)
        if str(path[-1]).find("bias") >= 0 or str(path[-1]).find("noise_strength") >= 0 else v, g.params)
    sd, w_avg = to_rosinality(g)
    d = tmp_path_factory.mktemp("full")
    torch.save({"g_ema": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                "latent_avg": torch.from_numpy(np.array(w_avg))}, d / "g.pt")
    r = subprocess.run([sys.executable, "-m", "convert", "stylegan2", "--src", str(d / "g.pt"), "--out", str(d / "ckpt")],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return g, load_generator(d / "ckpt")


def test_conversion_is_bit_exact_at_full_size(full):
    g, converted = full
    assert converted.config == g.config
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                  (g.params, g.buffers), (converted.params, converted.buffers))
    assert all(jax.tree_util.tree_leaves(same))


def test_full_size_styles_path_and_bf16(full):
    _, g = full
    ws = g.mapping(np.random.RandomState(0).randn(1, 512).astype(np.float32), 0.7)
    img = np.asarray(g.synthesize(ws))
    assert img.shape == (1, 1024, 1024, 3) and np.isfinite(img).all()
    styles = g.styles_from_ws(ws)
    assert len(styles) == 26 and sum(s.shape[1] for s in styles) == 9088
    np.testing.assert_allclose(np.asarray(g.synthesize_from_styles(styles)), img, atol=1e-5)
    bf16 = np.asarray(g.synthesize(ws, dtype=jnp.bfloat16))
    scale = np.abs(img).max()
    assert np.abs(bf16 - img).max() / scale < 0.03 and np.abs(bf16 - img).mean() / scale < 0.01
