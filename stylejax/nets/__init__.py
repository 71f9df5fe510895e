"""Networks: StyleGAN2, e4e, ArcFace, LPIPS, StyleFlow, on one contract (`stylejax.nets.base.Network`).
Network code does no I/O: checkpoints are read and written by `stylejax.io.checkpoint` (`stylejax.load`),
which finds a checkpoint's class through the registry below."""
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
