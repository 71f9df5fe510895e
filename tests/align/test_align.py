"""Alignment stage on real footage (../shared/fixtures): geometry, stabilisation, roll, paste-back, bad input.

Only the first N_FRAMES frames are processed so the file stays well under a minute on a shared 2-core box.
"""
import glob
import itertools
import json
import os

import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("cv2")

from stylejax import align as al  # noqa: E402
from stylejax.io.video import VideoError, compose_side_by_side, iter_frames, probe, write_video  # noqa: E402

N_FRAMES = 24
ALIGNED = "4491301_aligned.mp4"
UNALIGNED = "4491301_unaligned.mp4"
# The full 1024² panel as a quad (TL, BL, BR, TR) in pixel-centre coordinates: corners sit on pixel edges.
FULL = np.array([[-0.5, -0.5], [-0.5, 1023.5], [1023.5, 1023.5], [1023.5, -0.5]])


@pytest.fixture(scope="module")
def tracked(request):
    """Landmarks of the first N_FRAMES of the aligned and unaligned clips, and the ground-truth A [T,2,3]."""
    import conftest  # the module-scoped cache cannot use the function-scoped `fixtures_dir`; same path

    fixtures = conftest.FIXTURES
    if not os.path.isdir(fixtures):
        pytest.skip("../shared/fixtures is absent")
    out = {}
    for name in (ALIGNED, UNALIGNED):
        lm, valid, info = al.track_landmarks(os.path.join(fixtures, name), max_frames=N_FRAMES, log=lambda m: None)
        assert valid.all() and len(valid) == N_FRAMES
        out[name] = lm
    with open(os.path.join(fixtures, "4491301_unaligned_transforms.json")) as f:
        out["A"] = np.array(json.load(f)["A"])[:N_FRAMES]
    return out


def _map(A, pts):
    return np.einsum("tij,tkj->tki", A[:, :, :2], pts) + A[:, None, :, 2]


def test_aligned_clip_recovers_full_frame(tracked):
    # (a) The clip was aligned by the paper's authors with their own landmarks/smoothing, so our quad can only
    # be close: tolerance 2% of the crop (20 px) mean, 4% max. Measured: ~9 px mean (see docs/alignment.md).
    tf = al.transforms_from_landmarks(tracked[ALIGNED], np.ones(N_FRAMES, bool))
    err = np.linalg.norm(tf["quad"] - FULL, axis=-1)
    print(f"(a) corner error vs full frame: mean {err.mean():.2f} px, max {err.max():.2f} px")
    assert err.mean() < 20 and err.max() < 40
    assert np.abs(tf["roll_deg"]).max() < 2.0  # the aligned panel is level


def test_quads_follow_ground_truth_transform(tracked):
    # (b) Quads found on the aligned panel, mapped through the known panel->canvas transform, must land on the
    # quads found on the canvas. Errors are converted to 1024-panel px by dividing by the transform's scale.
    A = tracked["A"]
    scale = np.hypot(A[:, 0, 0], A[:, 1, 0])
    ones = np.ones(N_FRAMES, bool)
    raw_a = al.transforms_from_landmarks(tracked[ALIGNED], ones, 0, 0)["quad"]
    raw_u = al.transforms_from_landmarks(tracked[UNALIGNED], ones, 0, 0)["quad"]
    err = np.linalg.norm(_map(A, raw_a) - raw_u, axis=-1) / scale[:, None]
    print(f"(b) per-frame (σ=0) corner error at 1024 scale: mean {err.mean():.2f} px, max {err.max():.2f} px")
    # Per-frame dlib noise on either clip is ~1 px per coordinate after refinement; the difference of two
    # such estimates: mean <= 2 px (the target), no corner further than 6 px.
    assert err.mean() <= 2.0 and err.max() <= 6.0
    # With stabilisation on both sides, smoothing the mapped quads with the same σ isolates the landmarks
    # from the synthetic clip's own (fast) motion, which any temporal filter lags behind.
    c = _map(A, raw_a).mean(1)
    mq = _map(A, raw_a)
    x = (mq[:, 3] + mq[:, 2] - mq[:, 0] - mq[:, 1]) / 4
    smoothed_mapped = al.quad_from_frame(al.smooth(c, 1.0), al.smooth(x, 3.0))
    smoothed_u = al.transforms_from_landmarks(tracked[UNALIGNED], ones, 1.0, 3.0)["quad"]
    err_s = np.linalg.norm(smoothed_mapped - smoothed_u, axis=-1) / scale[:, None]
    print(f"(b) stabilised corner error at 1024 scale: mean {err_s.mean():.2f} px, max {err_s.max():.2f} px")
    assert err_s.mean() <= 1.5 and err_s.max() <= 4.0


