"""Readers for StyleGAN2 generator checkpoints: four file formats in, one canonical state dict out.

The canonical form is the `g_ema` state dict of rosinality/stylegan2-pytorch (the layout e4e's decoder
also uses), as float32 numpy arrays, without the constant blur/upsample kernel buffers. Supported inputs:

- rosinality `.pt` (`{"g_ema", "latent_avg"}`, or a train.py checkpoint with g/d/g_ema/optimizers);
- e4e `.pt` (`{"state_dict": {"encoder.*", "decoder.*"}, "opts", "latent_avg" [18, w_dim]}`);
- NVlabs stylegan2-ada-pytorch `.pkl` (`{"G", "D", "G_ema", ...}` of "persistent" modules);
- official TF StyleGAN2 `.pkl` (tuple `(G, D, Gs)` of `dnnlib.tflib.network.Network`).

Nothing from a checkpoint is executed. NVlabs pickles embed the source of their network module and
their own loader `exec`s it; TF pickles embed build-function source as well. Here both become plain data
(the source strings are dropped unread), every other global a pickle names must be on the allowlist of
`convert.safe_pickle` or the three format-specific stand-ins below, and anything else is refused with
`UnsafeCheckpointError`.
"""
import math
import os
import re

import numpy as np

from convert import ConversionError
from convert.safe_pickle import GiB, UnsafeCheckpointError, is_torch_file, load_pickle_file, load_torch_file

__all__ = ["read_stylegan2", "describe", "UnsafeCheckpointError"]

# rosinality stores its up-sampling FIR kernels pre-multiplied by factor² = 4; NVlabs stores them normalised.
_FIR = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0]) / 64.0

# Tensor data a StyleGAN2 file may declare: a config-f G_ema is ~120 MB of fp32, but the files holding
# one are bigger: NVlabs snapshots (G, D, G_ema) ~360 MB, e4e_ffhq_encode.pt ~1.2 GB, rosinality
# train checkpoints with Adam states ~1.3 GB.
MAX_BYTES = 2 * GiB
# The generator itself (float32, as converted): config-f at 1024² is ~120 MB. Consistent but widened shapes
# (stride-0 views of one tiny storage cost nothing in the file) cannot make the converter copy more.
MAX_GENERATOR_BYTES = 512 << 20


# ----------------------------------------------------------------------------------------------
# Stand-ins for the classes NVlabs / TF pickles name. They keep data only.

class _PersistentModule:
    """An NVlabs `@persistent_class` instance: class name + the pickled `nn.Module.__dict__`."""

    def __init__(self, class_name, state):
        self.class_name = class_name
        self.state = state


def _reconstruct_persistent_obj(meta):
    """Stands for `torch_utils.persistence._reconstruct_persistent_obj`, which would `exec` the
    embedded `meta["module_src"]`. We keep `meta["state"]` and never look at the source."""
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise ConversionError("malformed NVlabs persistent object (no state dict)")
    return _PersistentModule(str(meta.get("class_name")), meta["state"])


class _EasyDict(dict):
    """`dnnlib.util.EasyDict` (a dict with attribute access) as a plain dict."""


