"""The encoding file format: round trip, size, and one exact one-line error for every way a file can be bad."""
import json
import os
import pickle
import struct

import numpy as np
import pytest

safetensors_numpy = pytest.importorskip("safetensors.numpy")

from stylejax.errors import UserError  # noqa: E402
from stylejax.io.encoding import (Encoding, EncodingError, fingerprint_params, load_encoding,  # noqa: E402
                                  save_encoding)

T, K, NUM_WS, W_DIM = 50, 32, 18, 512
CHANNELS = tuple(f"{6 + k % 3}_{100 + k}" for k in range(K))


def make_encoding(with_quad=True, **over):
    rng = np.random.default_rng(0)
    fields = dict(id_latent=rng.normal(size=(NUM_WS, W_DIM)), pose_deg=rng.uniform(-40, 40, (T, 3)),
                  offsets=rng.normal(0, 3, (T, K)), channels=CHANNELS, fps=29.97, resolution=1024,
                  generator_fingerprint="0123456789abcdef", pose_model="styleflow-rk4-8",
                  settings={"steps": 300, "lr": 0.01, "loss": ["lpips", "l2"]},
                  cond_src=rng.normal(size=17), offset_scale=rng.uniform(0.33, 10.7, K),
                  styleflow_fingerprint="fedcba9876543210")
    if with_quad:
        fields.update(quad=rng.uniform(0, 1000, (T, 4, 2)), frame_size=(1280, 720))
    fields.update(over)
    return Encoding(**fields)


