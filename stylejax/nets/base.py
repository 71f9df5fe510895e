"""The one shape every network has: a pytree with a static config and array leaves.

    net = stylejax.load("ckpt/e4e")            # dispatches on config.json's "kind"
    ws = jax.jit(lambda net, x: net(x))(net, images)   # the network is a jit *argument*

A `Network` subclass names its `kind`, its `config_class` (a frozen dataclass) and an `init(config, key)`
returning random variables in the checkpoint's layout. Leaves are `params` (trainable) and `buffers`
(not trained: noise maps, running statistics); the config is static pytree aux data, so `jax.jit`,
`jax.grad` (w.r.t. `net.params`), `jax.vmap` and shardings pass through a network object. Methods are pure
and un-jitted: callers jit at their boundary and choose shardings and donation; `dtype` is a call argument.
"""
import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np

from stylejax.errors import UserError


class ShapeError(UserError):
    """Parameters disagree with the shapes the network's config implies."""


# ----------------------------------------------------------------------------------------------- configs

def config_to_dict(config):
    """Frozen dataclass (nested allowed) -> JSON-able dict; tuples become lists."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, np.generic):
            return v.item()
        return v
    return plain(config)


def config_from_dict(cls, d):
    """Inverse of `config_to_dict`: nested dataclass fields are rebuilt from their annotated type, lists
    become tuples, keys the dataclass does not know are refused (a config.json from another version)."""
    if not isinstance(d, dict):
        raise ShapeError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ShapeError(f"{cls.__name__}: unknown key {unknown[0]!r} in config")
    kwargs = {}
    for name, value in d.items():
        typ = hints.get(name)
        if dataclasses.is_dataclass(typ):
            kwargs[name] = config_from_dict(typ, value)
        else:
            kwargs[name] = _tuples(value)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ShapeError(f"{cls.__name__}: invalid config ({e})") from None


def _tuples(v):
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v


# ----------------------------------------------------------------------------------------------- networks

def path_name(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flat_shapes(tree):
    return {path_name(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Network:
    """Base class: subclasses set `kind`, `config_class` and implement `init`; register them with
    `jax.tree_util.register_pytree_node_class` and in `stylejax.nets.KINDS`."""

    kind: typing.ClassVar[str] = ""
    config_class: typing.ClassVar[type] = None

    def __init__(self, config, params, buffers=None):
        self.config = config
        self.params = params
        self.buffers = {} if buffers is None else buffers

    # -- pytree: config static, params and buffers leaves
    def tree_flatten(self):
        return (self.params, self.buffers), self.config

    @classmethod
    def tree_unflatten(cls, config, children):
        return cls(config, *children)

    # -- construction
    @classmethod
    def init(cls, config, key):
        """Random variables {"params": ..., "buffers": ...} in this network's layout."""
        raise NotImplementedError

    @classmethod
    def random(cls, config, key=None):
        key = jax.random.PRNGKey(0) if key is None else key
        v = cls.init(config, key)
        return cls(config, v["params"], v.get("buffers", {}))

    @classmethod
    def expected_shapes(cls, config):
        """{"params/...": shape, "buffers/...": shape} without allocating (jax.eval_shape of `init`)."""
        abstract = jax.eval_shape(lambda: cls.init(config, jax.random.PRNGKey(0)))
        return flat_shapes({"params": abstract["params"], "buffers": abstract.get("buffers", {})})

    def check(self, source="parameters"):
        """Raises ShapeError unless params/buffers have exactly the keys and shapes the config implies and
        every value is finite. `source` names the file in the message."""
        want = self.expected_shapes(self.config)
        got = flat_shapes({"params": self.params, "buffers": self.buffers})
        missing = sorted(set(want) - set(got))
        if missing:
            raise ShapeError(f"{source}: {self.kind} parameters lack {missing[0]} ({len(missing)} missing); "
                             "the file is incomplete or for another architecture")
        extra = sorted(set(got) - set(want))
        if extra:
            raise ShapeError(f"{source}: unexpected {self.kind} parameter {extra[0]}; "
                             "the file does not match the architecture")
        for name in sorted(want):
            if want[name] != got[name]:
                raise ShapeError(f"{source}: {self.kind} parameter {name} has shape {got[name]}, expected "
                                 f"{want[name]} from its config; the file does not match the architecture")
        for path, v in jax.tree_util.tree_flatten_with_path({"params": self.params, "buffers": self.buffers})[0]:
            if not np.all(np.isfinite(np.asarray(v))):
                raise ShapeError(f"{source}: {self.kind} parameter {path_name(path)} contains NaN or inf; "
                                 "the checkpoint is corrupt")
        return self

    # -- checkpoint form (see stylejax.io.checkpoint)
    def config_dict(self):
        return config_to_dict(self.config)

    def variables(self):
        """The tree written to a checkpoint's params/ folder."""
        return {"params": self.params, "buffers": self.buffers} if self.buffers else self.params

    @classmethod
    def from_variables(cls, config_dict, tree):
        config = config_from_dict(cls.config_class, config_dict)
        to_jnp = lambda t: jax.tree_util.tree_map(jnp.asarray, t)
        if isinstance(tree, dict) and set(tree) == {"params", "buffers"}:
            return cls(config, to_jnp(tree["params"]), to_jnp(tree["buffers"]))
        return cls(config, to_jnp(tree))

    def __repr__(self):
        n = sum(int(np.prod(np.shape(v))) for v in jax.tree_util.tree_leaves(self.params))
        return f"{type(self).__name__}({self.config}, {n:,} params)"
