"""The generator delta file (stylejax/io/delta.py) and its forms (stages/finetune.make_delta): round trips, the
low-rank form against the SVD's own optimum, and one exact one-line error for every way a file can be wrong."""
import dataclasses
import os

import numpy as np
import pytest

from stylejax.errors import UserError
from stylejax.io.delta import Delta, DeltaError, delta_path_for, flatten, load_delta, save_delta, to_bytes, unflatten


@pytest.fixture(scope="module")
def generator():
    from stylejax.nets.generator import Generator, GeneratorConfig

    return Generator.random(GeneratorConfig(resolution=8, z_dim=8, w_dim=8, mapping_layers=1,
                                            channels=((4, 16), (8, 16))))


def fp(g):
    from stylejax.stages.base import fingerprint

    return fingerprint(g)


def tuned_weights(g, seed=0, rank=None):
    """Base synthesis weights plus a random change (of rank `rank` on every weight of two or more axes)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, p in flatten(g.params["synthesis"]).items():
        p = np.asarray(p)
        if rank and p.ndim >= 2:
            rows = int(np.prod(p.shape[:-1]))
            d = (rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, p.shape[-1]))).reshape(p.shape) * 0.01
        else:
            d = rng.normal(size=p.shape) * 0.01
        out[name] = (p + d).astype(np.float32)
    return unflatten(out)


def read_error(path, generator=None):
    with pytest.raises(DeltaError) as info:
        load_delta(path, generator)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, UserError)
    return msg


def test_full_delta_round_trip_applies_to_the_tuned_weights(generator, tmp_path):
    from stylejax.stages.finetune import make_delta

    tuned = tuned_weights(generator)
    delta = make_delta(generator.params["synthesis"], tuned, fp(generator), 0, "float32", {"steps": 3})
    path = str(tmp_path / "clip.delta")
    save_delta(path, delta)
    back = load_delta(path, generator)
    assert (back.form, back.base_fingerprint, back.settings, back.fingerprint) == \
        ("full", fp(generator), {"steps": 3}, delta.fingerprint)
    applied = flatten(back.apply(generator).params["synthesis"])
    for name, want in flatten(tuned).items():
        # base + (tuned - base) in float32: one rounding of each, |error| <= 2 ulp of the weight
        np.testing.assert_allclose(np.asarray(applied[name]), want, rtol=0, atol=4 * np.spacing(np.abs(want).max()))
    assert to_bytes(back) == open(path, "rb").read()  # equal deltas give equal bytes
    assert os.path.getsize(path) > back.nbytes == sum(t.nbytes for t in delta.tensors.values())


def test_low_rank_form_is_the_truncated_svd(generator):
    from stylejax.stages.finetune import make_delta

    exact = tuned_weights(generator, rank=2)
    delta = make_delta(generator.params["synthesis"], exact, fp(generator), 2, "float32")
    assert delta.form == "lowrank-2"
    dense = delta.check_fits(generator)
    base = flatten(generator.params["synthesis"])
    for name, want in flatten(exact).items():
        d = want - np.asarray(base[name])
        if d.ndim >= 2:  # a rank-2 change is kept exactly by rank-2 factors (to float32 rounding of the SVD)
            assert name + ".u" in delta.tensors and delta.tensors[name + ".u"].shape[1] == 2
            np.testing.assert_allclose(dense[name], d, rtol=0, atol=1e-6)
        else:
            assert name in delta.tensors  # 1-D and scalar parameters stay full
    # a change of higher rank: rank 1 keeps the best rank-1 approximation (Eckart-Young), no better, no worse
    full_rank = tuned_weights(generator, seed=1)
    one = make_delta(generator.params["synthesis"], full_rank, fp(generator), 1, "float32").check_fits(generator)
    name = "b8.conv1.weight"
    d = (np.asarray(flatten(full_rank)[name]) - np.asarray(base[name])).reshape(-1, 16)
    s = np.linalg.svd(d, compute_uv=False)
    err = np.linalg.norm(one[name].reshape(-1, 16) - d)
    assert err == pytest.approx(np.sqrt(np.sum(s[1:] ** 2)), rel=1e-4)


def test_float16_form_and_unchanged_parameters(generator):
    from stylejax.stages.finetune import make_delta

    tuned = flatten(tuned_weights(generator))
    tuned["const"] = np.asarray(flatten(generator.params["synthesis"])["const"])  # not changed: left out
    delta = make_delta(generator.params["synthesis"], unflatten(tuned), fp(generator), 0, "float16")
    assert "const" not in delta.tensors and delta.dtype == "float16"
    assert all(t.dtype == np.float16 for t in delta.tensors.values())
    with pytest.raises(UserError) as e:
        make_delta(generator.params["synthesis"], unflatten(tuned), fp(generator), 0, "bfloat16")
    assert str(e.value) == "--config.finetune.delta_dtype must be one of float16, float32, got 'bfloat16'"


def test_delta_path_is_beside_the_encoding():
    assert delta_path_for("/a/clip.enc") == "/a/clip.delta"
    assert delta_path_for("/a/clip.safetensors") == "/a/clip.delta"
    assert delta_path_for("clip") == "clip.delta"


def test_bad_files_are_refused_with_one_line(generator, tmp_path):
    from stylejax.stages.finetune import make_delta

    delta = make_delta(generator.params["synthesis"], tuned_weights(generator), fp(generator), 0, "float16")
    good = str(tmp_path / "good.delta")
    save_delta(good, delta)

    def write(name, obj):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(obj if isinstance(obj, bytes) else to_bytes(obj))
        return path

    missing = str(tmp_path / "missing.delta")
    assert read_error(missing) == f"cannot read delta {missing}: no such file"
    text = write("text.delta", b"not a delta at all")
    assert read_error(text) == (f"cannot read delta {text}: not a safetensors file (deltas are written by the "
                                "finetune stage of python -m stylejax.encode)")
    data = open(good, "rb").read()
    cut = write("cut.delta", data[:len(data) - 10])
    assert read_error(cut).startswith(f"cannot read delta {cut}: ")
    other = write("other.delta", dataclasses.replace(delta, base_fingerprint="f" * 16))
    assert read_error(other, generator) == (f"delta {other} was tuned from generator {'f' * 16}, this generator is "
                                            f"{fp(generator)}: use the delta made with this generator (or --delta none)")
    stray = write("stray.delta", dataclasses.replace(delta, tensors={**delta.tensors,
                                                                     "b8.conv9.weight": np.zeros(3, np.float16)}))
    assert read_error(stray, generator) == (f"delta {stray}: tensor 'b8.conv9.weight' is not a synthesis parameter "
                                            "of the generator; the file is damaged or for another architecture")
    shape = write("shape.delta", dataclasses.replace(delta, tensors={**delta.tensors,
                                                                     "b8.conv1.bias": np.zeros(3, np.float16)}))
    assert read_error(shape, generator) == (f"delta {shape}: tensor 'b8.conv1.bias' gives shape [3], expected [16] "
                                            "for the parameter; the file is damaged or for another architecture")
    nan = write("nan.delta", dataclasses.replace(delta, tensors={**delta.tensors,
                                                                 "const": np.full((4, 4, 16), np.nan, np.float16)}))
    assert read_error(nan) == f"cannot read delta {nan}: tensor 'const' has non-finite values"
    lone = write("lone.delta", Delta(fp(generator), {"b8.conv1.weight.u": np.zeros((144, 2), np.float16)}))
    assert read_error(lone) == f"cannot read delta {lone}: low-rank tensor 'b8.conv1.weight.u' has no 'b8.conv1.weight.v'"
    assert load_delta(good, generator).fingerprint == delta.fingerprint
