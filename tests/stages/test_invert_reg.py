"""The invert stage's W+ regulariser: the loss adds reg_weight x the mean squared distance of rows reg_rows to
the anchor (e4e's W+ of the frame, or w_avg), and refinement with it keeps those rows near the anchor."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import tiny_encoder
from stylejax import losses
from stylejax.optimize import Optimiser
from stylejax.stages import invert

SIZE = 32


def config(reg, weight, rows=(0, 4)):
    return ml_collections.ConfigDict({"lpips_weight": 0.1, "l2_weight": 1.0, "reg": reg, "reg_weight": weight,
                                      "reg_rows": rows})


@pytest.fixture(scope="module")
def problem():
    g, _, _, lp = tiny_encoder.networks()
    key = jax.random.PRNGKey(0)
    ws_true = g.mapping(jax.random.normal(key, (2, g.config.z_dim)), truncation_psi=0.7)
    target = g.synthesize(ws_true, "const")
    start = ws_true + 0.3 * jax.random.normal(jax.random.fold_in(key, 1), ws_true.shape)
    nets = {"generator": g, "lpips": lp}
    batch = {"target": losses.resize(target, SIZE), "anchor": start, "mask": jnp.ones(2)}
    return nets, batch, start


def test_loss_adds_the_distance_on_the_chosen_rows(problem):
    nets, batch, start = problem
    ws = start + 0.1 * jax.random.normal(jax.random.PRNGKey(3), start.shape)
    plain = invert.loss_fn(config("none", 0.0), SIZE, jnp.float32)({"ws": ws}, nets, batch)
    reg = invert.loss_fn(config("e4e", 0.5, (1, 3)), SIZE, jnp.float32)({"ws": ws}, nets, batch)
    expected = 0.5 * np.mean(np.square(np.asarray(ws - start)[:, 1:3]), axis=(1, 2))
    # the same reconstruction program plus a float32 mean: rounding only
    np.testing.assert_allclose(np.asarray(reg - plain), expected, rtol=1e-5, atol=1e-7)
    # W space: the broadcast latent is what is regularised
    w = jnp.mean(ws, axis=1)
    reg_w = invert.loss_fn(config("e4e", 0.5, (0, 4)), SIZE, jnp.float32)({"w": w}, nets, batch)
    plain_w = invert.loss_fn(config("none", 0.0), SIZE, jnp.float32)({"w": w}, nets, batch)
    expected_w = 0.5 * np.mean(np.square(np.asarray(w)[:, None] - np.asarray(start)[:, :4]), axis=(1, 2))
    np.testing.assert_allclose(np.asarray(reg_w - plain_w), expected_w, rtol=1e-5, atol=1e-7)


def test_refinement_keeps_the_regularised_rows_near_the_anchor(problem):
    nets, batch, start = problem

    def refine(reg, weight):
        opt = Optimiser(invert.loss_fn(config(reg, weight), SIZE, jnp.float32), 0.05, 40)
        return np.asarray(opt.run({"ws": jnp.array(start)}, nets, batch)[0]["ws"])

    moved = lambda ws, rows: float(np.mean(np.square(ws[:, rows] - np.asarray(start)[:, rows])))
    free, held = refine("none", 0.0), refine("e4e", 10.0)
    # free refinement moves every row (the start is 0.3 off the truth); with a strong pull rows 0-3 stay at
    # the anchor (measured 60x closer) while the other rows move as freely as before
    pose_rows, rest = slice(0, 4), slice(4, None)
    assert moved(free, pose_rows) > 20 * moved(held, pose_rows), (moved(free, pose_rows), moved(held, pose_rows))
    assert moved(held, rest) > 0.5 * moved(free, rest)


def test_bad_settings_are_one_line_errors(tmp_path):
    from stylejax import demo, pipeline
    from stylejax.errors import PipelineError

    g, e4e, flow, lp = tiny_encoder.networks()
    workdir = pipeline.Workdir(str(tmp_path / "w"))
    pipeline.write_aligned(workdir, np.zeros((2, 32, 32, 3), np.uint8),
                           quad=np.zeros((2, 4, 2)), frame_size=np.array([32, 32], np.int32))
    cfg = demo.load_config(demo.TINY_CONFIG)
    nets = pipeline.Nets(generator=g, e4e=e4e, styleflow=flow, lpips=lp)
    cfg.invert.reg = "l1"
    with pytest.raises(PipelineError, match=r"^--config.invert.reg must be 'none', 'e4e' or 'w_avg', got 'l1'$"):
        invert.run(pipeline.make_context(workdir, nets, cfg))
    cfg.invert.reg, cfg.invert.reg_rows = "e4e", (3, 2)
    with pytest.raises(PipelineError, match=r"^--config.invert.reg_rows \(3, 2\) is not a range of W\+ rows"):
        invert.run(pipeline.make_context(workdir, nets, cfg))
