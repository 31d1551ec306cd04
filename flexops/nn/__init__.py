"""nn.Modules built on the flexops ops."""

from flexops.nn.tunable import TunableConv2d, TunableLinear, TunableParameter

__all__ = ["TunableConv2d", "TunableLinear", "TunableParameter"]
