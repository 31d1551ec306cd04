"""Checks of what a layer is given, in the layer's terms: a mistake in a layer's input must not
surface as a message about the layer's internal weights."""

import torch

from flexops.ops._args import ArgumentError, fx_leaf


@fx_leaf
def image(x, in_channels):
    """x itself once it is [B, in_channels, H, W]. One node under torch.fx, where shapes are unknown."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != in_channels:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ArgumentError(f"x must be [B, in_channels={in_channels}, H, W] for this layer, got {shape}")
    return x
