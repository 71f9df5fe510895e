"""ArcFace IR-SE: parity with the reference Backbone + e4e's preprocessing (random weights, reduced
widths, real 24-unit structure), adaptive pooling window rule, ID loss, converter CLI, bad input."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert.__main__ import parse_args
from conftest import DATA
from convert import ConversionError
from convert import arcface as convert_arcface
from stylejax.io.checkpoint import load_arcface
from stylejax.nets import arcface

GOLDEN = os.path.join(DATA, "arcface.npz")


@pytest.fixture(scope="module")
def golden():
    d = np.load(GOLDEN)
    sd = {k[3:]: d[k] for k in d.files if k.startswith("sd/")}
    return sd, d["images"], d["embeddings"]


@pytest.fixture(scope="module")
def model_params(golden):
    cfg = arcface.small_config()
    params = convert_arcface.params_from_state_dict(golden[0], cfg)
    return arcface.ArcFace(cfg, params), params


@pytest.fixture(scope="module")
def embed_jit(model_params):
    model, _ = model_params
    return jax.jit(lambda p, x: arcface.ArcFace(model.config, p).embed(x))


def test_parity_with_reference(golden, model_params, embed_jit):
    sd, images, emb_ref = golden
    assert convert_arcface.infer_config(sd) == arcface.small_config()
    emb = np.asarray(embed_jit(model_params[1], images))
    assert emb.shape == (2, 32)
    assert np.abs(emb - emb_ref).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_1024_input_is_pooled_4x4_first(golden, model_params, embed_jit):
    _, images, emb_ref = golden
    big = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)  # every 4×4 block has the 256² pixel's value
    assert np.abs(np.asarray(embed_jit(model_params[1], big)) - emb_ref).max() <= 1e-4


def test_adaptive_pool_window_rule():
    m = arcface.adaptive_pool_matrix(188, 112)
    # window i = [floor(i*188/112), ceil((i+1)*188/112)): sizes 2 or 3, overlapping
    assert np.flatnonzero(m[0]).tolist() == [0, 1]
    assert np.flatnonzero(m[1]).tolist() == [1, 2, 3]
    assert np.flatnonzero(m[111]).tolist() == [186, 187]
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(arcface.adaptive_pool_matrix(1024, 256),
                                  np.kron(np.eye(256), np.full((1, 4), 0.25)).astype(np.float32))


def test_adaptive_pool_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(2, 188, 190, 3)).astype(np.float32)
    for out_hw in [(112, 112), (7, 11), (188, 190)]:
        ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out_hw)
        ours = np.asarray(arcface.adaptive_avg_pool(x, out_hw))
        assert np.abs(ours - ref.permute(0, 2, 3, 1).numpy()).max() < 1e-5


def test_id_loss(golden, model_params):
    _, images, emb_ref = golden
    model, params = model_params
    loss_fn = jax.jit(lambda p, a, b: arcface.ArcFace(model.config, p).id_loss(a, b))
    assert abs(float(loss_fn(params, images, images))) < 1e-6
    per_sample = np.asarray(jax.jit(lambda p, a, b: arcface.ArcFace(model.config, p).id_loss_per_sample(a, b))(
        params, images, images[::-1]))
    want = 1 - np.sum(emb_ref * emb_ref[::-1], axis=1)
    assert per_sample.shape == (2,) and np.abs(per_sample - want).max() < 1e-4
    assert want[0] > 1e-3  # the two images differ, so this is a real check
    # gradient flows into the first argument only (e4e detaches the target embedding)
    ga, gb = jax.jit(jax.grad(lambda a, b: model.id_loss(a, b), argnums=(0, 1)))(
        jnp.asarray(images[:1]), jnp.asarray(images[1:]))
    assert np.all(np.isfinite(ga)) and np.abs(ga).max() > 0 and np.abs(gb).max() == 0


def _cli(argv):
    convert_arcface.run(parse_args("arcface", argv))


def test_convert_cli_end_to_end(tmp_path, golden, embed_jit):
    torch = pytest.importorskip("torch")
    sd, images, emb_ref = golden
    # model_ir_se50.pth is a plain state dict (here with num_batches_tracked, as torch writes it)
    tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
    tsd["output_layer.4.num_batches_tracked"] = torch.tensor(0)
    torch.save(tsd, tmp_path / "ir_se.pth")
    _cli(["--src", str(tmp_path / "ir_se.pth"), "--out", str(tmp_path / "out")])
    model = load_arcface(tmp_path / "out")
    params = model.params
    assert model.config == arcface.small_config()
    assert np.abs(np.asarray(embed_jit(params, images)) - emb_ref).max() <= 1e-4


def _error(ckpt):
    with pytest.raises(ConversionError) as e:
        convert_arcface.convert_checkpoint(ckpt, "f.pth")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("f.pth: ")
    return msg


def test_bad_checkpoints_give_one_line_errors(golden):
    sd = golden[0]
    assert "convert e4e" in _error({"encoder.input_layer.0.weight": np.zeros(3, np.float32)})
    assert "model_ir_se50" in _error({"foo": np.zeros(3, np.float32)})
    missing = dict(sd)
    del missing["body.7.shortcut_layer.1.running_var"]
    assert "body.7.shortcut_layer.1.running_var" in _error(missing)
    assert "output_layer.3.weight" in _error({**sd, "output_layer.3.weight": np.zeros((32, 22 * 50), np.float32)})
    assert "only the 112" in _error({**sd, "output_layer.3.weight": np.zeros((32, 22 * 196), np.float32)})
    bad_shape = {**sd, "body.3.res_layer.2.weight": np.zeros(7, np.float32)}
    assert "unit_3/prelu/alpha" in _error(bad_shape)
    assert "expected a state dict" in _error("nope")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_file_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    torch.save({"input_layer.0.weight": evil}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError) as e:
        _cli(["--src", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "out")])
    assert "\n" not in str(e.value) and not os.path.exists(evil.marker)
    assert not os.path.exists(tmp_path / "out" / "config.json")
