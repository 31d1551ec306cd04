"""Pure-PyTorch references: the executable specification of every flexops op."""

from flexops.reference.deform_conv2d import deform_conv2d
from flexops.reference.masked_conv2d import masked_conv2d
from flexops.reference.tunable_conv2d import tunable_conv2d
from flexops.reference.window_attention import window_attention

__all__ = ["deform_conv2d", "masked_conv2d", "tunable_conv2d", "window_attention"]
