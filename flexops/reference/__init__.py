"""Pure-PyTorch references: the executable specification of every flexops op."""

from flexops.reference.tunable_conv2d import tunable_conv2d

__all__ = ["tunable_conv2d"]
