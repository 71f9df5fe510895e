"""stylejax: expressive talking-head video encoding in StyleGAN2 latent space (JAX/Flax).

    net = stylejax.load("ckpt/ffhq")     # any converted network: Generator, E4E, ArcFace, LPIPS, StyleFlow

Public entry points are imported lazily so that `import stylejax` stays cheap and a stage
(e.g. alignment) does not pull in the others.
"""
import importlib

_EXPORTS = {
    "load": "stylejax.io.checkpoint",
    "UserError": "stylejax.errors",
    # networks
    "Generator": "stylejax.nets.generator",
    "GeneratorConfig": "stylejax.nets.generator",
    "E4E": "stylejax.nets.e4e",
    "ArcFace": "stylejax.nets.arcface",
    "LPIPS": "stylejax.nets.lpips",
    "StyleFlow": "stylejax.nets.styleflow",
    # thin aliases of `load(path, kind)` (save_generator too)
    "save_generator": "stylejax.io.checkpoint",
    "load_generator": "stylejax.io.checkpoint",
    "load_e4e": "stylejax.io.checkpoint",
    "load_styleflow": "stylejax.io.checkpoint",
    "load_lpips": "stylejax.io.checkpoint",
    "load_arcface": "stylejax.io.checkpoint",
    # StyleSpace channel names
    "parse_channel_name": "stylejax.nets.stylespace",
    "format_channel_name": "stylejax.nets.stylespace",
    "channel_to_flat_index": "stylejax.nets.stylespace",
    "flat_index_to_channel": "stylejax.nets.stylespace",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stylejax' has no attribute {name!r}")
