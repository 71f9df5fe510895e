"""The stylejax checkpoint: a directory with `params/` (orbax) and `config.json`.

`config.json` is written last, so a directory without it is an interrupted conversion
and is refused on load. The JSON holds {"kind": <network>, "format_version": 1, "config": {...}}.
"""
import json
import os
import shutil

import numpy as np
from stylejax.errors import UserError

FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A stylejax checkpoint directory is missing, incomplete or of the wrong kind."""


def save(out_dir, kind, config, params):
    """Writes `params` (nested dict of arrays) and `config` (JSON-able dict) to `out_dir`."""
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, "config.json")
    params_path = os.path.join(out_dir, "params")
    if os.path.exists(config_path):
        os.remove(config_path)  # the directory is incomplete until the new config lands
    if os.path.exists(params_path):
        shutil.rmtree(params_path)
    params = _to_numpy(params)
    ckptr = ocp.PyTreeCheckpointer()
    ckptr.save(params_path, params)
    tmp = config_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"kind": kind, "format_version": FORMAT_VERSION, "config": config}, f, indent=2)
    os.replace(tmp, config_path)


def load(path, kind):
    """Returns (config dict, params as nested dict of numpy arrays) from a stylejax checkpoint."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory; create it with `python -m convert {kind} --src FILE --out DIR`")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{path}: no config.json (not a stylejax checkpoint, or its conversion was interrupted); re-run `python -m convert {kind}`")
    with open(config_path) as f:
        meta = json.load(f)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a '{meta.get('kind')}' checkpoint, expected '{kind}'")
    params = ocp.PyTreeCheckpointer().restore(os.path.join(path, "params"))
    return meta["config"], _to_numpy(params)


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _to_numpy(v) for i, v in enumerate(tree)}
    return np.asarray(tree)
