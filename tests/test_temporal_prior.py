"""The temporal prior (a coupling of neighbouring frames in the optimiser) and chunk overlap in the one chunk
loop (stages.base.run_chunks): frame t's gradient depends on frames t-1..t+1, so after n steps frame t depends
only on frames within n of it. With at least `steps` frames of context each side, chunks give exactly the
whole video's result; with less they do not (which is why the overlap is there)."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax import optimize, parallel
from stylejax.stages import attributes, base
from stylejax.workdir import Workdir, write_aligned

T, K, STEPS = 11, 3, 6


def per_frame_loss(params, nets, batch):
    """A nonlinear per-frame fit of `offsets` [T, K] to a noisy target (what the attributes stage does to images)."""
    return jnp.sum((jnp.tanh(params["offsets"]) - batch["target"]) ** 2, axis=-1) + 0.0 * nets["w"]


def target():
    rng = np.random.RandomState(0)
    t = np.arange(T)[:, None] / T
    return (0.5 * np.sin(2 * np.pi * t + np.arange(K)) + 0.2 * rng.randn(T, K)).astype(np.float32)


def run(tmp_path, chunk, overlap, weight=1.0, microbatch=0):
    workdir = Workdir(str(tmp_path / f"w{chunk}-{overlap}-{weight}-{microbatch}"))
    write_aligned(workdir, np.zeros((T, 4, 4, 3), np.uint8))
    ctx = base.Context(workdir, None, None, parallel.frames_mesh(), chunk, microbatch, log=lambda m: None)
    workdir.begin("attributes", "test", chunk)
    coupling = attributes.temporal_prior(weight, 0.0) if weight else None
    opt = optimize.Optimiser(per_frame_loss, 0.1, STEPS, microbatch, coupling=coupling)
    goal = target()
    out = base.run_chunks(ctx, "attributes", opt, {"w": jnp.float32(0)},
                          make_batch=lambda lo, hi: {"target": goal[lo:hi]},
                          init=lambda batch: ({"offsets": jnp.zeros_like(batch["target"])}, batch),
                          finish=lambda params, loss, batch: {"offsets.npy": params["offsets"]},
                          outputs={"offsets.npy": ((K,), np.float32)}, overlap=overlap)
    return np.array(out["offsets.npy"])


def test_overlap_of_steps_frames_gives_the_whole_video(tmp_path):
    whole = run(tmp_path, T, 0)
    chunked = run(tmp_path, 4, STEPS)  # chunks 0-3, 4-7, 8-10, each with 6 frames of context each side
    # the same per-frame arithmetic in other batch shapes: float32 rounding only (Adam's steps are ~0.1)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-5)
    # and the prior does something: without it the result differs by far more than rounding
    assert np.abs(run(tmp_path, T, 0, weight=0.0) - whole).max() > 1e-2


def test_too_little_overlap_shows_at_chunk_borders(tmp_path):
    whole = run(tmp_path, T, 0)
    for overlap in (0, 2):
        err = np.abs(run(tmp_path, 4, overlap) - whole).max(axis=-1)
        assert err.max() > 1e-4, (overlap, err)  # borders see the missing neighbours
    # with a little context the error shrinks (the light cone: influence decays away from the borders)
    assert np.abs(run(tmp_path, 4, 2) - whole).max() < np.abs(run(tmp_path, 4, 0) - whole).max()


def test_microbatched_step_keeps_the_coupling(tmp_path):
    # the coupling's gradient is taken over the whole batch, outside the per-group lax.map
    np.testing.assert_allclose(run(tmp_path, 4, STEPS, microbatch=2), run(tmp_path, 4, STEPS), rtol=0, atol=1e-5)


def test_padded_frames_do_not_pull_on_real_ones():
    prior = attributes.temporal_prior(1.0, 0.5)
    params = {"offsets": jnp.asarray([[0.0], [1.0], [5.0]]), "yaw": jnp.asarray([0.0, 2.0, 9.0]),
              "pitch": jnp.zeros(3)}
    batch = {"mask": jnp.asarray([1.0, 1.0, 0.0])}  # frame 2 is padding
    # only the pair (0, 1) counts: 1·1² + 0.5·2²
    assert float(prior(params, batch)) == pytest.approx(1.0 + 0.5 * 4.0)


def test_default_overlap_is_the_steps():
    import ml_collections

    from stylejax.errors import PipelineError

    cfg = ml_collections.ConfigDict({"temporal_overlap": -1, "steps": 100})
    assert attributes.temporal_overlap(cfg) == 100  # the light cone of 100 steps: exact
    cfg.temporal_overlap = 4
    assert attributes.temporal_overlap(cfg) == 4
    cfg.temporal_overlap = -2
    with pytest.raises(PipelineError, match="temporal_overlap must be >= 0 or -1"):
        attributes.temporal_overlap(cfg)
