"""The chunk loop (`stages.base.run_chunks`): the chunk size chosen from XLA's memory analysis against the
device's memory, the fallback when a chunk runs out of device memory, loops over some frames only, resume.

A per-frame quadratic stands in for a stage's loss (the loop does not care what it optimises): frame t moves
from its start towards its target, every frame on its own, so any chunking gives the same rows.
"""
import jax.numpy as jnp
import numpy as np
import pytest

from stylejax import optimize, parallel, pipeline
from stylejax.stages import base

T = 10


def quadratic(params, nets, batch):
    return jnp.sum((params["x"] - batch["target"]) ** 2, axis=-1)


@pytest.fixture
def loop(tmp_path):
    rng = np.random.RandomState(0)
    workdir = pipeline.Workdir(str(tmp_path / "workdir"))
    pipeline.write_aligned(workdir, np.zeros((T, 4, 4, 3), np.uint8))
    target, start = rng.randn(T, 3).astype(np.float32), rng.randn(T, 3).astype(np.float32)
    logs = []

    def context(chunk, auto):
        ctx = base.Context(workdir, None, None, parallel.frames_mesh(), chunk, 0, logs.append, auto_chunk=auto)
        workdir.begin("stage", "sig", chunk)
        return ctx

    def run(ctx, frames=None, part="", steps=20):
        opt = optimize.Optimiser(quadratic, 0.1, steps)
        rows = np.arange(T) if frames is None else np.asarray(frames)
        out = base.run_chunks(ctx, "stage", opt, {}, lambda lo, hi: {"target": target[rows[lo:hi]], "start": start[rows[lo:hi]]},
                              lambda batch: ({"x": batch.pop("start")}, batch),
                              lambda params, loss, batch: {"x.npy": params["x"]}, {"x.npy": ((3,), np.float32)},
                              frames=frames, part=part)
        return np.array(out["x.npy"]), opt

    return {"context": context, "run": run, "logs": logs, "workdir": workdir, "start": start}


def step_bytes(chunk):
    """XLA's memory analysis of the loop's step for a chunk of `chunk` frames (as choose_chunk compiles it)."""
    mesh = parallel.frames_mesh()
    spec = lambda shape: parallel.jax.ShapeDtypeStruct(shape, jnp.float32, sharding=parallel.frame_sharding(mesh))
    batch = {"target": spec((chunk, 3)), "mask": spec((chunk,))}
    return optimize.Optimiser(quadratic, 0.1, 20).compile({"x": spec((chunk, 3))}, {}, batch)


def test_auto_chunk_fits_the_memory_analysis(loop, monkeypatch):
    ctx = loop["context"](8, auto=True)
    reference, _ = loop["run"](loop["context"](8, auto=False))
    budget = step_bytes(4) - 1  # 4 frames a chunk do not fit, fewer do
    monkeypatch.setattr(parallel, "memory_budget", lambda mesh: (budget, "a test budget"))
    loop["logs"].clear()
    loop["workdir"].begin("stage", "other", 8)  # a new start
    got, _ = loop["run"](ctx)
    chosen = ctx.chunk_choices["stage"]["frames"]
    assert chosen < 4 and step_bytes(chosen) <= budget
    assert "XLA's memory analysis fits" in ctx.chunk_choices["stage"]["why"]
    assert not [m for m in loop["logs"] if m.startswith("warning")]  # the size was ours to choose: no warning
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6)  # every frame on its own: the same rows


def test_a_users_chunk_that_does_not_fit_shrinks_with_a_warning(loop, monkeypatch):
    monkeypatch.setattr(parallel, "memory_budget", lambda mesh: (step_bytes(4) - 1, "a test budget"))
    ctx = loop["context"](8, auto=False)
    loop["run"](ctx)
    warnings = [m for m in loop["logs"] if m.startswith("warning")]
    assert len(warnings) == 1 and "a chunk of 8 frames does not fit" in warnings[0]
    assert ctx.chunk_choices["stage"]["frames"] < 4


def test_equal_chunks_under_the_cap(loop):
    ctx = loop["context"](8, auto=True)
    loop["run"](ctx)
    assert ctx.chunk_choices["stage"]["frames"] == 5  # 10 frames in 2 chunks of 5, not 8 + 2 padded to 8
    assert ctx.chunk_choices["stage"]["why"].startswith("10 frames in 2 chunks of at most 8")


def test_out_of_device_memory_retries_with_half_the_chunk(loop, monkeypatch):
    reference, _ = loop["run"](loop["context"](8, auto=False))
    run = optimize.Optimiser.run
    seen = []

    def run_or_fail(self, params, nets, batch, **kwargs):
        seen.append(len(batch["mask"]))
        if len(batch["mask"]) > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.5GiB")
        return run(self, params, nets, batch, **kwargs)

    monkeypatch.setattr(optimize.Optimiser, "run", run_or_fail)
    loop["workdir"].begin("stage", "again", 8)
    loop["logs"].clear()
    ctx = loop["context"](8, auto=False)
    got, _ = loop["run"](ctx)
    assert seen[:3] == [8, 4, 2]
    assert [m for m in loop["logs"] if m.startswith("warning")] == [
        "warning: [stage] a chunk of 8 frames ran out of device memory; retrying with 4 (set --config.chunk_size "
        "to choose)", "warning: [stage] a chunk of 4 frames ran out of device memory; retrying with 2 (set "
        "--config.chunk_size to choose)"]
    assert ctx.chunk_choices["stage"]["frames"] == 2
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6)

    def always_fail(self, params, nets, batch, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory")

    monkeypatch.setattr(optimize.Optimiser, "run", always_fail)
    loop["workdir"].begin("stage", "once more", 8)
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):  # one frame per device: nothing smaller to try
        loop["run"](loop["context"](8, auto=False))


def test_a_loop_over_some_frames_writes_their_rows_and_resumes(loop):
    ctx = loop["context"](8, auto=True)
    full, _ = loop["run"](ctx)
    loop["workdir"].begin("stage", "subset", 8)
    some = np.array([1, 4, 7])
    got, opt = loop["run"](ctx, frames=some, part="some-")
    np.testing.assert_allclose(got[some], full[some], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.delete(got, some, axis=0), 0.0)  # rows of other frames are untouched
    assert ctx.chunk_choices["stage/some"]["frames"] == 3 and opt.stats["chunks"] == 1
    assert loop["workdir"].chunk_done("stage", 0, "some-") and not loop["workdir"].chunk_done("stage", 0)
    again, opt = loop["run"](ctx, frames=some, part="some-")  # resumed: the chunk is done, nothing runs
    assert opt.stats["chunks"] == 0
    np.testing.assert_array_equal(again, got)