def test_roll_tracks_ground_truth_rotation(tracked):
    A = tracked["A"]
    gt_deg = np.degrees(np.arctan2(A[:, 1, 0], A[:, 0, 0]))
    ones = np.ones(N_FRAMES, bool)
    roll_a = al.transforms_from_landmarks(tracked[ALIGNED], ones, 0, 0)["roll_deg"]
    roll_u = al.transforms_from_landmarks(tracked[UNALIGNED], ones, 0, 0)["roll_deg"]
    err = roll_u - roll_a - gt_deg  # the canvas adds exactly the GT rotation to the panel's own roll
    print(f"roll error vs ground truth: mean |err| {np.abs(err).mean():.3f} deg, max {np.abs(err).max():.3f} deg "
          f"(GT range {gt_deg.min():.1f}..{gt_deg.max():.1f})")
    assert np.abs(err).mean() < 0.3 and np.abs(err).max() < 1.0
    # sign convention: the GT turns the panel by +6..+10 deg clockwise on screen (y down); roll grows by that
    assert np.all(roll_u - roll_a > 5)


def test_stabilisation_lowers_jitter(tracked):
    # (c) jitter = mean |q[t+1] - 2 q[t] + q[t-1]| over corners; STIT's σ (1, 3) vs none.
    ones = np.ones(N_FRAMES, bool)
    for name in (ALIGNED, UNALIGNED):
        raw = al.jitter(al.transforms_from_landmarks(tracked[name], ones, 0, 0)["quad"])
        smooth = al.jitter(al.transforms_from_landmarks(tracked[name], ones, 1, 3)["quad"])
        print(f"(c) {name}: jitter σ=0 {raw:.3f} px, σ=(1,3) {smooth:.3f} px, ratio {raw / smooth:.1f}")
        assert raw >= 2 * smooth


def test_smooth_keeps_steady_motion_and_averages_noise():
    t = np.arange(30.0)[:, None]
    line = t * np.array([[3.0, -1.0]]) + 5
    np.testing.assert_allclose(al.smooth(line, 3.0), line, atol=1e-9)  # no lag at the ends
    noise = np.random.default_rng(0).normal(size=(400, 2))
    assert al.smooth(noise, 3.0).std() < 0.5 * noise.std()
    np.testing.assert_array_equal(al.smooth(noise, 0.0), noise)


def test_keep_roll_and_gap_filling(tracked):
    lm = tracked[UNALIGNED]
    valid = np.ones(N_FRAMES, bool)
    valid[5:9] = False
    holes = lm.copy()
    holes[5:9] = 0  # garbage where the face is "missing": must not leak into the transforms
    tf = al.transforms_from_landmarks(holes, valid, 0, 0)
    ref = al.transforms_from_landmarks(lm, np.ones(N_FRAMES, bool), 0, 0)
    # interpolated frames lie between their neighbours
    lo = np.minimum(ref["quad"][4], ref["quad"][9]) - 1e-6
    hi = np.maximum(ref["quad"][4], ref["quad"][9]) + 1e-6
    assert np.all((tf["quad"][5:9] >= lo) & (tf["quad"][5:9] <= hi))
    kept = al.transforms_from_landmarks(lm, np.ones(N_FRAMES, bool), 0, 0, keep_roll=True)
    tl, bl, br, tr = np.moveaxis(kept["quad"], 1, 0)
    np.testing.assert_allclose(tl[:, 1], tr[:, 1], atol=1e-6)  # top edge horizontal
    np.testing.assert_allclose(np.linalg.norm(tr - tl, axis=-1),
                               np.linalg.norm(ref["quad"][:, 3] - ref["quad"][:, 0], axis=-1), rtol=1e-9)
    np.testing.assert_allclose(kept["roll_deg"], ref["roll_deg"])  # roll is recorded either way


