"""flexops: fused kernels for controllable and flexible image restoration.

Layers: TunableConv2d, TunableLinear, TunableParameter, DeformConv2d, ModulatedDeformConv2d,
MaskedConv2d, WindowAttention (with active_windows for early exit).
Functional ops: flexops.ops. Backend choice: flexops.backends. FLOP counting: flexops.flops.
Model zoo: flexops.models.
"""

import torch  # noqa: F401  (loads libtorch, which flexops._C links against)

from flexops import _C  # noqa: F401  (loading the library registers the flexops ops)
from flexops import backends, flops, ops
from flexops.nn import (
    DeformConv2d,
    MaskedConv2d,
    ModulatedDeformConv2d,
    TunableConv2d,
    TunableLinear,
    TunableParameter,
    WindowAttention,
    active_windows,
)

__version__ = "0.1.0"
__all__ = [
    "DeformConv2d",
    "MaskedConv2d",
    "ModulatedDeformConv2d",
    "TunableConv2d",
    "TunableLinear",
    "TunableParameter",
    "WindowAttention",
    "active_windows",
    "backends",
    "flops",
    "ops",
]
