"""LPIPS v0.1: lpips-package linear heads (--src) + torchvision vgg16/alexnet trunk (--src2).

`python -m convert lpips --src vgg.pth --src2 vgg16-397923af.pth --out DIR [--net vgg|alex]`

--src  : the `lpips` package's head file `lpips/weights/v0.1/{vgg,alex}.pth` (legacy torch format,
         keys `lin{k}.model.1.weight` [1,C,1,1]); a full `lpips.LPIPS().state_dict()` (trunk under
         `net.slice{s}.{i}.*`) also works, then --src2 may be left out.
--src2 : torchvision `vgg16` / `alexnet` ImageNet state dict (`features.{i}.weight/bias`; the
         classifier is ignored).
The net is inferred from the shapes; --net only double-checks it.
"""
import re

import numpy as np

from convert import ConversionError
from convert._params_check import check_finite
from stylejax.lpips import KIND, LAYOUTS, LPIPSConfig, conv_specs

_HEAD = re.compile(r"^(?:module\.)?lin(\d)\.model\.1\.weight$")
_TRUNK = re.compile(r"^(?:module\.)?features\.(\d+)\.(weight|bias)$")
_LPIPS_TRUNK = re.compile(r"^(?:module\.)?net\.slice\d\.(\d+)\.(weight|bias)$")


def add_arguments(parser):
    parser.add_argument("--src", required=True, help="lpips head weights, e.g. lpips/weights/v0.1/vgg.pth")
    parser.add_argument("--src2", help="torchvision trunk state dict, e.g. vgg16-397923af.pth / alexnet-owt-7be5be79.pth")
    parser.add_argument("--out", required=True, help="output stylejax checkpoint directory")
    parser.add_argument("--net", choices=sorted(LAYOUTS), help="expected trunk (default: inferred from shapes)")


def run(args):
    from convert.safe_pickle import load_torch_file
    from stylejax import checkpoint

    limit = 1 << 30  # vgg16-397923af.pth, the largest input, is ~530 MB
    heads = _state_dict(load_torch_file(args.src, max_bytes=limit), args.src)
    trunk = _state_dict(load_torch_file(args.src2, max_bytes=limit), args.src2) if args.src2 else None
    config, params = convert_state_dicts(heads, trunk, net=args.net, src_names=(args.src, args.src2))
    checkpoint.save(args.out, KIND, config.to_dict(), params)
    print(f"wrote LPIPS-{config.net} (widths {list(config.widths)}) to {args.out}")


def _state_dict(obj, name):
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{name}: expected a torch state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def _kind(sd):
    keys = list(sd)
    if any(_HEAD.match(k) for k in keys):
        return "heads" if not any(_TRUNK.match(k) or _LPIPS_TRUNK.match(k) for k in keys) else "lpips"
    if any(_TRUNK.match(k) for k in keys):
        return "trunk"
    return None


def _array(sd, key, name):
    a = sd[key]
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
        raise ConversionError(f"{name}: '{key}' is not a float tensor ({type(a).__name__}); is this an LPIPS/torchvision file?")
    check_finite(name, {key: a})
    return a.astype(np.float32)


