"""The quality report of an encoding: `metrics.csv` (one row a frame), `metrics.json` (the summary), PNG plots
(per-frame metrics; the 35 parameter trajectories) and one self-contained `report.html` (images inlined as
data URIs, no network access needed) with the summary table, the plots, stills of the side-by-side video and
the settings. `encode` and `evaluate` write it into a folder of their own (`WORKDIR/report/` by default).

Pure file writing: the numbers come from `stylejax.metrics` / `stylejax.stages.render.evaluate`.
"""
import base64
import csv
import html
import io
import json
import math
import os

import numpy as np

MARKER = "metrics.json"  # a folder holding this (with "stylejax_report") is a report folder: ours to replace

# the summary rows of the table: (key, label, format)
SUMMARY_ROWS = (
    ("frames", "frames", "{:d}"),
    ("psnr_db", "PSNR mean (dB)", "{:.2f}"), ("psnr_db_min", "PSNR worst frame (dB)", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.4g}"),
    ("arcface_cos", "identity: ArcFace cosine", "{:.4f}"),
    ("dlib_id_distance", "identity: dlib embedding distance (same person < 0.6)", "{:.4f}"),
    ("landmark_px", "landmark distance (px at 1024)", "{:.2f}"),
    ("tlp", "flicker tLP (100·|ΔLPIPS|)", "{:.3f}"), ("tlm_px", "landmark flicker tLM (px at 1024)", "{:.3f}"),
    ("face_frames", "frames with a face (dlib)", "{:d}"),
    ("bytes_per_frame", "bytes per frame (motion)", "{:.2f}"), ("motion_coding", "motion coding", "{}"),
    ("identity_bytes", "identity bytes (once)", "{:d}"), ("file_bytes", "encoding file bytes", "{:d}"),
    ("delta_bytes_per_frame", "fine-tuning delta, bytes per frame", "{:.1f}"),
)


FILES = ("metrics.csv", "metrics.json", "metrics.png", "trajectories.png", "side_by_side.mp4", "report.html")


def is_report_dir(path):
    """A folder this module wrote, holding nothing else (replaceable with --overwrite)."""
    try:
        if not set(os.listdir(path)) <= set(FILES):
            return False
        with open(os.path.join(path, MARKER)) as f:
            return bool(json.load(f).get("stylejax_report"))
    except (OSError, ValueError, AttributeError):
        return False


def write_csv(path, columns):
    keys = list(columns)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for row in zip(*(columns[k] for k in keys)):
            w.writerow(["" if isinstance(v, float) and not math.isfinite(v) else
                        (int(v) if k == "frame" else f"{float(v):.6g}") for k, v in zip(keys, row)])


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _figure_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_metrics(columns):
    """PNG bytes: per-frame PSNR, LPIPS, identity (dlib distance; ArcFace cosine when present) and landmark
    distance, with tLP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(columns["frame"])
    panels = [("psnr_db", "PSNR (dB)"), ("lpips", "LPIPS"), ("dlib_id_distance", "dlib identity distance"),
              ("landmark_px", "landmark distance (px at 1024)"), ("tlp", "tLP (flicker)")]
    if np.isfinite(np.asarray(columns.get("arcface_cos", []), np.float64)).any():
        panels.insert(3, ("arcface_cos", "ArcFace cosine"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.7 * len(panels)), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        y = np.asarray(columns[key], np.float64)
        if np.isfinite(y).any():
            ax.plot(t, y, lw=1.2)
        else:
            ax.text(0.5, 0.5, "no value (no face found by dlib)", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("frame")
    fig.tight_layout()
    return _figure_png(fig)


def plot_trajectories(pose_deg, offsets, channels):
    """PNG bytes: yaw, pitch, roll (degrees) on one plot; the K offsets (channel standard deviations) as a heat
    map over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pose_deg, offsets = np.asarray(pose_deg), np.asarray(offsets)
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6.5), gridspec_kw={"height_ratios": [1, 1.6]})
    for k, name in enumerate(("yaw", "pitch", "roll")):
        a.plot(pose_deg[:, k], label=name, lw=1.2)
    a.set_ylabel("degrees (relative to the identity frame)", fontsize=8)
    a.legend(fontsize=8, ncol=3)
    a.grid(alpha=0.3)
    lim = float(np.max(np.abs(offsets))) or 1.0
    im = b.imshow(offsets.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    b.set_yticks(range(len(channels)))
    b.set_yticklabels(channels, fontsize=5)
    b.set_xlabel("frame")
    b.set_ylabel("StyleSpace channel", fontsize=8)
    fig.colorbar(im, ax=b, label="offset (channel std)")
    fig.tight_layout()
    return _figure_png(fig)


def png(image):
    """PNG bytes of a uint8 [H, W, 3] image."""
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(np.asarray(image)[..., ::-1]))
    return data.tobytes()