class _TFNetwork(dict):
    """`dnnlib.tflib.network.Network`; its pickled state (`__getstate__`) is kept as plain data."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise ConversionError("malformed TF network state in pickle")
        self.state = state


_PKL_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib.tflib.network", "Network"): _TFNetwork,
}


# ----------------------------------------------------------------------------------------------
# Public entry point.

def read_stylegan2(path, max_bytes=MAX_BYTES):
    """Reads a StyleGAN2 generator checkpoint in any supported format.

    Returns `(state_dict, w_avg, info)`:
      state_dict: {rosinality g_ema key: float32 array} (no blur/upsample kernel buffers); up-conv
        weights in torch orientation; modulation biases include the +1.
      w_avg: [w_dim] float32 mean W of the mapping network, or None if the file has none
        (rosinality train.py checkpoints).
      info: {"format": "rosinality"|"e4e"|"nvlabs"|"tf", "resolution", "z_dim", "w_dim",
        "mapping_layers", "channels": {res: channels}, "mapping_lr_multiplier", "conv_clamp"}.
    Raises ConversionError (UnsafeCheckpointError for refused content, CheckpointLimitError when the
    file declares more than `max_bytes` of tensors or an unbounded structure) with a one-line message.
    """
    path = os.fspath(path)
    fmt, sd, w_avg, extra = _load(path, max_bytes)
    try:
        sd = _canonical(sd)
        info = {"format": fmt, **describe(sd), "mapping_lr_multiplier": 0.01, "conv_clamp": None}
        info.update(extra)
        w_avg = _as_w_avg(w_avg, info["w_dim"])
    except ConversionError as e:
        raise type(e)(f"{path}: {e}") from None
    return sd, w_avg, info


def _select(obj):
    """On the tensor views, before anything is copied (see `safe_pickle.load_torch_file`): the generator's
    tensors and mean latent in canonical names, every shape checked against the architecture that the
    anchor shapes imply. Nothing else in the file (a discriminator, optimiser states, an e4e encoder) is
    copied."""
    fmt, sd, w_avg, extra = _dispatch(obj)
    exp, config = _check_shapes(sd)
    nbytes = 4 * sum(int(np.prod(shape, dtype=object)) for shape in exp.values())
    if nbytes > MAX_GENERATOR_BYTES:
        raise ConversionError(f"the shapes describe a generator of {nbytes / 2 ** 20:.0f} MiB (float32), more than "
                              f"the {MAX_GENERATOR_BYTES >> 20} MiB this converter supports (config-f at 1024² is "
                              "~120 MB); not a supported StyleGAN2 generator, refused before copying it")
    if w_avg is not None:
        w_dim, num_ws = config["w_dim"], 2 * int(round(math.log2(config["resolution"]))) - 2
        if not isinstance(w_avg, np.ndarray) or tuple(w_avg.shape) not in ((w_dim,), (1, w_dim), (num_ws, w_dim)):
            raise ConversionError(f"mean latent has shape {list(np.shape(w_avg))}, expected [{w_dim}] "
                                  f"(or [{num_ws}, {w_dim}])")
    return fmt, sd, w_avg, extra


def _load(path, max_bytes):
    """(format, rosinality-named state dict, w_avg or None, extra info), shapes checked before copying."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise ConversionError(f"{path}: empty file, not a StyleGAN2 checkpoint")
    if is_torch_file(path):
        return load_torch_file(path, max_bytes=max_bytes, select=_select)
    if head.startswith(b"PK"):
        raise ConversionError(f"{path}: damaged zip/PyTorch file (no central directory); is it complete?")
    if head[0] != 0x80:  # every pickle of protocol >= 2 starts with the PROTO opcode
        raise ConversionError(
            f"{path}: not a StyleGAN2 checkpoint (neither a PyTorch .pt nor a pickle .pkl file)")
    return load_pickle_file(path, _PKL_GLOBALS, max_bytes=max_bytes, select=_select)


def _dispatch(obj):
    """-> (format, rosinality-named dict, w_avg or None, extra info)."""
    if isinstance(obj, tuple) and obj and all(isinstance(n, _TFNetwork) for n in obj):
        if len(obj) != 3:
            raise ConversionError(f"TF pickle holds {len(obj)} networks, expected (G, D, Gs)")
        return ("tf", *_from_tf(obj[2]))
    if isinstance(obj, _TFNetwork):
        return ("tf", *_from_tf(obj))
    if isinstance(obj, dict):
        if "G_ema" in obj:
            if not isinstance(obj["G_ema"], _PersistentModule):
                raise ConversionError("'G_ema' is not an NVlabs network module")
            return ("nvlabs", *_from_nvlabs(obj["G_ema"]))
        if "g_ema" in obj:
            return ("rosinality", *_from_rosinality(obj["g_ema"]), obj.get("latent_avg"), {})
        sd = obj.get("state_dict")
        if isinstance(sd, dict) and any(str(k).startswith("decoder.") for k in sd):
            dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
            return ("e4e", *_from_rosinality(dec), obj.get("latent_avg"), {})
        if "style.1.weight" in obj and "input.input" in obj:  # a bare g_ema state dict
            return ("rosinality", *_from_rosinality(obj), None, {})
        keys = ", ".join(str(k) for k in list(obj)[:4])
        raise ConversionError(
            f"not a StyleGAN2 generator checkpoint (top-level keys: {keys}); expected rosinality "
            "'g_ema', e4e 'state_dict' with 'decoder.*', NVlabs 'G_ema', or a TF (G, D, Gs) pickle")
    raise ConversionError(
        f"not a StyleGAN2 generator checkpoint (the file holds a {type(obj).__name__})")


# ----------------------------------------------------------------------------------------------
# rosinality / e4e

def _from_rosinality(g):
    if not isinstance(g, dict):
        raise ConversionError("'g_ema' is not a state dict")
    sd = {}
    for key, value in g.items():
        if key.endswith(".blur.kernel") or key.endswith(".upsample.kernel"):
            # Constants of the architecture; a different kernel would be a different network.
            if not (isinstance(value, np.ndarray) and value.shape == (4, 4)
                    and np.allclose(value, _FIR * 4, atol=1e-6)):
                raise ConversionError(f"{key} is not the [1,3,3,1] FIR kernel; unsupported generator")
            continue
        sd[key] = value
    return (sd,)


