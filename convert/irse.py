"""IR-SE body (TreB1eN InsightFace layout) torch state dict -> `stylejax.nets.irse.IRSEBody` params and config.

Shared by the e4e and ArcFace converters. Key mapping (torch -> ours):

    input_layer.{0,1,2}                  -> input_conv, input_bn, input_prelu
    body.{i}.res_layer.{0,1,2,3,4}       -> unit_{i}/bn_in, conv1, prelu, conv2, bn_out
    body.{i}.res_layer.5.fc{1,2}         -> unit_{i}/se_fc1, se_fc2
    body.{i}.shortcut_layer.{0,1}        -> unit_{i}/shortcut_conv, shortcut_bn

Pure numpy; missing keys raise KeyError (the callers turn it into a ConversionError).
"""
from stylejax.nets.irse import IRSEConfig


def conv_kernel(w):
    """torch [out, in, kh, kw] -> flax [kh, kw, in, out]."""
    return w.transpose(2, 3, 1, 0)


def bn_params(sd, prefix):
    """torch BatchNorm `{prefix}.weight/bias/running_mean/running_var` -> `BatchNormInference` params."""
    return {"scale": sd[prefix + ".weight"], "bias": sd[prefix + ".bias"],
            "mean": sd[prefix + ".running_mean"], "var": sd[prefix + ".running_var"]}


def body_params_from_state_dict(sd, prefix, config):
    """Maps `{prefix}input_layer.*` and `{prefix}body.{i}.*` to IRSEBody params (raises KeyError)."""
    p = {
        "input_conv": {"kernel": conv_kernel(sd[prefix + "input_layer.0.weight"])},
        "input_bn": bn_params(sd, prefix + "input_layer.1"),
        "input_prelu": {"alpha": sd[prefix + "input_layer.2.weight"].reshape(-1)},
    }
    for i, (c_in, depth, _) in enumerate(config.units()):
        u = f"{prefix}body.{i}."
        unit = {
            "bn_in": bn_params(sd, u + "res_layer.0"),
            "conv1": {"kernel": conv_kernel(sd[u + "res_layer.1.weight"])},
            "prelu": {"alpha": sd[u + "res_layer.2.weight"].reshape(-1)},
            "conv2": {"kernel": conv_kernel(sd[u + "res_layer.3.weight"])},
            "bn_out": bn_params(sd, u + "res_layer.4"),
            "se_fc1": {"kernel": conv_kernel(sd[u + "res_layer.5.fc1.weight"])},
            "se_fc2": {"kernel": conv_kernel(sd[u + "res_layer.5.fc2.weight"])},
        }
        if c_in != depth:
            unit["shortcut_conv"] = {"kernel": conv_kernel(sd[u + "shortcut_layer.0.weight"])}
            unit["shortcut_bn"] = bn_params(sd, u + "shortcut_layer.1")
        p[f"unit_{i}"] = unit
    return p


def infer_body_config(sd, prefix):
    """Reads the body shape from the state dict: widths from conv shapes; a stage starts at unit 0 and
    wherever the channel count changes (true for IR-SE50/100/152, whose stages all widen)."""
    stem_key = prefix + "input_layer.0.weight"
    if stem_key not in sd:
        raise KeyError(stem_key)
    stem = int(sd[stem_key].shape[0])
    depths, n = [], 0
    while f"{prefix}body.{n}.res_layer.1.weight" in sd:
        depths.append(int(sd[f"{prefix}body.{n}.res_layer.1.weight"].shape[0]))
        n += 1
    if n == 0:
        raise KeyError(prefix + "body.0.res_layer.1.weight")
    widths, units, c_in = [], [], stem
    for i, d in enumerate(depths):
        if i == 0 or d != c_in:
            widths.append(d)
            units.append(0)
        units[-1] += 1
        c_in = d
    fc1 = sd.get(prefix + "body.0.res_layer.5.fc1.weight")
    reduction = int(depths[0] // fc1.shape[0]) if fc1 is not None else 16
    return IRSEConfig(stem_width=stem, widths=tuple(widths), units_per_stage=tuple(units), se_reduction=reduction)