def _data_uri(data):
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _format(key, value, fmt):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return html.escape(str(value))


def report_html(summary, images, stills, settings, title="stylejax encoding report"):
    """One self-contained HTML page (str): `images` {caption: PNG bytes}, `stills` [(caption, PNG bytes)]."""
    pasted = summary.get("paste_back") or {}
    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{_format(key, summary.get(key), fmt)}</td>"
                   + (f"<td>{_format(key, pasted.get(key), fmt)}</td>" if pasted else "") + "</tr>"
                   for key, label, fmt in SUMMARY_ROWS if summary.get(key) is not None)
    if pasted:  # a second column: the same metrics of the face pasted into the original frame
        rows = ("<tr><th></th><th>aligned crop</th><th>pasted back (PSNR of the whole frame: "
                f"{_format('', pasted.get('frame_psnr_db'), '{:.2f}')} dB)</th></tr>") + rows
    figs = "".join(f'<figure><img alt="{html.escape(c)}" src="{_data_uri(d)}"><figcaption>{html.escape(c)}'
                   f"</figcaption></figure>" for c, d in images.items())
    still_html = "".join(f'<figure class="still"><img alt="{html.escape(c)}" src="{_data_uri(d)}">'
                         f"<figcaption>{html.escape(c)}</figcaption></figure>" for c, d in stills)
    settings_text = html.escape(json.dumps(_json_safe(settings), indent=2, sort_keys=True))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #f4f4f4; font-weight: normal; }}
figure {{ margin: 1em 0; }} figure img {{ max-width: 100%; border: 1px solid #ddd; }}
figure.still {{ display: inline-block; margin-right: 1em; }}
figure.still img {{ image-rendering: pixelated; width: 480px; max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #555; }}
pre {{ background: #f8f8f8; padding: 1em; overflow-x: auto; font-size: 0.8em; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<h2>Summary</h2>
<table>{rows}</table>
<h2>Per frame</h2>
{figs}
<h2>Side by side: input | re-synthesis | error ×4</h2>
{still_html}
<h2>Settings</h2>
<pre>{settings_text}</pre>
</body></html>
"""


def write_report(folder, columns, summary, pose_deg, offsets, channels, stills, settings):
    """Writes metrics.csv, metrics.json, metrics.png, trajectories.png, report.html into `folder` (a fresh
    temporary folder of `atomic.output_dir`, or one of ours). `stills`: [(caption, uint8 image)]."""
    write_csv(os.path.join(folder, "metrics.csv"), columns)
    images = {"Per-frame metrics": plot_metrics(columns),
              "Trajectories: yaw, pitch, roll and the StyleSpace offsets": plot_trajectories(pose_deg, offsets,
                                                                                             channels)}
    for name, data in zip(("metrics.png", "trajectories.png"), images.values()):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    with open(os.path.join(folder, "report.html"), "w", encoding="utf-8") as f:
        f.write(report_html(summary, images, [(c, png(img)) for c, img in stills], settings))
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump(_json_safe({"stylejax_report": 1, "summary": summary, "settings": settings}), f, indent=2,
                  sort_keys=True)