# ----------------------------------------------------------------------------------------------
# NVlabs stylegan2-ada-pytorch

def _flatten_modules(module, prefix, tensors, states):
    states[prefix.rstrip(".")] = module.state
    for group in ("_parameters", "_buffers"):
        entries = module.state.get(group) or {}
        if not isinstance(entries, dict):
            raise ConversionError(f"malformed NVlabs module {prefix!r}")
        for name, value in entries.items():
            if value is not None:
                tensors[prefix + name] = value
    for name, child in (module.state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _PersistentModule):
            raise ConversionError(f"NVlabs sub-module {prefix + name} is not a network module")
        _flatten_modules(child, f"{prefix}{name}.", tensors, states)


def _from_nvlabs(G):
    tensors, states = {}, {}
    _flatten_modules(G, "", tensors, states)

    def take(name):
        if name not in tensors:
            raise ConversionError(f"NVlabs generator lacks {name}; unsupported architecture or damaged file")
        return np.asarray(tensors[name])

    if "mapping.embed.weight" in tensors:
        raise ConversionError("conditional generators (c_dim > 0) are not supported")
    for name, state in states.items():
        if state.get("architecture", "skip") != "skip":
            raise ConversionError(f"{name} uses architecture {state['architecture']!r}; only 'skip' is supported")
        if state.get("activation", "lrelu") not in ("lrelu", "linear"):
            raise ConversionError(f"{name} uses activation {state['activation']!r}; only lrelu is supported")
    for name, value in tensors.items():
        if name.endswith("resample_filter") and not (np.shape(value) == (4, 4) and np.allclose(value, _FIR, atol=1e-6)):
            raise ConversionError(f"{name} is not the [1,3,3,1] filter; unsupported generator")

    sd = {}
    n_fc = 0
    while f"mapping.fc{n_fc}.weight" in tensors:
        sd[f"style.{n_fc + 1}.weight"] = take(f"mapping.fc{n_fc}.weight")
        sd[f"style.{n_fc + 1}.bias"] = take(f"mapping.fc{n_fc}.bias")
        n_fc += 1
    resolutions = sorted({int(m.group(1)) for k in tensors for m in [re.match(r"synthesis\.b(\d+)\.", k)] if m})
    if not resolutions or resolutions[0] != 4:
        raise ConversionError("NVlabs generator has no synthesis.b4 block")
    if any(k.startswith("synthesis.") and ".skip." in k for k in tensors):
        raise ConversionError("resnet-architecture generators are not supported; only 'skip'")

    def modulated(src, dst, noise_index=None):
        sd[f"{dst}.conv.weight"] = take(f"{src}.weight")[None]
        sd[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        sd[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        if noise_index is None:  # ToRGB: the 1/sqrt(fan_in) gain NVlabs puts on the styles is the
            sd[f"{dst}.bias"] = take(f"{src}.bias").reshape(1, -1, 1, 1)  # same product as rosinality's
            return                                                         # on the weight: no change
        sd[f"{dst}.noise.weight"] = take(f"{src}.noise_strength").reshape(1)
        sd[f"{dst}.activate.bias"] = take(f"{src}.bias")
        sd[f"noises.noise_{noise_index}"] = take(f"{src}.noise_const")[None, None]

    sd["input.input"] = take("synthesis.b4.const")[None]
    modulated("synthesis.b4.conv1", "conv1", 0)
    modulated("synthesis.b4.torgb", "to_rgb1")
    for r in resolutions[1:]:
        log2 = int(round(math.log2(r)))
        k = log2 - 3
        modulated(f"synthesis.b{r}.conv0", f"convs.{2 * k}", 2 * log2 - 5)
        modulated(f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", 2 * log2 - 4)
        modulated(f"synthesis.b{r}.torgb", f"to_rgbs.{k}")

    extra = {}
    fc0 = states.get("mapping.fc0", {})
    if "bias_gain" in fc0:
        extra["mapping_lr_multiplier"] = float(fc0["bias_gain"])
    clamps = {s.get("conv_clamp") for n, s in states.items() if n.startswith("synthesis.")} - {None}
    if clamps:
        extra["conv_clamp"] = float(max(clamps))
    return sd, tensors.get("mapping.w_avg"), extra


# ----------------------------------------------------------------------------------------------
# Official TF StyleGAN2

def _tf_params(net, prefix, out):
    state = getattr(net, "state", None)
    if not isinstance(state, dict):
        raise ConversionError("TF network without pickled state")
    for item in state.get("variables") or []:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ConversionError("malformed TF variable list in pickle")
        out[prefix + item[0]] = np.asarray(item[1])
    for name, comp in (state.get("components") or {}).items():
        if not isinstance(comp, _TFNetwork):
            raise ConversionError(f"TF component {name!r} is not a network")
        _tf_params(comp, f"{prefix}{name}/", out)
    return out


def _from_tf(Gs):
    p = _tf_params(Gs, "", {})
    state = Gs.state
    if not isinstance(state.get("version"), int) or state["version"] < 4:
        raise ConversionError(f"TF network pickle version {state.get('version')!r} is too old (need >= 4)")
    kw = state.get("static_kwargs") or {}
    checks = [("architecture", "skip"), ("nonlinearity", "lrelu"), ("mapping_nonlinearity", "lrelu"),
              ("label_size", 0), ("structure", None), ("resample_kernel", [1, 3, 3, 1])]
    for name, default in checks:
        value = kw.get(name, default)
        if name == "structure" or value is None:
            continue
        if (list(value) if name == "resample_kernel" else value) != default:
            raise ConversionError(f"TF generator has {name}={value!r}; only {default!r} is supported")
    if any("ToRGB_lod" in k for k in p):
        raise ConversionError("progressive-growing ('orig') TF generators are not supported; only 'skip'")

    def take(name):
        if name not in p:
            raise ConversionError(f"TF generator lacks variable {name}; unsupported architecture or damaged file")
        return p[name]

    sd = {}
    n_fc = 0
    while f"mapping/Dense{n_fc}/weight" in p:
        sd[f"style.{n_fc + 1}.weight"] = take(f"mapping/Dense{n_fc}/weight").T
        sd[f"style.{n_fc + 1}.bias"] = take(f"mapping/Dense{n_fc}/bias")
        n_fc += 1

    def modulated(src, dst, noise_index=None, flip=False):
        w = take(f"{src}/weight")  # [kh, kw, in, out]
        if flip:  # TF's fused up-conv uses the kernel the other way round (as legacy.py/convert_weight.py)
            w = w[::-1, ::-1]
        sd[f"{dst}.conv.weight"] = w.transpose(3, 2, 0, 1)[None]
        sd[f"{dst}.conv.modulation.weight"] = take(f"{src}/mod_weight").T
        # TF adds the affine's +1 at run time; torch layouts store it in the bias.
        sd[f"{dst}.conv.modulation.bias"] = take(f"{src}/mod_bias").astype(np.float32) + np.float32(1)
        if noise_index is None:
            sd[f"{dst}.bias"] = take(f"{src}/bias").reshape(1, -1, 1, 1)
            return
        sd[f"{dst}.noise.weight"] = np.asarray(take(f"{src}/noise_strength")).reshape(1)
        sd[f"{dst}.activate.bias"] = take(f"{src}/bias")
        sd[f"noises.noise_{noise_index}"] = take(f"synthesis/noise{noise_index}")

    sd["input.input"] = take("synthesis/4x4/Const/const")
    modulated("synthesis/4x4/Conv", "conv1", 0)
    modulated("synthesis/4x4/ToRGB", "to_rgb1")
    resolutions = sorted({int(m.group(1)) for k in p for m in [re.match(r"synthesis/(\d+)x\1/", k)] if m})
    for r in resolutions[1:]:
        log2 = int(round(math.log2(r)))
        k = log2 - 3
        modulated(f"synthesis/{r}x{r}/Conv0_up", f"convs.{2 * k}", 2 * log2 - 5, flip=True)
        modulated(f"synthesis/{r}x{r}/Conv1", f"convs.{2 * k + 1}", 2 * log2 - 4)
        modulated(f"synthesis/{r}x{r}/ToRGB", f"to_rgbs.{k}")
    extra = {}
    if kw.get("mapping_lrmul") is not None:
        extra["mapping_lr_multiplier"] = float(kw["mapping_lrmul"])
    return sd, p.get("dlatent_avg"), extra


# ----------------------------------------------------------------------------------------------
# Validation of the canonical dict

def _count(sd, pattern, start=0):
    n = 0
    while pattern.format(start + n) in sd:
        n += 1
    return n


def _expected_shapes(sd):
    """Derives the configuration from a few anchor shapes; returns ({key: shape}, config)."""
    def shape(key, ndim):
        if key not in sd:
            raise ConversionError(f"generator weights lack {key}; not a supported StyleGAN2 generator")
        if np.ndim(sd[key]) != ndim:
            raise ConversionError(f"{key} has shape {list(np.shape(sd[key]))}, expected {ndim} dimensions")
        return tuple(sd[key].shape)

    n_map = _count(sd, "style.{}.weight", start=1)
    if n_map == 0:
        raise ConversionError("generator has no mapping layers (style.1.weight missing)")
    z_dim = shape("style.1.weight", 2)[1]
    w_dim = shape(f"style.{n_map}.weight", 2)[0]
    n_blocks = _count(sd, "to_rgbs.{}.conv.weight")
    c4 = shape("input.input", 4)[1]
    channels = {4: c4}
    for k in range(n_blocks):
        channels[8 << k] = shape(f"convs.{2 * k}.conv.weight", 5)[1]

    exp = {}
    fan_in = z_dim
    for i in range(1, n_map + 1):
        out = shape(f"style.{i}.weight", 2)[0]
        exp[f"style.{i}.weight"] = (out, fan_in)
        exp[f"style.{i}.bias"] = (out,)
        fan_in = out
    exp["input.input"] = (1, c4, 4, 4)

    def conv(name, cin, cout):
        exp[f"{name}.conv.weight"] = (1, cout, cin, 3, 3)
        exp[f"{name}.conv.modulation.weight"] = (cin, w_dim)
        exp[f"{name}.conv.modulation.bias"] = (cin,)
        exp[f"{name}.noise.weight"] = (1,)
        exp[f"{name}.activate.bias"] = (cout,)

    def torgb(name, cin):
        exp[f"{name}.conv.weight"] = (1, 3, cin, 1, 1)
        exp[f"{name}.conv.modulation.weight"] = (cin, w_dim)
        exp[f"{name}.conv.modulation.bias"] = (cin,)
        exp[f"{name}.bias"] = (1, 3, 1, 1)

    conv("conv1", c4, c4)
    torgb("to_rgb1", c4)
    for k in range(n_blocks):
        r = 8 << k
        conv(f"convs.{2 * k}", channels[r // 2], channels[r])
        conv(f"convs.{2 * k + 1}", channels[r], channels[r])
        torgb(f"to_rgbs.{k}", channels[r])
    for i in range(2 * n_blocks + 1):
        r = 2 ** ((i + 5) // 2)
        exp[f"noises.noise_{i}"] = (1, 1, r, r)
    config = {"resolution": 4 << n_blocks, "z_dim": int(z_dim), "w_dim": int(w_dim),
              "mapping_layers": n_map, "channels": {int(r): int(c) for r, c in channels.items()}}
    return exp, config


def _check_shapes(sd):
    """Keys, dtypes and shapes against the architecture the anchor shapes imply; reads shapes only, so it
    runs on tensor views before anything is copied. Returns `_expected_shapes(sd)`."""
    for key, value in sd.items():
        if not isinstance(value, np.ndarray) or (value.dtype.kind != "f" and value.dtype.name != "bfloat16"):
            raise ConversionError(f"{key} is not a floating-point tensor")
    exp, config = _expected_shapes(sd)
    missing = [k for k in exp if k not in sd]
    if missing:
        raise ConversionError(f"generator weights lack {missing[0]} ({len(missing)} missing); "
                              "not a supported StyleGAN2 generator or a damaged file")
    extra = [k for k in sd if k not in exp]
    if extra:
        raise ConversionError(f"unexpected generator weight {extra[0]} ({len(extra)} unexpected); "
                              "not a supported StyleGAN2 (config-e/f, skip) generator")
    for key, shape in exp.items():
        if tuple(sd[key].shape) != shape:
            raise ConversionError(f"{key} has shape {list(sd[key].shape)}, expected {list(shape)}")
    return exp, config


def _canonical(sd):
    exp, _ = _check_shapes(sd)
    return {k: np.ascontiguousarray(sd[k], dtype=np.float32) for k in exp}


def describe(sd):
    """{resolution, z_dim, w_dim, mapping_layers, channels} of a canonical (rosinality-named) state dict."""
    return _expected_shapes(sd)[1]


def _as_w_avg(w_avg, w_dim):
    if w_avg is None:
        return None
    w = np.asarray(w_avg, dtype=np.float32)
    if w.ndim == 2 and w.shape[1] == w_dim:  # e4e: [num_ws, w_dim], rows are copies of one W
        w = w[0] if np.all(w == w[:1]) else w.mean(axis=0)
    w = w.reshape(-1)
    if w.shape != (w_dim,):
        raise ConversionError(f"mean latent has shape {list(np.shape(w_avg))}, expected [{w_dim}]")
    return np.ascontiguousarray(w)