@pytest.mark.parametrize("name", [UNALIGNED, ALIGNED])
def test_cli_outputs_and_paste_back(fixtures_dir, tmp_path, name):
    # (e) Align 3 frames at 1024 through the CLI, paste the unmodified crops back: inside the face mask the
    # original must come back. Two cubic resamplings at >= 1x sampling lose little: measured 51-56 dB; bound 40
    # dB (RMS < 2.6 levels). A 1 px misplacement of the paste costs > 6 dB, so the bound checks geometry.
    video = os.path.join(fixtures_dir, name)
    out = tmp_path / "aligned"
    assert al.main(["--video", video, "--out", str(out), "--max-frames", "3", "--preview"]) == 0
    tf = al.load_transforms(str(out))
    assert tf["quad"].shape == (3, 4, 2) and tf["landmarks"].shape == (3, 68, 2)
    assert tf["roll_deg"].shape == (3,) and tf["valid"].dtype == bool and tf["valid"].all()
    info = probe(video)
    assert float(tf["fps"]) == info.fps and tuple(tf["frame_size"]) == info.frame_size
    crops = np.load(out / "frames.npy", mmap_mode="r")
    assert crops.shape == (3, 1024, 1024, 3) and crops.dtype == np.uint8
    assert probe(str(out / "preview.mp4")).frame_size == info.frame_size
    assert not glob.glob(str(tmp_path / "*partial*"))
    for t, frame in enumerate(itertools.islice(iter_frames(video), 3)):
        # the streamed render used exactly the batch-computed (smoothed) transform stored in transforms.npz
        np.testing.assert_array_equal(crops[t], al.render_crop(frame, tf["quad"][t].astype(np.float64), 1024))
        pasted, mask = al.paste_back(frame, np.asarray(crops[t]), tf["quad"][t], return_mask=True)
        inside = mask >= 0.99
        assert inside.sum() > 10000
        psnr = 10 * np.log10(255.0 ** 2 / ((pasted.astype(float) - frame)[inside] ** 2).mean())
        shifted = al.paste_back(frame, np.asarray(crops[t]), tf["quad"][t] + [1.0, 0.0])
        psnr_shift = 10 * np.log10(255.0 ** 2 / ((shifted.astype(float) - frame)[inside] ** 2).mean())
        print(f"(e) {name} frame {t}: paste-back PSNR {psnr:.1f} dB (1 px off: {psnr_shift:.1f} dB)")
        assert psnr > 40 and psnr_shift < psnr - 6
        assert np.array_equal(pasted[~(mask > 0)], frame[~(mask > 0)])  # outside the mask: untouched
    # the paste CLI writes a video of the original size
    pasted_mp4 = tmp_path / "pasted.mp4"
    assert al.main(["paste", "--video", video, "--aligned", str(out), "--transforms",
                    str(out / "transforms.npz"), "--out", str(pasted_mp4)]) == 0
    assert probe(str(pasted_mp4)).frame_size == info.frame_size
    assert sum(1 for _ in iter_frames(str(pasted_mp4))) == 3
    # an existing output is never overwritten without --overwrite
    before = os.path.getmtime(out / "transforms.npz")
    assert al.main(["--video", video, "--out", str(out), "--max-frames", "2"]) == 2
    assert os.path.getmtime(out / "transforms.npz") == before


# ---------------------------------------------------------------------------------------------------------
# Bad input: one-line error, exit code 2, no output directory (complete-looking or partial) left behind.
# ---------------------------------------------------------------------------------------------------------

def _frames(fixtures_dir, n, size):
    import cv2

    return [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
            for f in itertools.islice(iter_frames(os.path.join(fixtures_dir, ALIGNED)), n)]


def _on_canvas(face, w, h, x=0, y=0):
    canvas = np.full((h, w, 3), 90, np.uint8)
    canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
    return canvas


