"""Converted params trees: fp32 normalisation, and the network contract's shape/finiteness check as a
ConversionError (one-line errors)."""
import numpy as np

from convert import ConversionError


def as_f32(tree):
    """Nested dict of arrays -> the same tree of C-contiguous float32 numpy arrays."""
    if isinstance(tree, dict):
        return {k: as_f32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)


def check_network(src, net):
    """Raises ConversionError unless the network object's params have exactly the keys and shapes its
    config implies and every value is finite (`stylejax.nets.base.Network.check`)."""
    from stylejax.nets.base import ShapeError

    try:
        return net.check(str(src))
    except ShapeError as e:
        raise ConversionError(str(e)) from None
