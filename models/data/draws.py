"""The scalar random draws of the zoo's data (levels, patches), each from an explicit generator, so a
result is a pure function of its seed."""

import torch


def uniform(generator: torch.Generator | None) -> float:
    """A float in [0, 1) (float64 precision)."""
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def integer(n: int, generator: torch.Generator | None) -> int:
    """An int in [0, n)."""
    return int(torch.randint(n, (), generator=generator))
