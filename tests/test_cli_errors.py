"""Every user error of every command is one line: `python -m stylejax.align [paste]`, `python -m convert`,
`python -m stylejax.generate` run in subprocesses with bad inputs and dangerous output paths.

Each case asserts exit status 2, stderr exactly one line `error: ...` holding the expected words (no
traceback, no warning lines, never a hint to load with allow_pickle), and that the sandbox folder is
byte-for-byte unchanged afterwards: no output, no temporary files, no input touched. The commands run with
the sandbox as current directory and HOME, so even a regression could not reach the real ones.
"""
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import conftest
from conftest import DATA, REPO

ALIGN = ["-m", "stylejax.align"]
PASTE = ["-m", "stylejax.align", "paste"]
GENERATE = ["-m", "stylejax.generate", "--checkpoint", "ckpt"]
CONVERT = ["-m", "convert", "stylegan2"]
# subprocess.run from a process that has imported JAX: fork+exec at once, nothing of JAX runs in the child
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")


def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link -> " + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha1(f.read()).hexdigest()
            else:
                out[rel] = "special"
    return out


def _ffmpeg():
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    from PIL import Image

    from convert.stylegan2 import from_rosinality
    from stylejax.io.transforms import save_transforms
    from stylejax.io.video import write_video
    from stylejax.io.checkpoint import save_generator
    from stylejax.nets.generator import Generator

    d = tmp_path_factory.mktemp("sandbox")
    (d / "home").mkdir()
    (d / "home" / "notes.txt").write_text("home file")
    # a tiny converted generator (32 px, 8 ws of 64) and damaged copies of it
    npz = np.load(os.path.join(DATA, "stylegan2_small.npz"))
    sd = {k[3:]: npz[k] for k in npz.files if k.startswith("sd/")}
    save_generator(Generator(*from_rosinality(sd, npz["w_avg"])), str(d / "ckpt"))
    for name, edit in (("cfg_type", lambda m: m["config"].update(resolution="big")),
                       ("cfg_key", lambda m: m["config"].update(learning_rate=0.1)),
                       ("cfg_shape", lambda m: m["config"].update(w_dim=32)),
                       ("cfg_json", None)):
        shutil.copytree(d / "ckpt", d / name)
        if edit is None:
            (d / name / "config.json").write_text('{"kind": "stylegan2", "config": ')
        else:
            meta = json.loads((d / name / "config.json").read_text())
            edit(meta)
            (d / name / "config.json").write_text(json.dumps(meta))
    # videos
    write_video(str(d / "flat.mp4"), [np.full((240, 320, 3), v, np.uint8) for v in (60, 70, 80)], 10)
    write_video(str(d / "tiny.mp4"), [np.full((8, 8, 3), v, np.uint8) for v in (60, 70)], 10)
    write_video(str(d / "small.mp4"), [np.full((64, 64, 3), v, np.uint8) for v in (60, 70, 80)], 10)
    write_video(str(d / "crops_rect.mp4"), [np.full((32, 48, 3), v, np.uint8) for v in (60, 70, 80)], 10)
    (d / "zero.y4m").write_bytes(b"YUV4MPEG2 W64 H64 F30:1 Ip A1:1 C420jpeg\n")
    write_video(str(d / "wide.mp4"), [np.full((48, 64, 3), v, np.uint8) for v in (60, 70)], 10)
    r = subprocess.run([_ffmpeg(), "-v", "error", "-y", "-display_rotation:v:0", "90", "-i", str(d / "wide.mp4"),
                        "-c", "copy", str(d / "rotated.mp4")], capture_output=True)
    if r.returncode != 0:
        (d / "rotated.mp4").unlink(missing_ok=True)
    fixtures = conftest.FIXTURES
    if os.path.isdir(fixtures):  # a real face stored sideways
        import cv2

        from stylejax.io.video import iter_frames

        faces = [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA)
                 for f in itertools.islice(iter_frames(os.path.join(fixtures, "4491301_aligned.mp4")), 2)]
        write_video(str(d / "sideways.mp4"), [np.ascontiguousarray(np.rot90(f)) for f in faces], 10)
    (d / "viddir").mkdir()
    shutil.copy(d / "flat.mp4", d / "viddir" / "clip.mp4")
    (d / "viddir" / "notes.txt").write_text("a neighbour of the input")
    os.symlink("viddir", d / "viddir_link")
    os.symlink("small.mp4", d / "small_link.mp4")
    # an aligned folder for the 64x64 video (what `align` writes), and a finished paste
    (d / "aligned").mkdir()
    np.save(d / "aligned" / "frames.npy", np.full((3, 32, 32, 3), 128, np.uint8))
    quad = np.array([[16, 16], [16, 48], [48, 48], [48, 16]], np.float64)
    save_transforms(str(d / "aligned" / "transforms.npz"), quad=np.stack([quad] * 3),
                    frame_size=np.array([64, 64], np.int32))
    shutil.copy(d / "small.mp4", d / "pasted.mp4")
    # crops that do not match the 3 transforms one to one (were pasted silently, the shorter run)
    for name, n in (("aligned_short", 2), ("aligned_long", 4)):
        (d / name).mkdir()
        np.save(d / name / "frames.npy", np.full((n, 32, 32, 3), 128, np.uint8))
    write_video(str(d / "crops_short.mp4"), [np.full((32, 32, 3), v, np.uint8) for v in (60, 70)], 10)
    write_video(str(d / "crops_long.mp4"), [np.full((32, 32, 3), v, np.uint8) for v in (60, 70, 80, 90)], 10)
    write_video(str(d / "short.mp4"), [np.full((64, 64, 3), v, np.uint8) for v in (60, 70)], 10)
    os.mkfifo(d / "pipe.mp4")
    # bad array files
    (d / "text.npy").write_text("these are my notes, not an array\n")
    (d / "text.npz").write_text("these are my notes, not an archive\n")
    np.savez(d / "ws.npz", ws=np.zeros((1, 8, 64), np.float32))
    np.save(d / "ws_empty.npy", np.zeros((0, 8, 64), np.float32))
    np.save(d / "ws_complex.npy", np.ones((1, 8, 64), np.complex64) * (0.5 + 2j))  # was cast: imaginary dropped
    np.save(d / "ws_strings.npy", np.full((1, 8, 64), "0.5"))  # was parsed, or a traceback
    (d / "wsdir").mkdir()
    np.save(d / "wsdir" / "ws.npy", np.zeros((1, 8, 64), np.float32))
    os.symlink("wsdir", d / "wsdir_link")
    # folders that are not ours to replace
    (d / "emptydir").mkdir()
    (d / "mine").mkdir()
    (d / "mine" / "thesis.tex").write_text("irreplaceable")
    (d / "mine_pngs").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "mine_pngs" / "seed0000.png")  # same name as ours
    (d / "mine_ckpt").mkdir()
    (d / "mine_ckpt" / "params").mkdir()
    (d / "mine_ckpt" / "params" / "x").write_text("my params")
    (d / "mine_ckpt" / "config.json").write_text('{"lr": 0.1}')  # the lost config.json
    shutil.copytree(d / "ckpt", d / "ckpt_plus")  # a checkpoint the user added a file to
    (d / "ckpt_plus" / "README.txt").write_text("my notes on this model")
    # convert sources (output refusals happen before the source is read)
    (d / "srcdir").mkdir()
    (d / "srcdir" / "g.pt").write_bytes(b"\x80\x02not really a checkpoint")
    os.symlink("srcdir", d / "srcdir_link")
    return d


