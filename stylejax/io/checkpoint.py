"""The stylejax checkpoint: a directory with `params/` (orbax) and `config.json`.

`config.json` is written last, so a directory without it is an interrupted conversion and is refused on
load. The JSON holds {"kind": <network>, "format_version": 1, "config": {...}}. An existing directory is
replaced only when it is itself a stylejax checkpoint (see `stylejax.io.atomic.replace_dir`).
"""
import json
import os

import numpy as np

from stylejax.errors import UserError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


class CheckpointError(UserError):
    """A stylejax checkpoint directory is missing, incomplete or of the wrong kind."""


def is_checkpoint(path):
    """True when `path` is a directory holding a stylejax config.json (what `--overwrite` may replace)."""
    try:
        with open(os.path.join(path, CONFIG_FILE)) as f:
            meta = json.load(f)
        return isinstance(meta, dict) and "kind" in meta and "format_version" in meta
    except (OSError, ValueError):
        return False


def save(out_dir, kind, config, params, overwrite=False, inputs=()):
    """Writes `params` (nested dict of arrays) and `config` (JSON-able dict) to `out_dir`, through a
    temporary sibling renamed into place (an interrupted save leaves nothing that looks complete)."""
    import orbax.checkpoint as ocp

    from stylejax.io import atomic

    params = _to_numpy(params)
    with atomic.output_dir(out_dir, overwrite=overwrite, inputs=inputs, is_ours=is_checkpoint,
                           what="checkpoint") as tmp:
        ocp.PyTreeCheckpointer().save(os.path.join(tmp, "params"), params)
        atomic.write_json(os.path.join(tmp, CONFIG_FILE),
                          {"kind": kind, "format_version": FORMAT_VERSION, "config": config})


def save_network(net, out_dir, overwrite=False, inputs=(), source="converted parameters"):
    """Checks a network object against its config (shapes, finite values), then saves it."""
    net.check(source)
    save(out_dir, net.kind, net.config_dict(), net.variables(), overwrite=overwrite, inputs=inputs)


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
    from stylejax.nets import KINDS

    if found not in KINDS:
        raise CheckpointError(f"{config_path}: unknown kind {found!r}; expected one of {', '.join(KINDS)}")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path}: holds a '{found}' checkpoint, expected '{kind}'")
    try:
        params = ocp.PyTreeCheckpointer().restore(os.path.join(path, "params"))
    except Exception as e:  # orbax raises many types for a damaged folder
        raise CheckpointError(f"{path}: cannot read params/ ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                              "re-run the conversion") from None
    return found, meta["config"], _to_numpy(params)


def load(path, kind):
    """Returns (config dict, params tree) of a checkpoint of the given kind (lower level than
    `stylejax.load`, which returns the network object)."""
    _, config, params = load_raw(path, kind)
    return config, params


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _to_numpy(v) for i, v in enumerate(tree)}
    return np.asarray(tree)
