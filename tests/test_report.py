"""The quality report: report.html is self-contained (every image inlined, nothing fetched) and renders in a
real headless browser (Debian's chromium) with every image decoded; skipped with the reason when no browser is
installed. metrics.csv holds one row a frame."""
import csv
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from stylejax import report

T, K = 12, 32
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def write_example(folder):
    rng = np.random.RandomState(0)
    cols = {"frame": np.arange(T), "psnr_db": 30 + rng.rand(T), "ssim": 0.9 + 0.01 * rng.rand(T),
            "lpips": 0.1 * rng.rand(T), "arcface_cos": np.full(T, np.nan), "dlib_id_distance": 0.05 * rng.rand(T),
            "landmark_px": rng.rand(T), "tlp": np.r_[np.nan, rng.rand(T - 1)], "tlm_px": np.r_[np.nan, rng.rand(T - 1)]}
    summary = {"frames": T, "psnr_db": 30.5, "psnr_db_min": 30.0, "ssim": 0.9, "lpips": 0.05, "bytes_per_frame": 31.2,
               "motion_coding": "delta-zstd", "dlib_id_distance": 0.03, "landmark_px": 0.5, "tlp": 0.4}
    stills = [(f"frame {t}", rng.randint(0, 255, (32, 96, 3)).astype(np.uint8)) for t in (0, 5, 11)]
    report.write_report(str(folder), cols, summary, rng.randn(T, 3), rng.randn(T, K),
                        [f"6_{k}" for k in range(K)], stills, {"config": {"x": 1}, "note": "<script>alert(1)</script>"})
    return cols


def test_report_files(tmp_path):
    cols = write_example(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv", "metrics.json", "metrics.png", "report.html",
                                            "trajectories.png"]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == T and rows[3]["frame"] == "3" and rows[0]["tlp"] == "" and rows[0]["arcface_cos"] == ""
    assert float(rows[3]["psnr_db"]) == pytest.approx(cols["psnr_db"][3], rel=1e-5)
    assert report.is_report_dir(str(tmp_path))
    (tmp_path / "notes.txt").write_text("mine")  # a user's file in it: no longer ours to replace
    assert not report.is_report_dir(str(tmp_path))
    (tmp_path / "notes.txt").unlink()
    page = (tmp_path / "report.html").read_text()
    # self-contained: 2 plots and 3 stills as data URIs, nothing to fetch; settings are escaped, not executed
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 5
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script>" not in page and "&lt;script&gt;" in page


def browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless browser installed ({', '.join(BROWSERS)}); on Debian: apt-get install chromium")


def run_browser(exe, *args, timeout=120):
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", "--allow-file-access-from-files", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_report_renders_in_a_headless_browser(tmp_path):
    import cv2

    exe = browser()
    write_example(tmp_path)
    page = tmp_path / "report.html"
    # a copy that records, once loaded, whether each image loaded (complete, with a width: a missing file or a
    # src the browser cannot fetch gives 0)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace(
        "</body>", "<script>window.addEventListener('load', () => document.body.setAttribute('data-images', "
                   "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0 ? 1 : 0).join('')));"
                   "</script></body>"))
    dom = run_browser(exe, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r'data-images="([01]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    assert found.group(1) == "11111"  # 2 plots and 3 stills, every one decoded
    shot = tmp_path / "shot.png"
    out = run_browser(exe, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
    assert shot.exists(), out.stderr[-2000:]
    image = cv2.imread(str(shot))
    assert image.shape == (2400, 1200, 3)
    assert image.std() > 10  # not a blank page: text, plots and stills drawn