def convert_state_dicts(heads_sd, trunk_sd=None, net=None, src_names=("--src", "--src2")):
    """(lpips head state dict, torchvision trunk state dict) → (LPIPSConfig, Flax params).

    Arrays are numpy in torch layout. Raises ConversionError naming the problem for swapped,
    mismatched or incomplete inputs.
    """
    src, src2 = (n or "--src2" for n in src_names)
    kind = _kind(heads_sd)
    if kind == "trunk":
        raise ConversionError(f"{src}: looks like a torchvision trunk (features.*), not LPIPS heads; "
                              "pass the lpips head file (e.g. vgg.pth) as --src and the trunk as --src2")
    if kind is None:
        raise ConversionError(f"{src}: no LPIPS head weights (lin0.model.1.weight ...) found; "
                              f"keys start with {sorted(heads_sd)[:3]}")
    if trunk_sd is None:
        if kind != "lpips":
            raise ConversionError(f"{src} holds only the linear heads; pass the torchvision trunk state dict "
                                  "(vgg16-397923af.pth / alexnet-owt-7be5be79.pth) as --src2")
        trunk_sd = {f"features.{m.group(1)}.{m.group(2)}": v
                    for k, v in heads_sd.items() if (m := _LPIPS_TRUNK.match(k))}
        src2 = src
    else:
        kind2 = _kind(trunk_sd)
        if kind2 in ("heads", "lpips") and not any(_TRUNK.match(k) for k in trunk_sd):
            raise ConversionError(f"{src2}: looks like LPIPS head weights (lin*.model.1.weight), not a torchvision "
                                  "trunk; are --src and --src2 swapped?")
        if kind2 != "trunk":
            raise ConversionError(f"{src2}: no torchvision trunk weights (features.0.weight ...) found; "
                                  f"keys start with {sorted(trunk_sd)[:3]}")
        trunk_sd = {f"features.{m.group(1)}.{m.group(2)}": v for k, v in trunk_sd.items() if (m := _TRUNK.match(k))}

    # net from the trunk's conv indices (vgg16: 13 convs at 0,2,5,...; alexnet: 0,3,6,8,10)
    convs = sorted({int(k.split(".")[1]) for k in trunk_sd})
    found = [n for n in LAYOUTS if convs == [c[0] for c in conv_specs(n)]]
    if not found:
        raise ConversionError(f"{src2}: trunk convs at features.{convs} match neither torchvision vgg16 nor alexnet")
    found = found[0]
    if net is not None and net != found:
        raise ConversionError(f"--net {net} given but {src2} holds a {found} trunk")

    head_w = {}
    for k, v in heads_sd.items():
        m = _HEAD.match(k)
        if m:
            head_w[int(m.group(1))] = (k, v)
    if sorted(head_w) != list(range(5)):
        raise ConversionError(f"{src}: expected heads lin0..lin4, found lin{sorted(head_w)}; "
                              "squeezenet LPIPS (7 heads) is not supported")

    params, cin, widths = {}, 3, [None] * 5
    for idx, k, _stride, _pad, stage in conv_specs(found):
        wkey, bkey = f"features.{idx}.weight", f"features.{idx}.bias"
        if wkey not in trunk_sd or bkey not in trunk_sd:
            raise ConversionError(f"{src2}: missing {wkey} or {bkey}")
        w, b = _array(trunk_sd, wkey, src2), _array(trunk_sd, bkey, src2)
        if w.ndim != 4 or w.shape[1:] != (cin, k, k) or b.shape != (w.shape[0],):
            raise ConversionError(f"{src2}: {wkey} has shape {w.shape} (bias {b.shape}), expected "
                                  f"[C, {cin}, {k}, {k}] for torchvision {found}")
        if widths[stage] not in (None, w.shape[0]):
            raise ConversionError(f"{src2}: {wkey} has {w.shape[0]} channels, stage {stage} has {widths[stage]}")
        widths[stage], cin = w.shape[0], w.shape[0]
        params[f"features_{idx}"] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}  # OIHW -> HWIO

    for s in range(5):
        key, w = head_w[s]
        w = _array(heads_sd, key, src)
        if w.shape != (1, widths[s], 1, 1):
            if w.ndim == 4 and w.shape[0] == 1 and w.shape[2:] == (1, 1):
                other = [n for n in LAYOUTS if LPIPSConfig(n).widths[s] == w.shape[1]]
                hint = f" (heads for {other[0]}?)" if other else ""
                raise ConversionError(f"{src}: {key} has {w.shape[1]} channels but the {found} trunk in {src2} "
                                      f"gives {widths[s]}{hint}; use the head file matching the trunk")
            raise ConversionError(f"{src}: {key} has shape {w.shape}, expected [1, {widths[s]}, 1, 1]")
        params[f"lin{s}"] = {"kernel": w.reshape(widths[s], 1)}
    return LPIPSConfig(found, tuple(int(w) for w in widths)), params
