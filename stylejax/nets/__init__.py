"""Networks: StyleGAN2, e4e, ArcFace, LPIPS, StyleFlow. One contract (`stylejax.nets.base.Network`), one
loader: `stylejax.load(path)` reads a converted checkpoint's `kind` and returns that network object."""
import importlib

# checkpoint kind -> "module:class"; modules are imported only when their kind is loaded
KINDS = {
    "stylegan2": "stylejax.nets.generator:Generator",
    "e4e": "stylejax.nets.e4e:E4E",
    "arcface": "stylejax.nets.arcface:ArcFace",
    "lpips": "stylejax.nets.lpips:LPIPS",
    "styleflow": "stylejax.nets.styleflow:StyleFlow",
}


def network_class(kind):
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load(path, kind=None):
    """A converted checkpoint directory -> its network object (`Generator`, `E4E`, `ArcFace`, `LPIPS`,
    `StyleFlow`). With `kind`, anything else is refused with a one-line `CheckpointError`. Shapes and
    finiteness are checked against the config."""
    from stylejax.io import checkpoint

    found, config_dict, tree = checkpoint.load_raw(path, kind)
    cls = network_class(found)
    net = cls.from_variables(config_dict, tree)
    try:
        return net.check(source=str(path))
    except Exception as e:  # a config.json that disagrees with its params
        raise checkpoint.CheckpointError(str(e)) from None
