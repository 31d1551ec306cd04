"""Parameters and MACs in FlexIR's counting convention (the paper's Tables 3-4: thop 0.1.1 on the
official SwinIR; spec section 5).

Conv2d: output elements x Cin / groups x k^2 (no bias); Linear: output elements x in_features;
LayerNorm: 4 x elements; softmax: rows x (3 N - 1) with N = window tokens (the fused op has no
nn.Softmax, so the term is added for each Swin block); GELU, LeakyReLU, PixelShuffle,
additions and the attention matmuls: 0. Parameters: those of the leaf modules that run, so
relative_position_bias_table (and absolute_pos_embed) are not counted. The network runs on the meta
device: no memory, no arithmetic.
"""

import torch
from torch import nn

from flexops import backends
from flexops.models.flexir.network import TAIL_MODULES, FlexIR
from flexops.models.swinir import SwinTransformerBlock


def _module_macs(module, inputs, output):
    if isinstance(module, nn.Conv2d):
        return output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.LayerNorm):
        return 4 * inputs[0].numel()
    if isinstance(module, SwinTransformerBlock):
        tokens = module.window_size**2
        rows = inputs[0].shape[:-1].numel() * module.attn.num_heads  # every token is one row per head
        return rows * (3 * tokens - 1)
    return 0


def _meta_copy(model):
    extra = {"shared_tail": model.shared_tail} if isinstance(model, FlexIR) else {}
    with torch.device("meta"):
        return type(model)(**model.config, **extra)


def parts(model, input_shape):
    """Costs of the pieces at one input shape: {"head": (params, macs), "layers": [(params, macs)]
    per RSTB, "branches": [(params, macs)] per exit} (for SwinIR one branch, its tail)."""
    model = _meta_copy(model)
    costs = {}

    def record(name):
        def hook(module, inputs, output):
            params = sum(p.numel() for p in module.parameters(recurse=False))
            if name not in costs:
                costs[name] = [0, 0]
            costs[name][0] += params
            costs[name][1] += _module_macs(module, inputs, output)
        return hook

    for name, module in model.named_modules():
        if not list(module.children()) or isinstance(module, SwinTransformerBlock):
            module.register_forward_hook(record(name))
    x = torch.empty(input_shape, device="meta")
    with torch.no_grad(), backends.use("reference"):  # the pure-PyTorch reference runs meta tensors
        height, width = x.shape[-2:]
        x, x_first, tokens = model.head(x)
        features = []
        for layer in model.layers:
            tokens = layer(tokens)
            features.append(tokens)
        if getattr(model, "shared_tail", True):  # SwinIR, or one tail: it costs the same after any block
            model.reconstruct(features[-1], x_first, x)
        else:
            for branch, feature in zip(model.branches, features):
                branch.reconstruct(feature, x_first, x)

    def total(prefix_test):
        entries = [v for k, v in costs.items() if prefix_test(k)]
        return sum(e[0] for e in entries), sum(e[1] for e in entries)

    num = len(model.layers)
    in_tail = lambda k: k.split(".")[0] in TAIL_MODULES  # noqa: E731
    layers = [total(lambda k, j=j: k.startswith(f"layers.{j}.")) for j in range(num)]
    if getattr(model, "shared_tail", True):
        branch_costs = [total(in_tail)] * (num if isinstance(model, FlexIR) else 1)
    else:
        branch_costs = [total(lambda k, j=j: k.startswith(f"branches.{j}.")) for j in range(num)]
    head = total(lambda k: not k.startswith(("layers.", "branches.")) and not in_tail(k))
    return {"head": head, "layers": layers, "branches": branch_costs}


def cost(model, input_shape, pointer=None):
    """(params, MACs) of running `model` (FlexIR, or SwinIR with pointer None) at `pointer` on an
    input of `input_shape` [B, C, H, W], in the paper's convention (module docstring).

    Example (Table 3): cost(FlexIR(img_size=128, window_size=8, depths=[6] * 6, embed_dim=180,
    num_heads=[6] * 6, mlp_ratio=2, upscale=1), (1, 3, 128, 128), pointer=1) == (2161263, 35472605184).
    """
    if len(input_shape) != 4 or input_shape[1] != model.in_chans:
        raise ValueError(f"input_shape must be [B, in_chans = {model.in_chans}, H, W], got {tuple(input_shape)}")
    if isinstance(model, FlexIR):
        pointer = model.check_pointer(pointer)
    elif pointer is not None:
        raise ValueError(f"pointer applies to FlexIR only; got pointer={pointer!r} for {type(model).__name__}")
    else:
        pointer = len(model.layers)
    costs = parts(model, input_shape)
    pieces = [costs["head"], *costs["layers"][:pointer], costs["branches"][min(pointer, len(costs["branches"])) - 1]]
    return sum(p for p, _ in pieces), sum(m for _, m in pieces)


def adaptive_macs(model, region_shape, exits):
    """MACs of Algorithm 2 in crop mode for regions of `region_shape` [B, C, h, w] that exit at
    `exits` (1-based): each runs the head, then RSTB j and exit j for j = 1..e."""
    costs = parts(model, region_shape)
    head = costs["head"][1]
    steps = [layer[1] + branch[1] for layer, branch in zip(costs["layers"], costs["branches"])]
    return sum(head + sum(steps[:int(e)]) for e in exits)
