"""StyleFlow CNF (`modellarge10k.pt`, a plain `torch.save(prior.state_dict())`) -> stylejax checkpoint."""
from absl import flags
import re

import numpy as np

from convert import ConversionError
from convert._params_check import check_finite

KIND = "styleflow"
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")
_LAYER_RE = re.compile(r"chain\.1\.odefunc\.diffeq\.layers\.(\d+)\.")


def define_flags(fv):
    flags.DEFINE_string("src", None, "StyleFlow flow weights, e.g. flow_weight/modellarge10k.pt", flag_values=fv)
    flags.DEFINE_string("out", None, "output checkpoint directory", flag_values=fv)


def _array(sd, key, shape=None):
    if key not in sd:
        raise ConversionError(f"not a StyleFlow CNF state dict: key '{key}' is missing (expected modellarge10k.pt)")
    value = np.asarray(sd[key])
    if not np.issubdtype(value.dtype, np.floating):
        raise ConversionError(f"'{key}' has dtype {value.dtype}, expected floating point")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ConversionError(f"'{key}' has shape {tuple(value.shape)}, expected {tuple(shape)}")
    check_finite(None, {key: value})
    return value.astype(np.float32)


def state_dict_to_params(state_dict):
    """{name: array} (reference names, see reference-facts §4.1) -> (config, params)."""
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise ConversionError("not a StyleFlow CNF state dict: expected a dict of named tensors")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    layer_ids = sorted({int(m.group(1)) for k in sd for m in [_LAYER_RE.match(k)] if m})
    if not layer_ids:
        raise ConversionError("not a StyleFlow CNF state dict: no 'chain.1.odefunc.diffeq.layers.*' keys "
                              "(expected modellarge10k.pt from RameenAbdal/StyleFlow)")
    if layer_ids != list(range(len(layer_ids))):
        raise ConversionError(f"StyleFlow ODE net layers are not numbered 0..n-1: {layer_ids}")
    dim = np.asarray(_array(sd, "chain.0.running_mean")).shape[0]

    odenet, dims, in_dim, ctx_dim = {}, [], dim, None
    for i in layer_ids:
        prefix = f"chain.1.odefunc.diffeq.layers.{i}."
        weight = _array(sd, prefix + "_layer.weight")
        if weight.ndim != 2 or weight.shape[1] != in_dim:
            raise ConversionError(f"'{prefix}_layer.weight' has shape {weight.shape}, expected [out, {in_dim}]")
        out_dim = weight.shape[0]
        gate = _array(sd, prefix + "_hyper_gate.weight")
        if gate.ndim != 2 or gate.shape[0] != out_dim or (ctx_dim is not None and gate.shape[1] != ctx_dim):
            raise ConversionError(f"'{prefix}_hyper_gate.weight' has shape {gate.shape}, expected [{out_dim}, 1 + cond_dim]")
        ctx_dim = gate.shape[1]
        odenet[f"layers_{i}"] = {
            "layer": {"kernel": weight.T, "bias": _array(sd, prefix + "_layer.bias", (out_dim,))},
            "hyper_gate": {"kernel": gate.T, "bias": _array(sd, prefix + "_hyper_gate.bias", (out_dim,))},
            "hyper_bias": {"kernel": _array(sd, prefix + "_hyper_bias.weight", (out_dim, ctx_dim)).T},
        }
        dims.append(out_dim)
        in_dim = out_dim
    if dims[-1] != dim:
        raise ConversionError(f"last ODE net layer has {dims[-1]} outputs, expected {dim} (the flow's width)")

    sqrt_end_time = _array(sd, "chain.1.sqrt_end_time")
    if sqrt_end_time.size != 1:
        raise ConversionError(f"'chain.1.sqrt_end_time' has shape {sqrt_end_time.shape}, expected a scalar")
    params = {
        "bn_in": {k: _array(sd, f"chain.0.{k}", (dim,)) for k in _BN_KEYS},
        "odenet": odenet,
        "sqrt_end_time": sqrt_end_time.reshape(()),
        "bn_out": {k: _array(sd, f"chain.2.{k}", (dim,)) for k in _BN_KEYS},
    }
    if any(k.startswith("chain.3.") for k in sd):
        raise ConversionError("StyleFlow state dict has more than one CNF block; only num_blocks=1 is supported")
    config = {"dim": int(dim), "hidden_dims": [int(d) for d in dims[:-1]], "cond_dim": int(ctx_dim - 1),
              "bn_eps": 1e-4}
    return config, params


def _unwrap(obj):
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    return obj


def select(obj):
    """On the tensor views, before anything is copied (see `safe_pickle.load_torch_file`): no tensor larger
    than the flow its shapes describe needs, nor than the reference StyleFlow's (modellarge10k.pt)."""
    from convert.safe_pickle import check_tensor_sizes
    from stylejax.nets.styleflow import StyleFlow, StyleFlowConfig

    sd = _unwrap(obj)
    if not isinstance(sd, dict):
        return obj
    try:
        sd0 = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        layer = "chain.1.odefunc.diffeq.layers.{}."
        n = len({m.group(1) for k in sd0 for m in [_LAYER_RE.match(k)] if m})
        outs = [int(sd0[layer.format(i) + "_layer.weight"].shape[0]) for i in range(n)]
        config = StyleFlowConfig(dim=int(sd0["chain.0.running_mean"].shape[0]), hidden_dims=tuple(outs[:-1]),
                                 cond_dim=int(sd0[layer.format(0) + "_hyper_gate.weight"].shape[1]) - 1)
        check_tensor_sizes(sd, StyleFlow.expected_shapes(config), "StyleFlow CNF its shapes describe")
    except (KeyError, ValueError, TypeError, IndexError, AttributeError):
        pass  # not a complete StyleFlow state dict: state_dict_to_params names the problem
    check_tensor_sizes(sd, StyleFlow.expected_shapes(StyleFlowConfig()), "reference StyleFlow CNF (modellarge10k)")
    return obj


def run(args):
    from convert.safe_pickle import load_torch_file
    from stylejax.io import checkpoint

    state_dict = _unwrap(load_torch_file(args.src, max_bytes=256 << 20, select=select))  # modellarge10k.pt: a few MB
    config, params = state_dict_to_params(state_dict)
    from stylejax.nets.base import config_from_dict
    from stylejax.nets.styleflow import StyleFlow, StyleFlowConfig

    net = StyleFlow(config_from_dict(StyleFlowConfig, config), params)
    checkpoint.save_network(net, args.out, overwrite=args.overwrite, inputs=[args.src], source=args.src)
    return {"message": f"wrote {args.out}: StyleFlow CNF dim {config['dim']}, {len(params['odenet'])} ODE layers, "
                       f"cond {config['cond_dim']}, T = {float(params['sqrt_end_time']) ** 2:.4f}", "out": args.out}
