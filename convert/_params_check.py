"""Converted params trees: fp32 normalisation, a check that every weight is finite, and the network
contract's shape check as a ConversionError (one-line errors)."""
import numpy as np

from convert import ConversionError


def as_f32(tree):
    """Nested dict of arrays -> the same tree of C-contiguous float32 numpy arrays."""
    if isinstance(tree, dict):
        return {k: as_f32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)


def check_finite(src, tree):
    """Raises ConversionError naming the first array (in the tree's order) holding NaN or inf.

    `tree`: a dict of arrays, nested or flat; nested keys are named `outer/inner`. `src` (the file,
    or None) prefixes the message. Every converter calls this on what it is about to write, so that a
    damaged checkpoint is refused at conversion instead of producing NaN images later.
    """
    todo = [("", tree)]
    while todo:  # depth-first, in insertion order, without recursion
        prefix, node = todo.pop()
        if isinstance(node, dict):
            todo.extend((f"{prefix}{k}" if not prefix else f"{prefix}/{k}", v)
                        for k, v in reversed(list(node.items())))
            continue
        if node is None:
            continue
        values = np.asarray(node)
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            where = f"{src}: " if src else ""
            raise ConversionError(f"{where}{prefix} contains NaN or inf values ({bad} of {values.size}); "
                                  "the checkpoint is corrupt")


def check_network(src, net):
    """Raises ConversionError unless the network object's params have exactly the keys and shapes its
    config implies and every value is finite (`stylejax.nets.base.Network.check`)."""
    from stylejax.nets.base import ShapeError

    try:
        return net.check(str(src))
    except ShapeError as e:
        raise ConversionError(str(e)) from None
