"""The compact motion coding of format 2 ("delta-zstd"): exact round trip of the quantised values, size, random
access to a frame range from its blocks alone, and one-line errors for damaged streams."""
import dataclasses
import json
import struct

import numpy as np
import pytest

safetensors_numpy = pytest.importorskip("safetensors.numpy")
pytest.importorskip("zstandard")

from stylejax.io import encoding as E  # noqa: E402

T, K, KEY = 100, 32, 16


def smooth_encoding(step=0.01, **over):
    """Smooth trajectories plus per-frame noise (like an encoder's output), offsets in channel stds."""
    rng = np.random.default_rng(0)
    t = np.arange(T)[:, None] / 30.0
    pose = np.concatenate([10 * np.sin(t + [0, 1, 2]), ], 1) + rng.normal(0, 0.05, (T, 3))
    offsets = 0.7 * np.sin(2 * t + np.arange(K)) + rng.normal(0, 0.02, (T, K))
    fields = dict(id_latent=rng.normal(size=(18, 512)), pose_deg=pose, offsets=offsets,
                  channels=tuple(f"6_{k}" for k in range(K)), fps=30.0, resolution=1024,
                  generator_fingerprint="0123456789abcdef", pose_model="styleflow-rk4-8", cond_src=np.zeros(17),
                  offset_scale=np.ones(K), motion_step=np.full(3 + K, step), key_interval=KEY)
    fields.update(over)
    return E.Encoding(**fields)


def test_round_trip_is_the_quantised_motion(tmp_path):
    enc = smooth_encoding()
    path = str(tmp_path / "c.enc")
    E.save_encoding(path, enc)
    back = E.load_encoding(path)
    step = np.float32(np.float16(0.01))  # stored as float16
    np.testing.assert_array_equal(back.motion_step, np.full(3 + K, step))
    frames = np.concatenate([enc.pose_deg, enc.offsets], 1).astype(np.float64)
    expected = (np.rint(frames / step) * step).astype(np.float32)  # round to the nearest step, nothing else
    np.testing.assert_array_equal(np.concatenate([back.pose_deg, back.offsets], 1), expected)
    assert back.key_interval == KEY
    # saving what was read gives the same values again (the integers are exact multiples of the step)
    E.save_encoding(str(tmp_path / "again.enc"), back)
    again = E.load_encoding(str(tmp_path / "again.enc"))
    np.testing.assert_array_equal(again.offsets, back.offsets)
    # any safetensors reader sees plain tensors, no motion.frames
    raw = safetensors_numpy.load_file(path)
    assert {"motion.stream", "motion.blocks", "motion.step"} <= set(raw) and "motion.frames" not in raw
    assert raw["motion.stream"].dtype == np.uint8 and raw["motion.blocks"].dtype == np.uint32
    assert len(raw["motion.blocks"]) == -(-T // KEY) + 1


def test_smaller_than_float16(tmp_path):
    enc = smooth_encoding()
    compact, plain = str(tmp_path / "c.enc"), str(tmp_path / "f.enc")
    E.save_encoding(compact, enc)
    E.save_encoding(plain, dataclasses.replace(enc, motion_step=None))
    assert E.motion_bytes(plain) == T * 2 * (3 + K)  # 70 bytes a frame
    # differences of ~0.02-0.1 per frame at step 0.01: a few bits each plus the block overheads; measured 33.5
    # bytes a frame; half of float16 is what the format promises at this step
    assert E.motion_bytes(compact) < T * (3 + K), E.motion_bytes(compact) / T


def test_a_frame_range_decodes_from_its_blocks_alone(tmp_path):
    enc = smooth_encoding()
    path = str(tmp_path / "c.enc")
    E.save_encoding(path, enc)
    full = E.load_encoding(path)
    for lo, hi in ((0, 1), (15, 17), (40, 64), (90, 100), (0, T)):
        pose, off = E.load_motion_range(path, lo, hi)
        np.testing.assert_array_equal(pose, full.pose_deg[lo:hi])
        np.testing.assert_array_equal(off, full.offsets[lo:hi])
    # damage block 0: the whole file no longer reads, but frames of other blocks still do (never read it)
    header_len = struct.unpack("<Q", open(path, "rb").read(8))[0]
    header = json.loads(open(path, "rb").read(8 + header_len)[8:])
    start = 8 + header_len + header["motion.stream"]["data_offsets"][0]
    data = bytearray(open(path, "rb").read())
    data[start:start + 4] = b"XXXX"  # the zstd magic number of block 0
    open(path, "wb").write(bytes(data))
    with pytest.raises(E.EncodingError, match=r"motion stream: block 0 is not a valid zstd frame"):
        E.load_encoding(path)
    pose, _ = E.load_motion_range(path, 40, 64)
    np.testing.assert_array_equal(pose, full.pose_deg[40:64])
    with pytest.raises(E.EncodingError, match=r"frames 90\.\.100 are outside the encoding's 0\.\.99"):
        E.load_motion_range(path, 90, 101)


def rewrite(path, out, **tensors):
    raw = safetensors_numpy.load_file(path)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))["__metadata__"]
    raw.update(tensors)
    safetensors_numpy.save_file(raw, out, metadata=meta)
    return out


