"""Opt-in parity check of the stylejax generator against YOUR checkout of rosinality/stylegan2-pytorch.

    python scripts/check_reference_parity.py --rosinality-repo PATH [--size 1024] [--batch 2]

What it does (nothing of the reference is shipped with stylejax; it is imported from PATH):
  1. builds a rosinality `model.Generator` (config-f channel table, 512-d latents, 8 mapping layers)
     with seeded random weights in which every bias, noise strength and noise buffer is non-trivial;
  2. `torch.save`s `{"g_ema": state_dict, "latent_avg": w_avg}` to a temporary directory and converts it
     with `python -m convert stylegan2 --src that.pt --out DIR`;
  3. loads the result with `stylejax.load_generator(DIR)` and renders, with constant noise, the same
     inputs in both: a random W+ (distinct rows), z with psi=0.7, z with psi=0.7 and truncation_cutoff=4,
     plus the StyleSpace vectors of the W+ and a one-channel StyleSpace edit done in the reference
     with a forward hook on the modulation layer;
  4. prints max-abs differences per case and exits 1 if any exceeds --tol (default 1e-4).

Needs torch (CPU is fine). rosinality's `op/` package compiles CUDA extensions on import; without
CUDA this script makes that compile step a no-op so the reference's own CPU fallbacks are used.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSI = 0.7
CUTOFF = 4


def import_rosinality(repo_path):
    import torch
    import torch.utils.cpp_extension as cpp_extension

    if not os.path.isfile(os.path.join(repo_path, "model.py")):
        raise SystemExit(f"error: {repo_path} has no model.py; pass a checkout of rosinality/stylegan2-pytorch")
    if not torch.cuda.is_available():
        # op/fused_act.py and op/upfirdn2d.py call cpp_extension.load(...) at import time; on CPU their
        # functions take the pure-torch branch and never touch the compiled module.
        cpp_extension.load = lambda *args, **kwargs: None
    sys.path.insert(0, os.path.abspath(repo_path))
    import model  # noqa: E402  (the user's checkout)

    return model


def randomize_(g, gen):
    """Overwrite the zero/one defaults so that a wrong bias, gain or noise wiring shows up."""
    import torch

    new = {}
    for key, value in g.state_dict().items():
        shape = value.shape
        if key.startswith("style.") and key.endswith(".bias"):
            value = torch.randn(shape, generator=gen) * 10.0  # runtime bias = 0.01 * stored
        elif key.endswith("modulation.bias"):
            value = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        elif key.endswith("noise.weight"):
            sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
            value = sign * (0.1 + 0.4 * torch.rand(shape, generator=gen))
        elif key.endswith("activate.bias") or (key.startswith("to_rgb") and key.endswith("bias")
                                               and "modulation" not in key):
            value = 0.2 * torch.randn(shape, generator=gen)
        new[key] = value.clone()
    g.load_state_dict(new)
    return new


def modulation_modules(g):
    """Modulation layers in StyleSpace (use) order: conv 4, torgb 4, then conv0_up, conv1, torgb per block."""
    mods = [g.conv1.conv.modulation, g.to_rgb1.conv.modulation]
    for k in range(len(g.to_rgbs)):
        mods += [g.convs[2 * k].conv.modulation, g.convs[2 * k + 1].conv.modulation,
                 g.to_rgbs[k].conv.modulation]
    return mods


def reference_outputs(g, w_avg, z, ws_plus, edit):
    import torch

    records = []
    state = {"edit": None}

    def hook(module, inputs, output):
        layer = len(records)
        if state["edit"] is not None and state["edit"][0] == layer:
            output = output.clone()
            output[:, state["edit"][1]] += state["edit"][2]
        records.append(output.detach().clone())
        return output

    handles = [m.register_forward_hook(hook) for m in modulation_modules(g)]

    def render_ws(ws, edit_=None):
        records.clear()
        state["edit"] = edit_
        img, _ = g([ws], input_is_latent=True, randomize_noise=False)
        return img.permute(0, 2, 3, 1).numpy()

    with torch.no_grad():
        out = {}
        w = g.style(z)
        ws_from_z = w.unsqueeze(1).repeat(1, g.n_latent, 1)
        ws_trunc = w_avg + PSI * (ws_from_z - w_avg)
        ws_cut = ws_from_z.clone()
        ws_cut[:, :CUTOFF] = ws_trunc[:, :CUTOFF]
        out["ws_from_z"] = ws_from_z.numpy()
        out["ws_trunc"] = ws_trunc.numpy()
        out["ws_trunc_cutoff"] = ws_cut.numpy()
        out["img_ws_plus"] = render_ws(ws_plus)
        out["styles"] = [r.numpy() for r in records]
        # rosinality's own truncation path (all rows; it has no cutoff)
        records.clear()
        state["edit"] = None
        img, _ = g([z], truncation=PSI, truncation_latent=w_avg[None], randomize_noise=False)
        out["img_z_trunc"] = img.permute(0, 2, 3, 1).numpy()
        out["img_z_trunc_cutoff"] = render_ws(ws_cut)
        out["img_edit"] = render_ws(ws_plus, edit)
    for h in handles:
        h.remove()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rosinality-repo", required=True, help="path to a checkout of rosinality/stylegan2-pytorch")
    ap.add_argument("--size", type=int, default=256, help="output resolution (config-f channels); 1024 = full size")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--keep", default=None, help="keep the .pt and the converted checkpoint in this directory")
    args = ap.parse_args(argv)

    import torch

    torch.set_grad_enabled(False)
    model = import_rosinality(args.rosinality_repo)
    sys.path.insert(0, REPO)
    import stylejax

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    style_dim, n_mlp = 512, 8
    g = model.Generator(args.size, style_dim, n_mlp, channel_multiplier=2).eval()
    sd = randomize_(g, gen)
    w_avg = 0.5 * torch.randn(style_dim, generator=gen)
    z = torch.randn(args.batch, style_dim, generator=gen)
    ws_plus = w_avg + 0.7 * torch.randn(args.batch, g.n_latent, style_dim, generator=gen)
    mods = modulation_modules(g)
    # one-channel StyleSpace edit: layer 6 channel 501 at config-f (the StyleSpace paper's smile channel)
    edit_layer = min(6, len(mods) - 1)
    edit_channel = min(501, mods[edit_layer].weight.shape[0] - 1)
    edit = (edit_layer, edit_channel, 5.0)

    t0 = time.time()
    ref = reference_outputs(g, w_avg, z, ws_plus, edit)
    print(f"reference: {args.size}px batch {args.batch}, {time.time() - t0:.1f}s")

    tmp = args.keep or tempfile.mkdtemp(prefix="stylejax_parity_")
    os.makedirs(tmp, exist_ok=True)
    pt_path = os.path.join(tmp, "rosinality_random.pt")
    ckpt_dir = os.path.join(tmp, "converted")
    torch.save({"g_ema": sd, "latent_avg": w_avg}, pt_path)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "convert", "stylegan2", "--src", pt_path, "--out", ckpt_dir],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        raise SystemExit(f"error: conversion failed with exit code {proc.returncode}")

    t0 = time.time()
    G = stylejax.load_generator(ckpt_dir)
    z_np, ws_plus_np = z.numpy(), ws_plus.numpy()
    ours = {
        "ws_from_z": G.mapping(z_np),
        "ws_trunc": G.mapping(z_np, truncation_psi=PSI),
        "ws_trunc_cutoff": G.mapping(z_np, truncation_psi=PSI, truncation_cutoff=CUTOFF),
        "img_ws_plus": G.synthesize(ws_plus_np, noise_mode="const"),
    }
    ours["img_z_trunc"] = G.synthesize(ours["ws_trunc"], noise_mode="const")
    ours["img_z_trunc_cutoff"] = G.synthesize(ours["ws_trunc_cutoff"], noise_mode="const")
    styles = [np.asarray(s) for s in G.styles_from_ws(ws_plus_np)]
    edited = [s.copy() for s in styles]
    edited[edit[0]][:, edit[1]] += edit[2]
    ours["img_edit"] = G.synthesize_from_styles(edited, noise_mode="const")
    print(f"stylejax: {time.time() - t0:.1f}s (includes compilation)")

    if len(styles) != len(ref["styles"]):
        raise SystemExit(f"error: {len(styles)} StyleSpace layers, reference has {len(ref['styles'])}")
    rows = [(name, float(np.max(np.abs(np.asarray(ours[name], np.float32) - ref[name]))),
             float(np.max(np.abs(ref[name])))) for name in
            ["ws_from_z", "ws_trunc", "ws_trunc_cutoff", "img_ws_plus", "img_z_trunc", "img_z_trunc_cutoff"]]
    rows.append(("styles (all %d layers)" % len(styles),
                 max(float(np.max(np.abs(a - b))) for a, b in zip(styles, ref["styles"])),
                 max(float(np.max(np.abs(b))) for b in ref["styles"])))
    rows.append((f"img_edit (layer {edit[0]} ch {edit[1]} +{edit[2]:g})",
                 float(np.max(np.abs(np.asarray(ours["img_edit"]) - ref["img_edit"]))),
                 float(np.max(np.abs(ref["img_edit"] - ref["img_ws_plus"])))))
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'max-abs diff':>12}  {'ref max-abs':>11}")
    failed = False
    for name, diff, scale in rows:
        bad = not (diff <= args.tol)
        failed |= bad
        print(f"{name:<{width}}  {diff:12.3e}  {scale:11.3g}{'  FAIL' if bad else ''}")
    print("(ref max-abs of the edit row = how much the edit changed the reference image)")
    print(f"tolerance {args.tol:g}: {'FAIL' if failed else 'ok'}")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
