"""How a flexops op is registered with torch and which kernel a call runs: one rule for all four ops.

Each op `flexops::<name>` (schemas in csrc/flexops.cpp) has two forwards: the compiled one, whose
kernels the C++ library registers per device, and `<name>_triton`, whose kernel is a function of
flexops/triton/<name>.py. Each forward has its backward op, `<name>_backward` and
`<name>_backward_triton` (tunable_conv2d's Triton forward shares the compiled backward). `Op`
registers for them: the fake kernels (torch.compile, opcheck), the Triton kernels, autograd (each
forward with its own backend's backward) and autocast; `Op.choose` picks the kernel of a call.

Autocast: all four ops follow torch's lower_precision_fp policy, as conv2d does for the convolutions
and scaled_dot_product_attention for the attention. Inside an autocast region of their device, the
floating-point tensor arguments other than float64 ones (input, weights, bias, alpha, offsets,
deform_conv2d's mask, qkv, rel_pos_bias) are cast to the region's dtype and the op runs in it;
gradients reach fp32 parameters through the casts. `autocast` is that cast: the Python ops apply it
before their argument checks, and the Autocast kernels registered here apply it to the raw
torch.ops.flexops calls, so both behave alike.
"""

import importlib

import torch

from flexops import backends

# Owns the autocast kernels; they live as long as the process.
_LIBRARY = torch.library.Library("flexops", "IMPL")
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def autocast(*tensors):
    """`tensors` as the op computes with them: under an autocast region of their device (the first
    one's, the op's input), each floating-point tensor on that device other than a float64 one in
    the region's dtype; everything else, and everything outside a region, unchanged. The argument
    checks that follow report what is not a tensor."""
    first = tensors[0]
    # The quick test first: every call of an op outside autocast passes here.
    if not torch._C._is_any_autocast_enabled() or not isinstance(first, torch.Tensor):
        return tensors
    device_type = first.device.type
    if device_type not in _AUTOCAST_KEYS or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        t.to(dtype)
        if isinstance(t, torch.Tensor) and t.device.type == device_type and t.is_floating_point() and t.dtype != torch.float64
        else t
        for t in tensors
    )


class Op:
    """The registrations of op `name` and its kernel choice.

    Args:
        name: the op, `flexops::<name>`.
        reference: the pure-PyTorch reference, taking the schema's arguments in the schema's order.
        fake, fake_backward: the fake kernels of the forwards and of the backwards.
        setup_context(ctx, inputs, output): what the backward needs, as torch.library.register_autograd.
        backward(ctx, grad_output, backward_op): the forward's input gradients, computed by
            backward_op (the forward's own backend's backward op).
        triton_forward, triton_backward: the functions of flexops/triton/<name>.py that run the
            Triton ops; triton_backward None: the Triton forward uses the compiled backward.
    """

    def __init__(self, name, reference, fake, fake_backward, setup_context, backward, triton_forward, triton_backward=None):
        self.name = name
        ops = torch.ops.flexops
        native_backward = f"{name}_backward"
        triton_backward_op = native_backward if triton_backward is None else f"{name}_backward_triton"
        for forward, backward_op in ((name, native_backward), (f"{name}_triton", triton_backward_op)):
            torch.library.register_fake(f"flexops::{forward}")(fake)
            torch.library.register_autograd(
                f"flexops::{forward}",
                _backward_through(backward, getattr(ops, backward_op).default),
                setup_context=setup_context,
            )
            _register_autocast(forward)
        for backward_op in {native_backward, triton_backward_op}:
            torch.library.register_fake(f"flexops::{backward_op}")(fake_backward)
        _register_triton(f"{name}_triton", name, triton_forward)
        if triton_backward is not None:
            _register_triton(triton_backward_op, name, triton_backward)
        # The overloads themselves, not the packets: resolving a packet costs microseconds a call.
        native = getattr(ops, name).default
        self._kernels = {"reference": reference, "cpu": native, "cuda": native, "triton": getattr(ops, f"{name}_triton").default}

    def choose(self, tensor):
        """(backend, kernel) for a call on tensors of `tensor`'s device and dtype; the kernel takes
        the schema's arguments. Raises BackendUnavailable when no backend can run them."""
        backend = backends.choose(self.name, tensor.device, tensor.dtype)
        return backend, self._kernels[backend]


def _backward_through(backward, backward_op):
    def autograd_backward(ctx, grad_output):
        return backward(ctx, grad_output, backward_op)

    return autograd_backward


def _register_triton(op, module, function):
    """Registers flexops.triton.<module>.<function> as op's CPU and CUDA kernel, imported on the
    first call: importing Triton costs seconds that a process without Triton calls need not pay."""

    def kernel(*args, **kwargs):
        return getattr(importlib.import_module(f"flexops.triton.{module}"), function)(*args, **kwargs)

    torch.library.register_kernel(f"flexops::{op}", ("cpu", "cuda"))(kernel)


def _register_autocast(op):
    """op's Autocast kernels: the arguments through `autocast`, then op with autocast off, as torch's
    own autocast kernels run theirs (torch.library.register_autocast casts to one fixed dtype
    instead of the region's)."""
    overload = getattr(torch.ops.flexops, op).default
    for device_type, key in _AUTOCAST_KEYS.items():

        def kernel(*args, device_type=device_type):
            args = autocast(*args)
            with torch.autocast(device_type, enabled=False):
                return overload(*args)

        _LIBRARY.impl(op, kernel, key)
