"""accelerate: swap, in place in any network, the modules whose math flexops fuses.

- Swin blocks of the SwinIR family as spandrel and the official repositories write them (SwinIR, DRCT,
  HAT's hybrid attention block, Swin2SR's block with cosine attention) become the zoo's Swin block
  on their own layers (flexops.models.swin_family): where they roll, partition, attend with the shift
  mask, reverse and roll back, it calls flexops.ops.window_attention on the token map with SwinIR's
  -100 mask. HAT's overlapping cross-attention block (OCAB) becomes the same block, attending its
  grown windows in one scaled_dot_product_attention where HAT unfolds, multiplies and softmaxes. The
  block's layers (norm1, attn, norm2, mlp, HAB's conv_block; OCAB's qkv, proj and bias table) and
  buffers are kept: no weight is copied and the network's state_dict keys do not change. Its plain
  nn.Linear layers (qkv, proj, fc1, fc2) become flexops.nn.kept_linear.KeptLinear on the same
  Parameters (fc1 with the MLP's GELU, in place): without autograd their large outputs come from
  memory flexops keeps between calls instead of freshly mapped pages.
- torchvision.ops.DeformConv2d -> flexops.nn.DeformConv2d holding the same weight and bias Parameters.
- A module whose forward calls the function torchvision.ops.deform_conv2d itself (DCNv2 packs such
  as BasicSR's, which predict their offsets and mask and then call it) keeps its class, layers and
  code: its forward is rebound, on that instance only, to a copy of the function whose globals
  resolve torchvision's deform_conv2d to flexops.ops.deform_conv2d (same arguments, same math).
  The copy sees the module's globals as they were when accelerate ran. A call made elsewhere (in a
  helper the forward calls) is not seen: such modules are not swapped.

A block is recognised by what it holds and how it is called, not by its class name (see
flexops.models.swin_family). What looks like attention but
has no fused equivalent here (a block with attention dropout) is left as it is and listed in the
report. The attention of a block that was not fused (a module with a
relative position table) is listed there too.

>>> report = flexops.accelerate(net)      # net: e.g. spandrel's HAT, in eval mode
>>> print(report)                          # what was replaced and what was left, one line each
"""

import dataclasses
import sys
import types

from torch import nn

from flexops import ops as flexops_ops
from flexops.nn.deform_conv import DeformConv2d


@dataclasses.dataclass
class AccelerationReport:
    """What `accelerate` did: `replaced` and `left` hold (module name, what / why) pairs."""

    replaced: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"replaced {len(self.replaced)} module(s), left {len(self.left)}"]
        lines += [f"  replaced {name}: {what}" for name, what in self.replaced]
        lines += [f"  left {name}: {why}" for name, why in self.left]
        return "\n".join(lines)


def _fused_deform_conv(conv):
    fused = DeformConv2d(conv.in_channels, conv.out_channels, conv.weight.shape[-2:], conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=conv.bias is not None)
    fused.weight, fused.bias = conv.weight, conv.bias  # the same Parameters, not copies
    return fused


class _WithFlexopsDeformConv(types.ModuleType):
    """torchvision or torchvision.ops as a rebound forward sees it: every attribute the module's own,
    but deform_conv2d flexops' (and ops, for torchvision, this view of torchvision.ops)."""

    def __init__(self, module, tv_ops):
        super().__init__(module.__name__)
        self._module, self._tv_ops = module, tv_ops

    def __getattr__(self, name):
        if name == "deform_conv2d" and self._module is self._tv_ops:
            return flexops_ops.deform_conv2d
        if name == "ops" and self._module is not self._tv_ops:
            return _WithFlexopsDeformConv(self._tv_ops, self._tv_ops)
        return getattr(self._module, name)


def _forward_on_flexops_deform_conv(module, tv_ops):
    """`module`'s forward as a function whose globals resolve torchvision's deform_conv2d to flexops'
    (whether the forward calls it as deform_conv2d, ops.deform_conv2d or torchvision.ops.deform_conv2d),
    or None if its code names none of those (or the instance has a forward of its own, set by hand)."""
    forward = type(module).forward
    if "forward" in vars(module) or not isinstance(forward, types.FunctionType):
        return None
    if "deform_conv2d" not in forward.__code__.co_names:
        return None
    views = {}
    for name in forward.__code__.co_names:
        value = forward.__globals__.get(name)
        if value is tv_ops.deform_conv2d:
            views[name] = flexops_ops.deform_conv2d
        elif value is tv_ops or value is sys.modules["torchvision"]:
            views[name] = _WithFlexopsDeformConv(value, tv_ops)
    if not views:
        return None
    rebound = types.FunctionType(forward.__code__, {**forward.__globals__, **views}, forward.__name__,
                                 forward.__defaults__, forward.__closure__)
    rebound.__kwdefaults__, rebound.__doc__ = forward.__kwdefaults__, forward.__doc__
    return rebound


def _replacement(module):
    """(new module, what it is) for a module flexops fuses, (None, why not) for attention left as it
    is, None for anything else."""
    # The zoo's module, looked up when a network is accelerated: `import flexops` does not import the zoo.
    from flexops.models import swin_family

    if type(module).__module__.startswith("flexops."):
        return None
    if swin_family.is_swin_block(module) or swin_family.is_overlap_block(module):
        why = swin_family.why_not_fused(module)
        if why is not None:
            return None, why
        fused = swin_family.fused_block(module)
        return fused, f"{type(module).__name__} -> {type(fused).__name__} ({fused.kind})"
    tv_ops = sys.modules.get("torchvision.ops")  # a torchvision layer in the network means it is imported
    if tv_ops is not None and type(module) is tv_ops.DeformConv2d:
        return _fused_deform_conv(module), "torchvision DeformConv2d -> flexops.nn.DeformConv2d"
    forward = None if tv_ops is None else _forward_on_flexops_deform_conv(module, tv_ops)
    if forward is not None:
        module.forward = types.MethodType(forward, module)  # this instance only; its class is untouched
        return module, (f"{type(module).__name__}: its forward's torchvision.ops.deform_conv2d -> "
                        "flexops.ops.deform_conv2d")
    if swin_family.is_window_attention(module):  # outside a block fused here
        return None, f"{type(module).__name__}: window attention of a kind flexops does not fuse"
    return None


def accelerate(model):
    """Replaces, in place, the modules of `model` whose math flexops fuses (see the module docstring)
    by fused ones on the same weights; returns an AccelerationReport of what it replaced and left.
    Outputs stay those of the original modules (to rounding: 1e-10 in float64, 1e-5 in float32)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    report = AccelerationReport()
    _swap(model, "", report)
    return report


def _swap(module, prefix, report):
    for name, child in list(module.named_children()):
        path = prefix + name
        found = _replacement(child)
        if found is None:
            _swap(child, path + ".", report)
            continue
        new, text = found
        if new is None:
            report.left.append((path, text))
            continue
        setattr(module, name, new)
        report.replaced.append((path, text))
        if hasattr(new, "conv_block"):  # HAT's channel-attention branch: a network of its own
            _swap(new.conv_block, path + ".conv_block.", report)