@pytest.mark.parametrize("change, message", [
    (lambda raw: {"motion.blocks": raw["motion.blocks"][::-1].copy()},
     "tensor 'motion.blocks' does not hold 8 increasing byte offsets from 0 to"),
    (lambda raw: {"motion.step": -raw["motion.step"]}, "tensor 'motion.step' must hold 35 positive finite"),
    (lambda raw: {"motion.blocks": raw["motion.blocks"].astype(np.int64)},
     "tensor 'motion.blocks' is int64 [8], expected a 1-d uint32 tensor"),
])
def test_damaged_tensors_are_one_line_errors(tmp_path, change, message):
    path = str(tmp_path / "c.enc")
    E.save_encoding(path, smooth_encoding())
    bad = rewrite(path, str(tmp_path / "bad.enc"), **change(safetensors_numpy.load_file(path)))
    with pytest.raises(E.EncodingError) as err:
        E.load_encoding(bad)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_block_that_inflates_beyond_its_values_is_refused(tmp_path):
    import zstandard

    path = str(tmp_path / "c.enc")
    E.save_encoding(path, smooth_encoding(), )
    raw = safetensors_numpy.load_file(path)
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * 10_000_000)  # a few hundred bytes, 10 MB inflated
    blocks = raw["motion.blocks"].astype(np.int64)
    stream = np.concatenate([np.frombuffer(bomb, np.uint8), raw["motion.stream"][blocks[1]:]])
    blocks = np.concatenate([[0], blocks[1:] - blocks[1] + len(bomb)]).astype(np.uint32)
    bad = rewrite(path, str(tmp_path / "bomb.enc"), **{"motion.stream": stream, "motion.blocks": blocks})
    with pytest.raises(E.EncodingError, match="motion stream: block 0 inflates beyond its 560 values"):
        E.load_encoding(bad)


def test_varints_and_zigzag_at_the_limits():
    values = np.array([0, 1, -1, 63, -64, 64, 8191, -8192, 2 ** 31 - 1, -(2 ** 31 - 1)], np.int64)
    data = E._leb128(E._zigzag(values))
    # 1 byte up to |v| ~ 63, 2 up to ~8191, 5 at 32 bits
    assert len(data) == 1 + 1 + 1 + 1 + 1 + 2 + 2 + 2 + 5 + 5
    np.testing.assert_array_equal(E._unzigzag(E._unleb128(data, len(values))), values)
    with pytest.raises(ValueError):
        E._unleb128(data[:-1], len(values))  # a truncated last value


def test_values_too_large_for_their_step_are_refused_at_save(tmp_path):
    enc = smooth_encoding(step=1e-4)
    big = dataclasses.replace(enc, offsets=enc.offsets * 1e6)  # ~7e5 / 1e-4 > 2^31
    with pytest.raises(E.EncodingError, match="too large for its quantisation step; use larger quantisation"):
        E.save_encoding(str(tmp_path / "c.enc"), big)
