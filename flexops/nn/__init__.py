"""nn.Modules built on the flexops ops."""

from flexops.nn.deform_conv import DeformConv2d, ModulatedDeformConv2d
from flexops.nn.masked_conv import MaskedConv2d
from flexops.nn.tunable import TunableConv2d, TunableLinear, TunableParameter
from flexops.nn.window_attention import WindowAttention, active_windows

__all__ = [
    "DeformConv2d",
    "MaskedConv2d",
    "ModulatedDeformConv2d",
    "TunableConv2d",
    "TunableLinear",
    "TunableParameter",
    "WindowAttention",
    "active_windows",
]