def _bad_inputs(fixtures_dir, d):
    """{case: (path, extra CLI args, expected message fragment)}."""
    cases = {}
    cases["missing"] = (str(d / "nope.mp4"), [], "no such file")
    text = d / "notes.mp4"
    text.write_text("this is not a video\n")
    cases["text"] = (str(text), [], "not a video or corrupt")
    with open(os.path.join(fixtures_dir, ALIGNED), "rb") as f:
        src = f.read()
    rng = np.random.default_rng(0)
    head = bytearray(src)
    head[:256] = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
    (d / "corrupt_header.mp4").write_bytes(bytes(head))
    cases["corrupt_header"] = (str(d / "corrupt_header.mp4"), [], "not a video or corrupt")
    mid = bytearray(src)
    at = len(src) // 10
    mid[at:at + 20000] = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    (d / "corrupt_stream.mp4").write_bytes(bytes(mid))
    cases["corrupt_stream"] = (str(d / "corrupt_stream.mp4"), [], "corrupt")
    (d / "truncated.mp4").write_bytes(src[: len(src) // 2])
    cases["truncated"] = (str(d / "truncated.mp4"), [], "not a video or corrupt")
    (d / "empty.mp4").write_bytes(b"")
    cases["empty"] = (str(d / "empty.mp4"), [], "empty")
    (d / "zero.y4m").write_bytes(b"YUV4MPEG2 W64 H64 F30:1 Ip A1:1 C420jpeg\n")  # a stream header, no frames
    cases["zero_frames"] = (str(d / "zero.y4m"), [], "no video frames")
    noface = [np.full((240, 320, 3), v, np.uint8) for v in range(60, 120, 10)]
    write_video(str(d / "noface.mp4"), noface, 30)
    cases["no_face"] = (str(d / "noface.mp4"), ["--max-gap", "3"], "no face found")
    faces = _frames(fixtures_dir, 4, 256)
    gap = faces[:2] + [np.full((256, 256, 3), 90, np.uint8)] * 5 + faces[2:]
    write_video(str(d / "gap.mp4"), gap, 30)
    cases["missing_too_long"] = (str(d / "gap.mp4"), ["--max-gap", "3"], "face lost")
    small = [_on_canvas(f, 320, 240, 100, 60) for f in _frames(fixtures_dir, 2, 100)]
    write_video(str(d / "small.mp4"), small, 30)
    cases["too_small"] = (str(d / "small.mp4"), [], "face too small")
    return cases


def test_bad_inputs_give_one_line_errors(fixtures_dir, tmp_path, capsys):
    cases = _bad_inputs(fixtures_dir, tmp_path)
    seen = []
    for case, (path, extra, fragment) in cases.items():
        out = tmp_path / f"out_{case}"
        code = al.main(["--video", path, "--out", str(out), "--size", "64"] + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, case
        assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], (case, err)
        assert not glob.glob(str(out) + "*"), case  # no output, not even a partial one
        seen.append(f"{case}: {err[0]}")
    with capsys.disabled():
        print("\n" + "\n".join(seen))


def test_too_small_reports_size(fixtures_dir, tmp_path):
    small = [_on_canvas(f, 320, 240, 100, 60) for f in _frames(fixtures_dir, 1, 100)]
    write_video(str(tmp_path / "small.mp4"), small, 30)
    with pytest.raises(al.AlignError, match=r"eye-to-eye distance \d+\.\d px in frame 0 \(need >= 32 px"):
        al.track_landmarks(str(tmp_path / "small.mp4"), log=lambda m: None)


def test_gap_within_limit_is_interpolated(fixtures_dir, tmp_path):
    faces = _frames(fixtures_dir, 6, 256)
    frames = faces[:3] + [np.full((256, 256, 3), 90, np.uint8)] * 2 + faces[3:]
    write_video(str(tmp_path / "gap.mp4"), frames, 30)
    out = tmp_path / "out"
    tf = al.align_video(str(tmp_path / "gap.mp4"), str(out), size=64, max_gap=3, log=lambda m: None)
    np.testing.assert_array_equal(tf["valid"], [1, 1, 1, 0, 0, 1, 1, 1])
    assert np.isfinite(tf["quad"]).all() and np.load(out / "frames.npy").shape == (8, 64, 64, 3)


def test_several_faces_tracks_largest_and_says_so(fixtures_dir, tmp_path):
    big, small = _frames(fixtures_dir, 2, 300), _frames(fixtures_dir, 2, 200)
    frames = [np.concatenate([_on_canvas(s, 260, 300, 30, 50), b], 1) for b, s in zip(big, small)]
    write_video(str(tmp_path / "two.mp4"), frames, 30)
    messages = []
    lm, valid, _ = al.track_landmarks(str(tmp_path / "two.mp4"), log=messages.append)
    assert valid.all()
    assert len(messages) == 1 and messages[0].startswith("2 faces found in frame 0, tracking the largest")
    assert lm[:, :, 0].min() > 260  # the landmarks are on the big face, right of the small one


def test_video_errors_are_one_line(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    for path in (tmp_path / "x.txt", tmp_path / "missing.mp4", tmp_path):
        with pytest.raises(VideoError) as exc:
            probe(str(path))
        assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_writer_pads_odd_sizes_and_keeps_fps(tmp_path):
    frames = [np.full((31, 45, 3), v, np.uint8) for v in (0, 128, 255)]
    write_video(str(tmp_path / "odd.mp4"), frames, 25)
    info = probe(str(tmp_path / "odd.mp4"))
    assert info.frame_size == (46, 32) and info.fps == 25
    back = list(iter_frames(str(tmp_path / "odd.mp4")))
    assert len(back) == 3 and abs(int(back[1][:31, :45].mean()) - 128) <= 2


def test_held_out_clip_placed_by_known_transform(fixtures_dir, tmp_path):
    # Done-when check on other footage: 8775004 panels placed in a 1280x720 canvas by our own smooth
    # similarity transforms (scale 0.55-0.65, roll -8..+8 deg), H.264-encoded, then aligned again.
    import cv2

    n = 16
    t = np.arange(n)
    scale = 0.6 + 0.05 * np.sin(t / 5)
    theta = np.radians(8 * np.sin(t / 4))
    A = np.zeros((n, 2, 3))
    A[:, 0, 0] = A[:, 1, 1] = scale * np.cos(theta)
    A[:, 1, 0], A[:, 0, 1] = scale * np.sin(theta), -scale * np.sin(theta)
    A[:, 0, 2], A[:, 1, 2] = 330 + 6 * t, 40 + 2 * t
    panels = list(itertools.islice(iter_frames(os.path.join(fixtures_dir, "8775004_aligned.mp4")), n))
    canvas = [cv2.warpAffine(p, a, (1280, 720), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(70, 90, 110)) for p, a in zip(panels, A)]
    write_video(str(tmp_path / "placed.mp4"), canvas, 30)
    ones = np.ones(n, bool)
    lm_p, valid_p, _ = al.track_landmarks(os.path.join(fixtures_dir, "8775004_aligned.mp4"), max_frames=n,
                                          log=lambda m: None)
    lm_c, valid_c, _ = al.track_landmarks(str(tmp_path / "placed.mp4"), log=lambda m: None)
    assert valid_p.all() and valid_c.all()
    q_p = al.transforms_from_landmarks(lm_p, ones, 0, 0)["quad"]
    q_c = al.transforms_from_landmarks(lm_c, ones, 0, 0)["quad"]
    err = np.linalg.norm(_map(A, q_p) - q_c, axis=-1) / scale[:, None]
    roll_err = (al.transforms_from_landmarks(lm_c, ones, 0, 0)["roll_deg"]
                - al.transforms_from_landmarks(lm_p, ones, 0, 0)["roll_deg"] - np.degrees(theta))
    mq = _map(A, q_p)
    x = (mq[:, 3] + mq[:, 2] - mq[:, 0] - mq[:, 1]) / 4
    smoothed_mapped = al.quad_from_frame(al.smooth(mq.mean(1), 1.0), al.smooth(x, 3.0))
    smoothed_c = al.transforms_from_landmarks(lm_c, ones, 1.0, 3.0)["quad"]
    err_s = np.linalg.norm(smoothed_mapped - smoothed_c, axis=-1) / scale[:, None]
    print(f"held-out 8775004 at 1024 scale: per-frame corner error mean {err.mean():.2f} px, max {err.max():.2f} px; "
          f"stabilised mean {err_s.mean():.2f} px, max {err_s.max():.2f} px; roll error mean "
          f"{np.abs(roll_err).mean():.3f} deg")
    # The target (<= 2 px) holds for the stabilised transforms the stage outputs; single frames carry
    # ~1.5 px of dlib noise on each side, so their difference is held to a looser 3 px mean.
    assert err_s.mean() <= 2.0 and err_s.max() <= 5.0
    assert err.mean() <= 3.0 and err.max() <= 10.0
    assert np.abs(roll_err).mean() < 0.3


def test_side_by_side_video(tmp_path):
    a = [np.full((40, 60, 3), 200, np.uint8)] * 4
    b = [np.full((80, 80, 3), 20, np.uint8)] * 5
    write_video(str(tmp_path / "a.mp4"), a, 24)
    write_video(str(tmp_path / "b.mp4"), b, 30)
    n = compose_side_by_side(str(tmp_path / "ab.mp4"), [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")])
    info = probe(str(tmp_path / "ab.mp4"))
    assert n == 4 and info.fps == 24 and info.frame_size == (100, 40)  # b scaled to height 40 -> 40 wide
    frame = next(iter_frames(str(tmp_path / "ab.mp4")))
    assert abs(int(frame[:, :55].mean()) - 200) <= 3 and abs(int(frame[:, 65:].mean()) - 20) <= 3