def header_of(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def write_raw(path, tensors, meta):
    safetensors_numpy.save_file(tensors, str(path), metadata=meta)
    return str(path)


def good_raw(tmp_path, drop_tensor=None, **meta_over):
    """A valid file's tensors and metadata, with changes, written without save_encoding's checks."""
    enc = make_encoding(with_quad=False)
    path = str(tmp_path / "ok.safetensors")
    save_encoding(path, enc)
    tensors = safetensors_numpy.load_file(path)
    meta = header_of(path)[1]["__metadata__"]
    meta.update({k: v for k, v in meta_over.items() if v is not None})
    for k in [k for k, v in meta_over.items() if v is None]:
        del meta[k]
    if drop_tensor:
        del tensors[drop_tensor]
    return tensors, meta


def read_error(path, **kw):
    with pytest.raises(EncodingError) as info:
        load_encoding(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, UserError)
    return msg


def test_round_trip_values_and_header(tmp_path):
    enc = make_encoding()
    path = str(tmp_path / "clip.safetensors")
    save_encoding(path, enc)
    back = load_encoding(path, expected_fingerprint="0123456789abcdef")
    # Pose and offsets come back as the float16 rounding of what was saved, exactly; the rest bit-exact.
    np.testing.assert_array_equal(back.pose_deg, enc.pose_deg.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(back.offsets, enc.offsets.astype(np.float16).astype(np.float32))
    # float16 has an 11-bit significand: |error| <= 2^-11 relative; degrees up to 40 -> <= 0.016 deg.
    assert np.abs(back.pose_deg - enc.pose_deg).max() <= 40 * 2.0 ** -11
    np.testing.assert_array_equal(back.id_latent, enc.id_latent)
    np.testing.assert_array_equal(back.quad, enc.quad)
    assert back.id_latent.dtype == back.pose_deg.dtype == back.offsets.dtype == back.quad.dtype == np.float32
    assert (back.channels, back.fps, back.resolution, back.generator_fingerprint, back.pose_model, back.settings,
            back.frame_size) == (CHANNELS, 29.97, 1024, "0123456789abcdef", "styleflow-rk4-8", enc.settings,
                                 (1280, 720))
    np.testing.assert_array_equal(back.cond_src, enc.cond_src)
    np.testing.assert_array_equal(back.offset_scale, enc.offset_scale)
    assert back.styleflow_fingerprint == "fedcba9876543210" and back.rk4_steps == 8
    _, header = header_of(path)
    assert header["__metadata__"] == {
        "format": "stylejax-encoding", "format_version": "2",
        "identity": json.dumps({"generator_fingerprint": "0123456789abcdef", "pose_model": "styleflow-rk4-8",
                                "resolution": 1024, "styleflow_fingerprint": "fedcba9876543210"}),
        "motion": json.dumps({"channels": list(CHANNELS), "columns": ["yaw_deg", "pitch_deg", "roll_deg", "offsets"],
                              "fps": 29.97, "frame_size": [1280, 720], "num_frames": 50,
                              "offset_units": "offset_scale"}),
        "settings": '{"loss": ["lpips", "l2"], "lr": 0.01, "steps": 300}'}
    assert {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"} == {
        "identity.id_latent": ("F32", [NUM_WS, W_DIM]), "identity.cond_src": ("F32", [17]),
        "motion.frames": ("F16", [T, 35]), "motion.offset_scale": ("F32", [K]), "motion.quad": ("F32", [T, 4, 2])}


def v1_file(path, enc):
    """A version-1 file written by hand as the first format defined it (offsets in raw style units, the
    identity's condition and StyleFlow fingerprint in the settings), independent of save_encoding."""
    raw = np.concatenate([enc.pose_deg, enc.offsets * enc.offset_scale], 1).astype(np.float16)
    settings = dict(enc.settings, cond_src=[float(v) for v in enc.cond_src], rk4_steps=8,
                    styleflow_fingerprint=enc.styleflow_fingerprint)
    meta = {"format": "stylejax-encoding", "format_version": "1", "generator_fingerprint": enc.generator_fingerprint,
            "resolution": "1024", "fps": "29.97", "num_frames": str(T), "channels": json.dumps(list(CHANNELS)),
            "pose_model": "styleflow-rk4-8", "settings": json.dumps(settings)}
    tensors = {"id_latent": enc.id_latent, "frames": raw}
    if enc.quad is not None:
        tensors["quad"], meta["frame_size"] = enc.quad, json.dumps(list(enc.frame_size))
    return write_raw(path, tensors, meta), raw


def test_reads_version_1(tmp_path):
    enc = make_encoding()
    path, raw = v1_file(tmp_path / "v1.safetensors", enc)
    back = load_encoding(path, expected_fingerprint="0123456789abcdef")
    # v1 offsets are raw style units: read with unit scale, so offsets_raw is what v1 stored, exactly
    np.testing.assert_array_equal(back.offset_scale, np.ones(K, np.float32))
    np.testing.assert_array_equal(back.offsets_raw, raw[:, 3:].astype(np.float32))
    np.testing.assert_array_equal(back.pose_deg, raw[:, :3].astype(np.float32))
    np.testing.assert_array_equal(back.cond_src, enc.cond_src)
    assert back.styleflow_fingerprint == enc.styleflow_fingerprint and back.rk4_steps == 8
    np.testing.assert_array_equal(back.quad, enc.quad)


def test_writes_version_1(tmp_path):
    enc = make_encoding()
    save_encoding(str(tmp_path / "a.safetensors"), enc, version="1")
    path, _ = v1_file(tmp_path / "b.safetensors", enc)
    a, b = load_encoding(str(tmp_path / "a.safetensors")), load_encoding(path)
    for field in ("id_latent", "pose_deg", "offsets", "offset_scale", "cond_src", "quad"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.settings == b.settings and header_of(tmp_path / "a.safetensors")[1]["__metadata__"]["format_version"] == "1"
    # the same numbers as the v2 file: raw offsets to float16 rounding of the raw values
    two = str(tmp_path / "c.safetensors")
    save_encoding(two, enc)
    c = load_encoding(two)
    np.testing.assert_allclose(a.offsets_raw, c.offsets_raw, rtol=2.0 ** -10)  # two float16 roundings at most


def test_identity_and_motion_parts(tmp_path):
    one, other = make_encoding(), make_encoding(with_quad=False, pose_deg=np.zeros((T, 3)), id_latent=np.zeros((NUM_WS, W_DIM)))
    mixed = Encoding.from_parts(other.identity(), one.motion(), {"note": "puppet"})
    np.testing.assert_array_equal(mixed.id_latent, other.id_latent)
    np.testing.assert_array_equal(mixed.pose_deg, one.pose_deg)
    np.testing.assert_array_equal(mixed.quad, one.quad)
    assert mixed.settings == {"note": "puppet"}


def test_without_quad_and_overwrite(tmp_path):
    path = str(tmp_path / "clip.safetensors")
    save_encoding(path, make_encoding())
    save_encoding(path, make_encoding(with_quad=False, fps=25))  # replaces the old file
    back = load_encoding(path)
    assert back.quad is None and back.frame_size is None and back.fps == 25.0
    assert "frame_size" not in header_of(path)[1]["__metadata__"]
    assert os.listdir(tmp_path) == ["clip.safetensors"]


def test_size(tmp_path):
    enc = make_encoding(with_quad=False)
    assert enc.bytes_per_frame == 70 and enc.num_frames == T
    path = str(tmp_path / "clip.safetensors")
    save_encoding(path, enc)
    header_len, _ = header_of(path)
    payload = NUM_WS * W_DIM * 4 + 17 * 4 + K * 4 + T * 70
    assert os.path.getsize(path) == 8 + header_len + payload
    assert header_len < 2048  # the header is small next to the 36 KiB latent


def test_fingerprint_params():
    import jax.numpy as jnp

    tree = {"b": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "a": np.ones(4, np.float16)}
    fp = fingerprint_params(tree)
    assert len(fp) == 16 and int(fp, 16) >= 0
    # The recipe, spelled out: SHA-256 over "keypath|dtype|shape|" + bytes of each leaf, sorted by key path.
    import hashlib

    recipe = hashlib.sha256(b"['a']|float16|(4,)|" + tree["a"].tobytes() + b"['b']['w']|float32|(2, 3)|"
                            + tree["b"]["w"].tobytes()).hexdigest()[:16]
    assert fp == recipe == "b7582d177599c51c"  # stable across runs and machines
    same = {"a": jnp.ones(4, jnp.float16), "b": {"w": jnp.arange(6.0).reshape(2, 3)}}  # jax arrays, other order
    assert fingerprint_params(same) == fp
    one_ulp = tree["b"]["w"].copy()
    one_ulp[1, 2] = np.nextafter(one_ulp[1, 2], np.float32(10))
    changed = [{"b": {"w": one_ulp}, "a": tree["a"]},
               {"b": {"w": tree["b"]["w"].reshape(3, 2)}, "a": tree["a"]},
               {"b": {"w": tree["b"]["w"].astype(np.float64)}, "a": tree["a"]},
               {"b": {"v": tree["b"]["w"]}, "a": tree["a"]}]
    assert len({fp} | {fingerprint_params(t) for t in changed}) == 5


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------

def test_not_a_file(tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    assert read_error(missing) == f"cannot read encoding {missing}: no such file"
    assert read_error(str(tmp_path)) == f"cannot read encoding {tmp_path}: not a file"


def test_random_bytes_and_pickle(tmp_path):
    not_st = "not a safetensors file (encodings are written by python -m stylejax.encode)"
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(1).bytes(5000))
    assert read_error(str(noise)) == f"cannot read encoding {noise}: {not_st}"
    # A pickle whose loading would create a directory: refusing it must not run it.
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    for protocol in (2, 4):
        pkl = tmp_path / f"enc{protocol}.safetensors"
        pkl.write_bytes(pickle.dumps({"id_latent": Trap()}, protocol=protocol))
        assert read_error(str(pkl)) == f"cannot read encoding {pkl}: {not_st}"
    assert not marker.exists()


def test_truncated(tmp_path):
    path = str(tmp_path / "clip.safetensors")
    save_encoding(path, make_encoding())
    data = open(path, "rb").read()
    header_len, _ = header_of(path)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-100])
    assert read_error(str(cut)) == (f"cannot read encoding {cut}: truncated ({len(data) - 100} bytes, "
                                    f"its tensors need {len(data)})")
    cut.write_bytes(data[:100])
    assert read_error(str(cut)) == (f"cannot read encoding {cut}: truncated (100 bytes, its header alone needs "
                                    f"{8 + header_len})")
    cut.write_bytes(data[:5])
    assert read_error(str(cut)) == (f"cannot read encoding {cut}: not a safetensors file (encodings are written "
                                    f"by python -m stylejax.encode)")


def test_corrupt_container(tmp_path):
    """Extents that the hand checks accept but the library rejects (trailing bytes) keep the library's reason."""
    path = tmp_path / "clip.safetensors"
    save_encoding(str(path), make_encoding())
    path.write_bytes(path.read_bytes() + b"\0" * 16)
    msg = read_error(str(path))
    assert msg.startswith(f"cannot read encoding {path}: corrupt safetensors file (") and msg.endswith(")")


def test_wrong_format_and_version(tmp_path):
    p = write_raw(tmp_path / "a.safetensors", *good_raw(tmp_path, format="other"))
    assert read_error(p) == (f"cannot read encoding {p}: not a stylejax encoding (format 'other', "
                             f"expected 'stylejax-encoding')")
    p = write_raw(tmp_path / "b.safetensors", {"w": np.zeros(3, np.float32)}, None)
    assert read_error(p) == (f"cannot read encoding {p}: not a stylejax encoding (no format field, "
                             f"expected 'stylejax-encoding')")
    p = write_raw(tmp_path / "c.safetensors", *good_raw(tmp_path, format_version="3"))
    assert read_error(p) == (f"cannot read encoding {p}: format version '3' is not supported: this stylejax reads "
                             f"version(s) 1, 2; upgrade stylejax to read it")


def edit_part(meta, part, **changes):
    """`meta` with keys of its JSON object `part` ("identity", "motion") changed (None deletes)."""
    obj = json.loads(meta[part])
    obj.update({k: v for k, v in changes.items() if v is not None})
    for k in [k for k, v in changes.items() if v is None]:
        del obj[k]
    return dict(meta, **{part: json.dumps(obj)})


def test_fingerprint_mismatch(tmp_path):
    path = str(tmp_path / "clip.safetensors")
    save_encoding(path, make_encoding())
    assert read_error(path, expected_fingerprint="fedcba9876543210") == (
        f"encoding {path} was encoded with generator 0123456789abcdef, this generator is fedcba9876543210: "
        f"render with the generator used to encode")


def test_missing_pieces(tmp_path):
    p = write_raw(tmp_path / "a.safetensors", *good_raw(tmp_path, drop_tensor="motion.frames"))
    assert read_error(p) == f"cannot read encoding {p}: missing tensor(s) 'motion.frames'"
    p = write_raw(tmp_path / "b.safetensors", *good_raw(tmp_path, motion=None, settings=None))
    assert read_error(p) == f"cannot read encoding {p}: missing metadata field(s) 'motion', 'settings'"
    tensors, meta = good_raw(tmp_path)
    p = write_raw(tmp_path / "c.safetensors", tensors, edit_part(meta, "motion", channels="6_501"))
    assert read_error(p) == f"cannot read encoding {p}: metadata field 'motion.channels' is not a JSON list"
    p = write_raw(tmp_path / "d.safetensors", tensors, edit_part(meta, "identity", pose_model=None, resolution=None))
    assert read_error(p) == f"cannot read encoding {p}: metadata 'identity' lacks 'resolution', 'pose_model'"
    p = write_raw(tmp_path / "e.safetensors", tensors, dict(meta, motion="[1, 2]"))
    assert read_error(p) == f"cannot read encoding {p}: metadata field 'motion' is not a JSON dict"


def test_missing_pieces_version_1(tmp_path):
    path, _ = v1_file(tmp_path / "v1.safetensors", make_encoding(with_quad=False))
    tensors, meta = safetensors_numpy.load_file(path), header_of(path)[1]["__metadata__"]
    del tensors["frames"]
    p = write_raw(tmp_path / "a.safetensors", tensors, meta)
    assert read_error(p) == f"cannot read encoding {p}: missing tensor(s) 'frames'"
    tensors = safetensors_numpy.load_file(path)
    p = write_raw(tmp_path / "b.safetensors", tensors, {k: v for k, v in meta.items() if k not in ("fps", "pose_model")})
    assert read_error(p) == f"cannot read encoding {p}: missing metadata field(s) 'fps', 'pose_model'"
    p = write_raw(tmp_path / "c.safetensors", tensors, dict(meta, channels="6_501"))
    assert read_error(p) == f"cannot read encoding {p}: metadata field 'channels' is not a JSON list"
    settings = json.loads(meta["settings"])
    p = write_raw(tmp_path / "d.safetensors", tensors, dict(meta, settings=json.dumps(dict(settings, cond_src=[1.0] * 16))))
    assert read_error(p) == (f"cannot read encoding {p}: cond_src must be 17 finite values (StyleFlow's condition), "
                             f"got shape [16]")


def test_shape_mismatches(tmp_path):
    tensors, meta = good_raw(tmp_path)
    p = write_raw(tmp_path / "a.safetensors", tensors, edit_part(meta, "motion", channels=list(CHANNELS[:30])))
    assert read_error(p) == (f"cannot read encoding {p}: tensor 'motion.frames' has shape [{T}, 35], expected "
                             f"[T, 33] (3 pose columns + 30 channels)")
    p = write_raw(tmp_path / "b.safetensors", tensors, edit_part(meta, "motion", num_frames=49))
    assert read_error(p) == f"cannot read encoding {p}: tensor 'motion.frames' has {T} rows but num_frames is 49"
    tensors, meta = good_raw(tmp_path)
    tensors["identity.id_latent"] = tensors["identity.id_latent"][0]
    p = write_raw(tmp_path / "c.safetensors", tensors, meta)
    assert read_error(p) == f"cannot read encoding {p}: id_latent has shape [{W_DIM}], expected [num_ws, w_dim]"
    tensors, meta = good_raw(tmp_path)
    tensors["motion.frames"] = tensors["motion.frames"].astype(np.float32)
    p = write_raw(tmp_path / "d.safetensors", tensors, meta)
    assert read_error(p) == f"cannot read encoding {p}: tensor 'motion.frames' is float32, expected float16"
    tensors, meta = good_raw(tmp_path)
    tensors["motion.offset_scale"] = tensors["motion.offset_scale"][:5]
    p = write_raw(tmp_path / "e.safetensors", tensors, meta)
    assert read_error(p) == f"cannot read encoding {p}: offset_scale must be {K} positive finite values (one per channel)"
    tensors, meta = good_raw(tmp_path)
    tensors["motion.offset_scale"][3] = 0.0
    p = write_raw(tmp_path / "f.safetensors", tensors, meta)
    assert read_error(p) == f"cannot read encoding {p}: offset_scale must be {K} positive finite values (one per channel)"


def test_non_finite(tmp_path):
    for name, index in (("motion.frames", (3, 7)), ("identity.id_latent", (0, 0)), ("identity.cond_src", (5,))):
        tensors, meta = good_raw(tmp_path)
        tensors[name][index] = np.nan
        p = write_raw(tmp_path / "a.safetensors", tensors, meta)
        assert read_error(p) == f"cannot read encoding {p}: tensor {name!r} has non-finite values"


def test_pose_model_is_bounded(tmp_path):
    """The RK4 step count is the only computation size an encoding carries: a hostile one is refused as soon
    as the encoding is made (or read)."""
    for model in ("styleflow-rk4-0", "styleflow-rk4-100000000", "truth"):
        with pytest.raises(EncodingError, match=r"^invalid encoding: pose_model '.*' (asks for|is not 'styleflow)"):
            make_encoding(pose_model=model)


def test_invalid_encoding_objects():
    with pytest.raises(EncodingError, match=r"^invalid encoding: offsets have shape \[50, 31\], expected \[50, 32\] "):
        make_encoding(offsets=np.zeros((T, K - 1)))
    with pytest.raises(EncodingError, match=r"^invalid encoding: pose_deg has non-finite values$"):
        make_encoding(pose_deg=np.full((T, 3), np.nan))
    with pytest.raises(EncodingError, match=r"^invalid encoding: channel name '6-501' is not 'layer_channel'"):
        make_encoding(channels=("6-501",) + CHANNELS[1:])
    with pytest.raises(EncodingError, match=r"^invalid encoding: quad and frame_size come together"):
        make_encoding(frame_size=None)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    path = str(tmp_path / "clip.safetensors")
    big = make_encoding(offsets=np.where(np.arange(K) == 4, 7e4, 0.0) * np.ones((T, 1)))
    with pytest.raises(EncodingError) as info:
        save_encoding(path, big)
    assert str(info.value) == (f"cannot save encoding {path}: frame 0 {CHANNELS[4]} = 70000 is outside the float16 "
                               f"range (±65504); check the encoder's settings")
    assert os.listdir(tmp_path) == []
    # A failure after the temp file exists (disk full at fsync) removes it and keeps the previous file intact.
    save_encoding(path, make_encoding())
    before = open(path, "rb").read()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(EncodingError) as info:
        save_encoding(path, make_encoding(fps=25))
    assert str(info.value) == f"cannot save encoding {path}: No space left on device"
    assert os.listdir(tmp_path) == ["clip.safetensors"] and open(path, "rb").read() == before
    missing_dir = str(tmp_path / "no" / "clip.safetensors")
    with pytest.raises(EncodingError, match=r"directory .* does not exist$"):
        save_encoding(missing_dir, make_encoding())


@pytest.mark.parametrize("version", ["1", "2"])
def test_identical_encodings_give_identical_files(tmp_path, version):
    """Saved by two processes (the safetensors library orders metadata by a per-process hash seed), equal
    encodings are equal byte for byte, and the safetensors library still reads them."""
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys; sys.path[:0] = [sys.argv[2], sys.argv[3]]; from test_encoding import make_encoding; "
            "from stylejax.io.encoding import save_encoding; save_encoding(sys.argv[1], make_encoding(), sys.argv[4])")
    repo = os.path.dirname(os.path.dirname(here))
    for name in ("a.enc", "b.enc"):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / name), here, repo, version],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    a, b = (tmp_path / "a.enc").read_bytes(), (tmp_path / "b.enc").read_bytes()
    assert a == b
    n, header = header_of(tmp_path / "a.enc")
    assert list(header)[0] == "__metadata__" and (8 + n) % 8 == 0
    assert list(header["__metadata__"])[:2] == ["format", "format_version"]
    assert set(safetensors_numpy.load(a)) == set(header) - {"__metadata__"}
    back = load_encoding(str(tmp_path / "a.enc"))
    np.testing.assert_array_equal(back.id_latent, make_encoding().id_latent.astype(np.float32))
    assert back.settings == make_encoding().settings or version == "1"


