"""flexops functional ops: argument checks, autograd, fake kernels and backend dispatch."""

from flexops.ops.tunable_conv2d import tunable_conv2d

__all__ = ["tunable_conv2d"]
