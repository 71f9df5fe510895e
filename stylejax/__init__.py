"""stylejax: expressive talking-head video encoding in StyleGAN2 latent space (JAX/Flax).

Public entry points are imported lazily so that `import stylejax` stays cheap and a stage
(e.g. alignment) does not pull in the others.
"""
import importlib

_EXPORTS = {
    # generator (issue: foundation)
    "load_generator": "stylejax.generator",
    "Generator": "stylejax.generator",
    "GeneratorConfig": "stylejax.generator",
    "parse_channel_name": "stylejax.stylespace",
    "format_channel_name": "stylejax.stylespace",
    "channel_to_flat_index": "stylejax.stylespace",
    "flat_index_to_channel": "stylejax.stylespace",
    # auxiliary networks
    "load_e4e": "stylejax.e4e",
    "load_styleflow": "stylejax.styleflow",
    "load_lpips": "stylejax.lpips",
    "load_arcface": "stylejax.arcface",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stylejax' has no attribute {name!r}")