@pytest.mark.parametrize("over,message", [
    (dict(pose_model="styleflow-rk4-0"), "pose_model 'styleflow-rk4-0' asks for 0 RK4 steps, outside [1, 64]"),
    (dict(pose_model="styleflow-rk4-100000000"), "pose_model 'styleflow-rk4-100000000' asks for 100000000 RK4 steps, "
                                                 "outside [1, 64]"),
    (dict(settings={"rk4_steps": -1}), "settings 'rk4_steps' = -1 is not a whole number of RK4 steps in [1, 64]"),
    (dict(settings={"rk4_steps": True}), "settings 'rk4_steps' = True is not a whole number"),
    (dict(settings={"rk4_steps": 4}), "settings 'rk4_steps' = 4 contradicts pose_model 'styleflow-rk4-8'"),
    (dict(settings={"noise_mode": 3}), "settings 'noise_mode' = 3 is not one of const, random, none"),
    (dict(settings={"pose_rows": [0, 18]}), "settings 'pose_rows' = [0, 18] contradicts pose_model"),
    (dict(settings={"id_frame": T}), f"settings 'id_frame' = {T} is not a frame index in [0, {T})"),
    (dict(fps=1e9), "fps 1000000000.0 is not a frame rate in (0, 1000.0]"),
    (dict(resolution=1 << 20), "resolution 1048576 is not in [1, 65536] px"),
])
def test_settings_are_bounded_on_save_and_load(tmp_path, over, message):
    """Every setting the decoder reads is bounded by the file format, whichever side it comes from: made in
    memory, or read from a version 1 or 2 file written past save_encoding's checks."""
    with pytest.raises(EncodingError) as e:
        make_encoding(**over)
    assert str(e.value).startswith(f"invalid encoding: {message}")
    path = str(tmp_path / "ok.enc")
    for version in ("1", "2"):
        save_encoding(path, make_encoding(with_quad=False), version)
        tensors, meta = safetensors_numpy.load_file(path), header_of(path)[1]["__metadata__"]
        for key, value in over.items():
            if key == "settings":
                meta["settings"] = json.dumps({**json.loads(meta["settings"]), **value})
            elif version == "1":
                meta[key] = str(value)
            else:
                part = "identity" if key in ("pose_model", "resolution") else "motion"
                meta[part] = json.dumps({**json.loads(meta[part]), key: value})
        p = write_raw(tmp_path / f"v{version}.safetensors", tensors, meta)
        assert read_error(p).startswith(f"cannot read encoding {p}: {message}"), version