def _cases():
    cases = {
        # ---- align: output paths
        "align/out-empty-overwrite": (ALIGN + ["--video", "flat.mp4", "--out", "", "--overwrite"], "--out is empty"),
        "align/out-dot-overwrite": (ALIGN + ["--video", "flat.mp4", "--out", ".", "--overwrite"],
                                    "is the current directory"),
        "align/out-home-overwrite": (ALIGN + ["--video", "flat.mp4", "--out", "~", "--overwrite"], "your home directory"),
        "align/out-root": (ALIGN + ["--video", "flat.mp4", "--out", "/"], "filesystem root"),
        "align/out-link-to-input-folder": (ALIGN + ["--video", "viddir/clip.mp4", "--out", "viddir_link", "--overwrite"],
                                           "is or contains the input"),
        "align/out-foreign-folder": (ALIGN + ["--video", "flat.mp4", "--out", "mine", "--overwrite"],
                                     "replaces only an earlier output"),
        "align/out-checkpoint-folder": (ALIGN + ["--video", "flat.mp4", "--out", "ckpt", "--overwrite"],
                                        "replaces only an earlier output"),
        "align/out-exists": (ALIGN + ["--video", "flat.mp4", "--out", "aligned"], "pass --overwrite"),
        "align/out-unwritable": (ALIGN + ["--video", "flat.mp4", "--out", "/proc/stylejax-test"], "cannot write"),
        "align/out-no-parent": (ALIGN + ["--video", "flat.mp4", "--out", "nope/out"], "does not exist"),
        # ---- align: inputs and flags
        "align/tiny-video": (ALIGN + ["--video", "tiny.mp4", "--out", "o"], "only 8x8 px: too small"),
        "align/tiny-video-no-min": (ALIGN + ["--video", "tiny.mp4", "--out", "o", "--min-eye-dist", "0"],
                                    "too small for the face detector"),
        "align/no-face": (ALIGN + ["--video", "flat.mp4", "--out", "o", "--max-gap", "1"], "no face found"),
        "align/video-is-dir": (ALIGN + ["--video", "viddir", "--out", "o"], "is a directory"),
        "align/zero-frames": (ALIGN + ["--video", "zero.y4m", "--out", "o"], "contains no video frames"),
        "align/nan-sigma": (ALIGN + ["--video", "flat.mp4", "--out", "o", "--center-sigma", "nan"],
                            "--center-sigma must be a finite number >= 0"),
        "align/negative-sigma": (ALIGN + ["--video", "flat.mp4", "--out", "o", "--axes-sigma", "-1"],
                                 "--axes-sigma must be a finite number >= 0"),
        "align/max-frames-0": (ALIGN + ["--video", "flat.mp4", "--out", "o", "--max-frames", "0"],
                               "--max-frames must be >= 1"),
        "align/size-odd": (ALIGN + ["--video", "flat.mp4", "--out", "o", "--size", "15"], "--size must be an even"),
        "align/size-huge": (ALIGN + ["--video", "flat.mp4", "--out", "o", "--size", "30000"], "from 16 to 4096"),
        "align/bad-flag": (ALIGN + ["--video", "flat.mp4", "--out", "o", "--size", "big"], "--help"),
        # ---- paste
        "paste/out-link-to-input": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                             "--out", "small_link.mp4", "--overwrite"], "is or contains the input"),
        "paste/out-inside-aligned": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                              "--out", "aligned/frames.npy", "--overwrite"], "inside the input folder"),
        "paste/out-exists": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                      "--out", "pasted.mp4"], "pass --overwrite"),
        "paste/out-pipe": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                    "--out", "pipe.mp4", "--overwrite"], "not a regular file"),
        "paste/out-dir": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                   "--out", "emptydir"], "is a directory; give a file name"),
        "paste/out-unwritable": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                          "--out", "/proc/stylejax-test.mp4"], "cannot write"),
        "paste/out-empty": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                     "--out", ""], "--out is empty"),
        "paste/aligned-text-npy": (PASTE + ["--video", "small.mp4", "--aligned", "text.npy", "--transforms", "aligned",
                                            "--out", "p.mp4"], "not a .npy array file"),
        "paste/aligned-empty-dir": (PASTE + ["--video", "small.mp4", "--aligned", "emptydir", "--transforms", "aligned",
                                             "--out", "p.mp4"], "emptydir holds no frames.npy"),
        "paste/transforms-text": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "text.npz",
                                           "--out", "p.mp4"], "not an .npz archive"),
        "paste/transforms-npy": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms",
                                          "aligned/frames.npy", "--out", "p.mp4"], "not an .npz archive"),
        "paste/transforms-empty-dir": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms",
                                                "emptydir", "--out", "p.mp4"], "holds no transforms.npz"),
        "paste/other-video": (PASTE + ["--video", "tiny.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                       "--out", "p.mp4"], "is for 64x64 px frames but tiny.mp4 is 8x8 px"),
        "paste/non-square-crops": (PASTE + ["--video", "small.mp4", "--aligned", "crops_rect.mp4", "--transforms",
                                            "aligned", "--out", "p.mp4"], "crops in crops_rect.mp4 are 48x32 px"),
        "paste/fewer-crops": (PASTE + ["--video", "small.mp4", "--aligned", "aligned_short", "--transforms", "aligned",
                                       "--out", "p.mp4"],
                              "aligned_short holds fewer crops (2) than aligned has frames (3)"),
        "paste/more-crops": (PASTE + ["--video", "small.mp4", "--aligned", "aligned_long/frames.npy", "--transforms",
                                      "aligned", "--out", "p.mp4"], "holds more crops (4) than aligned has frames (3)"),
        "paste/fewer-crops-video": (PASTE + ["--video", "small.mp4", "--aligned", "crops_short.mp4", "--transforms",
                                             "aligned", "--out", "p.mp4"],
                                    "crops_short.mp4 holds fewer crops (2) than aligned has frames (3)"),
        "paste/more-crops-video": (PASTE + ["--video", "small.mp4", "--aligned", "crops_long.mp4", "--transforms",
                                            "aligned", "--out", "p.mp4"],
                                   "crops_long.mp4 holds more crops (at least 4) than aligned has frames (3)"),
        "paste/short-video": (PASTE + ["--video", "short.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                       "--out", "p.mp4"], "short.mp4 has fewer frames (2) than aligned (3)"),
        "paste/nan-feather": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                       "--out", "p.mp4", "--feather", "nan"], "--feather must be a finite number"),
        "paste/negative-feather": (PASTE + ["--video", "small.mp4", "--aligned", "aligned", "--transforms", "aligned",
                                            "--out", "p.mp4", "--feather", "-1"], "--feather must be a finite number"),
        # ---- generate
        "generate/seeds-huge": (GENERATE + ["--seeds", "0-100000000", "--outdir", "o"], "more than 100000 in one run"),
        "generate/seeds-many-ranges": (GENERATE + ["--seeds", "0-99999,0-99999", "--outdir", "o"],
                                       "more than 100000 images in one run"),
        "generate/seeds-bad": (GENERATE + ["--seeds", "3-1", "--outdir", "o"], "bad --seeds"),
        "generate/batch-0": (GENERATE + ["--seeds", "0", "--batch", "0", "--outdir", "o"], "--batch must be >= 1"),
        "generate/trunc-nan": (GENERATE + ["--seeds", "0", "--trunc", "nan", "--outdir", "o"], "--trunc must be"),
        "generate/trunc-cutoff-negative": (GENERATE + ["--seeds", "0", "--trunc-cutoff", "-1", "--outdir", "o"],
                                           "--trunc-cutoff must be >= 0"),
        "generate/ws-empty-arg": (GENERATE + ["--ws", "", "--outdir", "o"], "--ws is empty"),
        "generate/ws-npz": (GENERATE + ["--ws", "ws.npz", "--outdir", "o"], "an .npz archive"),
        "generate/ws-text": (GENERATE + ["--ws", "text.npy", "--outdir", "o"], "not a .npy array file"),
        "generate/ws-no-latents": (GENERATE + ["--ws", "ws_empty.npy", "--outdir", "o"], "holds no latents"),
        "generate/ws-dir": (GENERATE + ["--ws", "wsdir", "--outdir", "o"], "it is a directory"),
        "generate/ws-complex": (GENERATE + ["--ws", "ws_complex.npy", "--outdir", "o"],
                                "--ws ws_complex.npy holds complex64 values; give real floating-point latents"),
        "generate/ws-strings": (GENERATE + ["--ws", "ws_strings.npy", "--outdir", "o"],
                                "--ws ws_strings.npy holds <U3 values; give real floating-point latents"),
        "generate/ws-with-trunc": (GENERATE + ["--ws", "wsdir/ws.npy", "--trunc", "0.7", "--outdir", "o"],
                                   "--trunc and --trunc-cutoff apply to --seeds only"),
        "generate/ws-with-trunc-cutoff": (GENERATE + ["--ws", "wsdir/ws.npy", "--trunc-cutoff", "4", "--outdir", "o"],
                                          "--trunc and --trunc-cutoff apply to --seeds only"),
        "generate/outdir-file": (GENERATE + ["--seeds", "0", "--outdir", "text.npy"], "is a file"),
        "generate/outdir-foreign": (GENERATE + ["--seeds", "0", "--outdir", "mine", "--overwrite"],
                                    "replaces only an earlier output"),
        "generate/outdir-foreign-pngs": (GENERATE + ["--seeds", "0", "--outdir", "mine_pngs", "--overwrite"],
                                         "replaces only an earlier output"),
        "generate/outdir-in-checkpoint": (GENERATE + ["--seeds", "0", "--outdir", "ckpt/images"],
                                          "inside the input folder"),
        "generate/outdir-link-to-ws-folder": (GENERATE + ["--ws", "wsdir/ws.npy", "--outdir", "wsdir_link",
                                                          "--overwrite"], "is or contains the input"),
        "generate/outdir-unwritable": (GENERATE + ["--seeds", "0", "--outdir", "/proc/stylejax-test"], "cannot write"),
        "generate/outdir-dot": (GENERATE + ["--seeds", "0", "--outdir", ".", "--overwrite"], "current directory"),
        "generate/config-type": (["-m", "stylejax.generate", "--checkpoint", "cfg_type", "--seeds", "0", "--outdir", "o"],
                                 "cfg_type/config.json: config key 'resolution' must be an integer"),
        "generate/config-key": (["-m", "stylejax.generate", "--checkpoint", "cfg_key", "--seeds", "0", "--outdir", "o"],
                                "cfg_key/config.json: unknown config key 'learning_rate'"),
        "generate/config-json": (["-m", "stylejax.generate", "--checkpoint", "cfg_json", "--seeds", "0", "--outdir",
                                  "o"], "cfg_json/config.json: malformed JSON"),
        "generate/config-vs-params": (["-m", "stylejax.generate", "--checkpoint", "cfg_shape", "--seeds", "0",
                                       "--outdir", "o"], "w_avg has shape (64,), expected (32,)"),
        "generate/checkpoint-is-aligned": (["-m", "stylejax.generate", "--checkpoint", "aligned", "--seeds", "0",
                                            "--outdir", "o"], "no config.json"),
        # ---- convert
        "convert/out-foreign-config": (CONVERT + ["--src", "srcdir/g.pt", "--out", "mine_ckpt", "--overwrite"],
                                       "replaces only an earlier output"),
        "convert/out-foreign": (CONVERT + ["--src", "srcdir/g.pt", "--out", "mine", "--overwrite"],
                                "replaces only an earlier output"),
        "convert/out-checkpoint-with-user-file": (CONVERT + ["--src", "srcdir/g.pt", "--out", "ckpt_plus",
                                                             "--overwrite"], "replaces only an earlier output"),
        "convert/out-aligned": (CONVERT + ["--src", "srcdir/g.pt", "--out", "aligned", "--overwrite"],
                                "replaces only an earlier output"),
        "convert/out-wrong-kind": (["-m", "convert", "e4e", "--src", "srcdir/g.pt", "--out", "ckpt", "--overwrite"],
                                   "replaces only an earlier output of this command (e4e checkpoint"),
        "convert/out-exists": (CONVERT + ["--src", "srcdir/g.pt", "--out", "ckpt"], "pass --overwrite"),
        "convert/out-link-to-src-folder": (CONVERT + ["--src", "srcdir/g.pt", "--out", "srcdir_link", "--overwrite"],
                                           "is or contains the input"),
        "convert/out-is-src": (CONVERT + ["--src", "srcdir/g.pt", "--out", "srcdir_link/g.pt", "--overwrite"],
                               "is or contains the input"),
        "convert/out-empty": (CONVERT + ["--src", "srcdir/g.pt", "--out", "", "--overwrite"], "--out is empty"),
        "convert/out-dot": (CONVERT + ["--src", "srcdir/g.pt", "--out", ".", "--overwrite"], "current directory"),
        "convert/out-home": (CONVERT + ["--src", "srcdir/g.pt", "--out", "~", "--overwrite"], "your home directory"),
        "convert/out-unwritable": (CONVERT + ["--src", "srcdir/g.pt", "--out", "/proc/stylejax-test"], "cannot write"),
        "convert/src-dir": (CONVERT + ["--src", "srcdir", "--out", "o"], "--src srcdir is a directory"),
        "convert/src-missing": (CONVERT + ["--src", "nope.pt", "--out", "o"], "--src nope.pt: no such file"),
        "convert/src-text": (CONVERT + ["--src", "text.npy", "--out", "o"], "text.npy: not a StyleGAN2 checkpoint"),
        "convert/lr-mul-nan": (CONVERT + ["--src", "srcdir/g.pt", "--out", "o", "--mapping-lr-mul", "nan"],
                               "--mapping-lr-mul must be a finite number > 0"),
        "convert/unknown-network": (["-m", "convert", "stylegan3", "--src", "srcdir/g.pt", "--out", "o"],
                                    "unknown network 'stylegan3'"),
    }
    return cases


CASES = _cases()
NEEDS = {"align/out-unwritable": "/proc", "paste/out-unwritable": "/proc", "generate/outdir-unwritable": "/proc",
         "convert/out-unwritable": "/proc"}


def run_cli(sandbox, args):
    env = dict(os.environ, HOME=str(sandbox / "home"), PYTHONPATH=REPO)
    return subprocess.run([sys.executable, *args], cwd=sandbox, env=env, capture_output=True, text=True, timeout=120)


def check_one_line(sandbox, args, fragment):
    before = tree(sandbox)
    r = run_cli(sandbox, args)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert fragment in lines[0], lines[0]
    assert "allow_pickle" not in lines[0] and "Traceback" not in r.stderr
    assert tree(sandbox) == before, "files were created, changed or removed"
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_and_touches_nothing(sandbox, case):
    if case in NEEDS and not os.path.isdir(NEEDS[case]):
        pytest.skip(f"needs {NEEDS[case]}")
    args, fragment = CASES[case]
    print(check_one_line(sandbox, args, fragment))


def test_rotated_video_is_reported_with_its_displayed_size(sandbox):
    # a phone video with rotation metadata: ffmpeg turns it upright, and imageio-ffmpeg's warning about the
    # turned size must not become a second stderr line
    if not (sandbox / "rotated.mp4").exists():
        pytest.skip("this ffmpeg cannot write rotation metadata")
    check_one_line(sandbox, ALIGN + ["--video", "rotated.mp4", "--out", "o", "--min-eye-dist", "0"],
                   "its frames are only 48x64 px")


def test_sideways_face_says_how_to_rotate(sandbox):
    if not (sandbox / "sideways.mp4").exists():
        pytest.skip("../shared/fixtures is absent")
    check_one_line(sandbox, ALIGN + ["--video", "sideways.mp4", "--out", "o", "--size", "64"],
                   "a face is found when the frames are turned 90° clockwise")


def test_generate_overwrite_replaces_only_its_own_folder(sandbox, tmp_path):
    # the one success path here: a second run with --overwrite replaces the first run's folder whole
    out = tmp_path / "gen"
    args = GENERATE[:3] + [str(sandbox / "ckpt"), "--seeds", "0-1", "--outdir", str(out)]
    r = run_cli(sandbox, args)
    assert r.returncode == 0, r.stderr
    first = tree(out)
    assert sorted(first) == ["seed0000.png", "seed0001.png"]
    check_one_line(sandbox, args[:-4] + ["--seeds", "2", "--outdir", str(out)], "pass --overwrite")
    assert tree(out) == first
    r = run_cli(sandbox, args[:-4] + ["--seeds", "2", "--outdir", str(out), "--overwrite"])
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["seed0002.png"] and sorted(os.listdir(tmp_path)) == ["gen"]
