"""StyleSpace channel names and flat indices (Wu et al. 2021 convention).

A channel is named "<layer>_<channel>", e.g. "6_501" (smile at 1024): the layer index counts all style
layers in use order *including* ToRGB (26 at 1024: conv 4x4, torgb 4x4, conv0 8, conv1 8, torgb 8, ...),
and the channel indexes that layer's style vector. Flat indices count channels over all layers in the
same order (9088 at 1024).
"""
import numpy as np


def layer_dims(config):
    """Style dimension of each layer, in use order."""
    return [dim for _, _, dim, _ in config.style_layers()]


def layer_offsets(config):
    return np.concatenate([[0], np.cumsum(layer_dims(config))[:-1]]).astype(int)


def parse_channel_name(name):
    """"6_501" -> (6, 501)."""
    try:
        layer, channel = str(name).split("_")
        return int(layer), int(channel)
    except ValueError:
        raise ValueError(f"bad StyleSpace channel name {name!r}; expected '<layer>_<channel>', e.g. '6_501'") from None


def format_channel_name(layer, channel):
    return f"{int(layer)}_{int(channel)}"


def channel_to_flat_index(name_or_pair, config):
    layer, channel = (parse_channel_name(name_or_pair) if isinstance(name_or_pair, str)
                      else map(int, name_or_pair))
    dims = layer_dims(config)
    if not 0 <= layer < len(dims):
        raise ValueError(f"StyleSpace layer {layer} out of range (this generator has {len(dims)} layers)")
    if not 0 <= channel < dims[layer]:
        raise ValueError(f"channel {channel} out of range for StyleSpace layer {layer} ({dims[layer]} channels)")
    return int(layer_offsets(config)[layer] + channel)


def flat_index_to_channel(index, config):
    """Flat index -> "layer_channel"."""
    offsets = layer_offsets(config)
    total = sum(layer_dims(config))
    if not 0 <= index < total:
        raise ValueError(f"flat StyleSpace index {index} out of range [0, {total})")
    layer = int(np.searchsorted(offsets, index, side="right") - 1)
    return format_channel_name(layer, index - offsets[layer])


def flatten_styles(styles):
    """List of [B, C_l] -> [B, sum C_l]."""
    import jax.numpy as jnp

    return jnp.concatenate(list(styles), axis=-1)


def unflatten_styles(flat, config):
    """[B, sum C_l] -> list of [B, C_l]."""
    dims = layer_dims(config)
    out, i = [], 0
    for d in dims:
        out.append(flat[..., i:i + d])
        i += d
    return out


def edit_channels(styles, channels, deltas, config):
    """Adds deltas[..., k] to channel k of `channels` ("6_501" names or (layer, channel) pairs).

    deltas: [len(channels)] or per frame [B, len(channels)]. Returns new styles (functional, grad-friendly).
    """
    import jax.numpy as jnp

    flat = flatten_styles(styles)
    idx = jnp.asarray([channel_to_flat_index(c, config) for c in channels])
    flat = flat.at[..., idx].add(jnp.broadcast_to(jnp.asarray(deltas, flat.dtype), flat.shape[:-1] + idx.shape))
    return unflatten_styles(flat, config)
