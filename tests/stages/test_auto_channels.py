"""The "auto" channel choice measures each StyleSpace channel's spread over the video chunk by chunk: the same
standard deviations as over all frames at once, with memory bounded by the chunk, not by the clip length
(long videos, docs/batch.md)."""
import numpy as np

import tiny_encoder
from stylejax.stages import attributes


def test_video_spread_in_chunks_equals_all_frames_at_once(tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp

    from stylejax.nets.stylespace import flatten_styles

    g = tiny_encoder.networks()[0]
    z = jax.random.normal(jax.random.PRNGKey(1), (300, g.config.z_dim))
    ws = np.asarray(g.mapping(z, 0.7))  # [300, num_ws, w_dim]
    np.save(tmp_path / "ws.npy", ws)
    frames = np.load(tmp_path / "ws.npy", mmap_mode="r")  # as the stage reads it: memory-mapped
    expected = np.asarray(flatten_styles(g.styles_from_ws(jnp.asarray(ws))), np.float64).std(axis=0)

    seen = []
    styles_from_ws = type(g).styles_from_ws
    monkeypatch.setattr(type(g), "styles_from_ws", lambda self, w: seen.append(w.shape[0]) or styles_from_ws(self, w))
    got = attributes.video_style_std(g, frames, chunk=128)
    assert set(seen) == {128}  # 128, 128 and the last 44 padded to 128: one program, never all 300 frames
    # float32 styles computed in batches of another size round differently: ~1e-7 of the spread (measured 3e-8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7 * expected.max())
    assert got.shape == expected.shape and (got > 0).all()
