"""The stylejax checkpoint: a directory with `params/` (orbax) and `config.json`.

`config.json` is written last, so a directory without it is an interrupted conversion and is refused on
load. The JSON holds {"kind": <network>, "format_version": 1, "config": {...}}. An existing directory is
replaced only with `overwrite` and only when it is itself a stylejax checkpoint of the same kind, holding
nothing else (see `stylejax.io.atomic.output_dir`).
"""
import dataclasses
import json
import os
import typing

import numpy as np

from stylejax.errors import UserError
from stylejax.nets import KINDS, network_class
from stylejax.nets.base import config_from_dict

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


class CheckpointError(UserError):
    """A stylejax checkpoint directory is missing, incomplete or of the wrong kind."""


CONTENTS = {CONFIG_FILE, "params"}


def is_checkpoint(path, kind=None):
    """True when `path` is a stylejax checkpoint directory (of `kind`, if given) holding nothing but its
    config.json and params/: what `--overwrite` may replace without losing anything of the user's."""
    try:
        if not set(os.listdir(path)) <= CONTENTS or not os.path.isdir(os.path.join(path, "params")):
            return False
        with open(os.path.join(path, CONFIG_FILE)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(meta, dict) and "kind" in meta and "format_version" in meta
            and (kind is None or meta["kind"] == kind))


def check_out(out_dir, kind, overwrite=False, inputs=()):
    """Refuses an output path `save` would refuse, before any work is done (one-line OutputError)."""
    from stylejax.io import atomic

    return atomic.check_output_dir(out_dir, overwrite=overwrite, inputs=inputs, is_ours=_is_checkpoint_of(kind),
                                   what=f"{kind} checkpoint")


def _is_checkpoint_of(kind):
    return lambda path: is_checkpoint(path, kind)


def save(out_dir, kind, config, params, overwrite=False, inputs=()):
    """Writes `params` (nested dict of arrays) and `config` (JSON-able dict) to `out_dir`, through a
    temporary sibling renamed into place (an interrupted save leaves nothing that looks complete)."""
    import orbax.checkpoint as ocp

    from stylejax.io import atomic

    params = _to_numpy(params)
    with atomic.output_dir(out_dir, overwrite=overwrite, inputs=inputs, is_ours=_is_checkpoint_of(kind),
                           what=f"{kind} checkpoint") as tmp:
        ocp.PyTreeCheckpointer().save(os.path.join(tmp, "params"), params)
        atomic.write_json(os.path.join(tmp, CONFIG_FILE),
                          {"kind": kind, "format_version": FORMAT_VERSION, "config": config})


def save_network(net, out_dir, overwrite=False, inputs=(), source="converted parameters"):
    """Checks a network object against its config (shapes, finite values), then saves it."""
    net.check(source)
    save(out_dir, net.kind, net.config_dict(), net.variables(), overwrite=overwrite, inputs=inputs)


def load(path, kind=None):
    """A converted checkpoint directory -> its network object (`Generator`, `E4E`, `ArcFace`, `LPIPS`,
    `StyleFlow`); this is `stylejax.load`. With `kind`, anything else is refused with a one-line
    `CheckpointError`. Shapes and finiteness are checked against the config."""
    found, config_dict, tree = load_raw(path, kind)
    net = network_class(found).from_variables(config_dict, tree)
    try:
        return net.check(source=str(path))
    except Exception as e:  # a config.json that disagrees with its params
        raise CheckpointError(str(e)) from None


def load_generator(path):
    """A generator converted with `python -m convert stylegan2` (= `load(path, "stylegan2")`)."""
    return load(path, "stylegan2")


def load_e4e(path):
    """An e4e encoder converted with `python -m convert e4e`."""
    return load(path, "e4e")


def load_styleflow(path):
    """A StyleFlow converted with `python -m convert styleflow`."""
    return load(path, "styleflow")


def load_lpips(path):
    """An LPIPS network converted with `python -m convert lpips`."""
    return load(path, "lpips")


def load_arcface(path):
    """An ArcFace IR-SE50 converted with `python -m convert arcface`."""
    return load(path, "arcface")


