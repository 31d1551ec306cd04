"""The zoo's input checks, in one place: image batches, task vectors, settings omega, pointers.

Each raises flexops' ArgumentError (a ValueError and a RuntimeError) naming the argument and the
form expected. Under `torch.fx.symbolic_trace` the network's inputs are fx Proxies, whose shapes and
values are unknown while tracing, and under torch.export their values are: the checks let them
through, so the zoo's networks trace and export. The traced
graph holds no checks of the network's own (the flexops ops in it still check their arguments).
"""

import torch

from flexops.nn.tunable import checked_omega
from flexops.ops._args import ArgumentError, ArgumentTypeError


def traced(value):
    """Whether the network is being traced or exported, not run: `value` is an fx Proxy, or torch.export
    (and the ONNX exporter on it) is capturing a graph, where sizes are symbolic and values unknown."""
    return isinstance(value, torch.fx.Proxy) or torch.compiler.is_exporting()


def describe(value):
    """A tensor's shape as a list, else the value's type name (for messages)."""
    return list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def image_batch(x, channels, name="x"):
    """x must be a floating-point image batch [B, channels, H, W]."""
    if traced(x):
        return
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        raise ArgumentError(f"{name} must be [B, {channels}, H, W] (an image batch); got {describe(x)}")
    if not x.is_floating_point():
        raise ArgumentError(f"{name} must be a floating-point image; got {x.dtype}")


def image(image, name="image"):
    """image must be one floating-point image [C, H, W] or a batch [B, C, H, W], C = 3 (RGB) or 1 (gray)."""
    if not isinstance(image, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (3, 4) or image.shape[-3] not in (1, 3):
        raise ArgumentError(f"{name} must have shape [C, H, W] or [B, C, H, W] with C = 3 (RGB) or 1 (gray), "
                            f"got {list(image.shape)}")
    if not image.is_floating_point():
        raise ArgumentError(f"{name} must be a floating-point tensor in [0, 1], got dtype {image.dtype}")


def even_size(x, name, why):
    """x's height and width must be even (`why`: what halves them)."""
    if traced(x):
        return
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ArgumentError(f"{name} height and width must be even ({why}); got {list(x.shape[-2:])}: "
                            "crop one row/column (modcrop to a multiple of 2)")


def tasks(tasks, dim, batch=None, name="tasks"):
    """Task vectors [dim] or [rows, dim], each component in [0, 1] (0: none of that degradation, 1: the
    strongest); with `batch` (a network's image batch) rows must be 1 or batch, else (one output per
    task) any number. Returns them as [rows, dim]."""
    if traced(tasks):
        return tasks.reshape(-1, dim)
    rows = "M" if batch is None else "B"
    if not isinstance(tasks, torch.Tensor) or tasks.shape[-1:] != (dim,) or tasks.dim() > 2 or tasks.numel() == 0:
        raise ArgumentError(f"{name} must be [{dim}] or [{rows}, {dim}] (task vectors, one level per degradation); "
                            f"got {describe(tasks)}")
    vectors = tasks.reshape(-1, dim)
    if batch is not None and vectors.shape[0] not in (1, batch):
        raise ArgumentError(f"{name} has {vectors.shape[0]} rows but the batch has {batch} images")
    # One host sync per network call (on a GPU), not per layer; values are unknown while torch.compile
    # captures a graph.
    if not torch.compiler.is_compiling() and not bool(((vectors >= 0) & (vectors <= 1)).all()):
        raise ArgumentError(f"{name} must lie in [0, 1] componentwise (0: none of that degradation, 1: the "
                            f"strongest); got {vectors.tolist()}")
    return vectors


def unit_interval(value):
    """argparse type of a task component: a float in [0, 1]."""
    import argparse

    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"task components lie in [0, 1] (0: none of that degradation, "
                                         f"1: the strongest); got {value}")
    return number


def omega(omega, num_params, x, like, name="omega"):
    """omega as the network's layers take it: [p] (one setting for the batch) or [B, p] with B = x's
    batch, finite, as `like`'s dtype and device (a parameter of the network): the layers' own rule,
    flexops.nn.tunable.checked_omega."""
    if traced(omega) or traced(x):
        return omega
    return checked_omega(omega, num_params, like, x.shape[0], name)


def setting(omega, num_params, name="omega"):
    """One setting omega [p] (what bake fixes), finite (checked_omega's rule)."""
    if not isinstance(omega, torch.Tensor) or omega.shape != (num_params,):
        raise ArgumentError(f"{name} must be [{num_params}] (bake fixes one setting); got {describe(omega)}")
    checked_omega(omega, num_params, omega, name=name)


def pointer(value, num_blocks, name="pointer"):
    """An exit pointer: an int in [1, num_blocks]; None means the last."""
    if value is None:
        return num_blocks
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= num_blocks:
        raise ArgumentError(f"{name} must be an int in [1, {num_blocks}], got {value!r}")
    return value
