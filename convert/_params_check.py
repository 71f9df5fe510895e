"""Converted params trees: fp32 normalisation, a check that every weight is finite, and a check against
the shapes the Flax module expects (one-line errors)."""
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


def check_against_init(src, params, module, *example_args):
    """Raises ConversionError unless `params` has exactly the keys and shapes `module.init` would make,
    and every value is finite."""
    import jax

    expected = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *example_args))["params"]
    want = {"/".join(str(getattr(k, "key", k)) for k in path): v.shape
            for path, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    got = {"/".join(str(getattr(k, "key", k)) for k in path): np.shape(v)
           for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = sorted(set(want) - set(got))
    if missing:
        raise ConversionError(f"{src}: converted parameters lack {missing[0]} ({len(missing)} missing); the file is incomplete")
    extra = sorted(set(got) - set(want))
    if extra:
        raise ConversionError(f"{src}: unexpected parameter {extra[0]}; the file does not match the architecture")
    for name in sorted(want):
        if tuple(want[name]) != tuple(got[name]):
            raise ConversionError(f"{src}: {name} has shape {tuple(got[name])}, expected {tuple(want[name])}; "
                                  "the file does not match the architecture")
    check_finite(src, params)