def save_generator(generator, out_dir, overwrite=False):
    """Saves a `Generator` (jax or numpy leaves) as a stylejax checkpoint."""
    import jax

    save_network(jax.tree_util.tree_map(np.asarray, generator), out_dir, overwrite=overwrite)


def load_raw(path, kind=None):
    """Returns (kind, config dict, params tree of numpy arrays) from a stylejax checkpoint."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    config_path = os.path.join(path, CONFIG_FILE)
    hint = f"create it with `python -m convert {kind or '<network>'} --src FILE --out DIR`"
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint directory; {hint}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: is a file, not a checkpoint directory; {hint}")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{path}: no config.json (not a stylejax checkpoint, or its conversion was "
                              f"interrupted); {hint}")
    try:
        with open(config_path) as f:
            meta = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{config_path}: malformed JSON ({e}); re-run the conversion") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or "kind" not in meta:
        raise CheckpointError(f"{config_path}: needs keys 'kind' and 'config'; re-run the conversion")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: format_version {meta.get('format_version')!r}, this stylejax "
                              f"reads {FORMAT_VERSION}; re-run the conversion")
    found = meta["kind"]
    if found not in KINDS:
        raise CheckpointError(f"{config_path}: unknown kind {found!r}; expected one of {', '.join(KINDS)}")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path}: holds a '{found}' checkpoint, expected '{kind}'")
    check_config(found, meta["config"], config_path)
    try:
        params = ocp.PyTreeCheckpointer().restore(os.path.join(path, "params"))
    except Exception as e:  # orbax raises many types for a damaged folder
        raise CheckpointError(f"{path}: cannot read params/ ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                              "re-run the conversion") from None
    return found, meta["config"], _to_numpy(params)


def check_config(kind, config, where):
    """Raises a one-line CheckpointError naming `where` and the key unless `config` (parsed JSON) fits the
    network's config dataclass: known keys, JSON types matching the annotations, the dataclass's own checks."""
    cls = network_class(kind).config_class
    problem = _config_problem(cls, config, "")
    if problem:
        raise CheckpointError(f"{where}: {problem}; re-run the conversion")
    try:
        config_from_dict(cls, config)
    except Exception as e:  # the dataclass's __post_init__ checks (e.g. resolution not a power of two)
        raise CheckpointError(f"{where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                              "re-run the conversion") from None


def _config_problem(cls, d, prefix):
    if not isinstance(d, dict):
        return f"'{prefix or 'config'}' must be a JSON object, got {_short(d)}"
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if key not in fields:
            return f"unknown config key '{name}' (a config.json from another version?)"
        if value is None and fields[key].default is None:
            continue
        typ = hints.get(key)
        if dataclasses.is_dataclass(typ):
            problem = _config_problem(typ, value, name + ".")
            if problem:
                return problem
            continue
        mismatch = _type_mismatch(value, typ)
        if mismatch:
            where, want, got = mismatch
            return f"config key '{name}{where}' must be {want}, got {_short(got)}"
    return None


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_mismatch(value, typ):
    """None when the parsed-JSON `value` fits the annotation `typ`, else (where inside value, what was
    expected in words, the offending part)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is None or typ is typing.Any:
        return None
    if origin is typing.Union:
        found = [_type_mismatch(value, a) for a in args]
        if any(f is None for f in found):
            return None
        if all(f[0] == "" for f in found):
            return "", " or ".join(f[1] for f in found), value
        return next(f for f in found if f[0] != "")
    simple = {type(None): ("null", lambda v: v is None), bool: ("true or false", lambda v: isinstance(v, bool)),
              int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
              float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
              str: ("a string", lambda v: isinstance(v, str))}
    if typ in simple:
        want, ok = simple[typ]
        return None if ok(value) else ("", want, value)
    if typ is tuple or origin is tuple:
        if not isinstance(value, list):
            return "", "a list", value
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif args and len(args) != len(value):
            return "", f"a list of {len(args)} entries", value
        for i, (v, a) in enumerate(zip(value, args)):
            found = _type_mismatch(v, a)
            if found:
                return (f"[{i}]{found[0]}",) + found[1:]
        return None
    return None  # an annotation this check does not know: left to the dataclass


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _to_numpy(v) for i, v in enumerate(tree)}
    return np.asarray(tree)
