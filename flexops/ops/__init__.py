"""flexops functional ops: argument checks, autograd, fake kernels and backend dispatch."""

from flexops.ops._args import ArgumentError
from flexops.ops.deform_conv2d import deform_conv2d
from flexops.ops.masked_conv2d import masked_conv2d
from flexops.ops.tunable_conv2d import tunable_conv2d
from flexops.ops.window_attention import window_attention

__all__ = ["ArgumentError", "deform_conv2d", "masked_conv2d", "tunable_conv2d", "window_attention"]
