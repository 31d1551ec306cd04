"""nn.Conv2d's and nn.Linear's default initialisation, for layers that hold their own parameters."""

import math

from torch import nn


def default_init_(weight, bias):
    """Initialise weight (fan-in = numel of one output row) and bias as torch's Conv2d/Linear do."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(weight[0].numel())
        nn.init.uniform_(bias, -bound, bound)
