"""Which implementation of an op runs, and why the others cannot.

Backends: "reference" (pure PyTorch, the specification), "cpu" (C++ in flexops._C), "cuda" (CUDA
C++ in flexops._C) and "triton". By default CPU tensors run on "cpu" and CUDA tensors on the first
backend of the op's CUDA priority list that can run them. `FLEXOPS_BACKEND=<name>` or
`with flexops.backends.use(name):` forces one; a forced backend that cannot run the input raises
BackendUnavailable with the reason. Nothing falls back silently.

`use` holds for the thread (and asyncio task) that entered it, as torch's own context managers do;
FLEXOPS_BACKEND is the process-wide default under it.
"""

import contextlib
import contextvars
import importlib.util
import os

import torch

NAMES = ("reference", "cpu", "cuda", "triton")
DTYPES = {
    "reference": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    # float16 and bfloat16 run the float32 kernels on their widened tensors (csrc/cpu/in_float32.h), or
    # (masked_conv2d's forward) a float32 kernel that widens them per band.
    "cpu": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "triton": (torch.float16, torch.bfloat16, torch.float32),
}
# The backends tried, in order, for CUDA tensors when none is forced; per op, chosen by benchmark.
CUDA_PRIORITY = {
    "tunable_conv2d": ("cuda", "triton"),
    "deform_conv2d": ("cuda", "triton"),
    # Both launch once for all tasks; Triton's tl.dot tiles can use tensor cores, the CUDA kernel's
    # register tiles cannot (expected, not yet timed on a GPU).
    "masked_conv2d": ("triton", "cuda"),
    # No CUDA C++ kernel: the Triton kernel is its GPU backend (see MISSING).
    "window_attention": ("triton",),
}
# Backends an op does not have, and why.
MISSING = {
    "window_attention": {
        "cuda": "window_attention has no CUDA C++ kernel; its GPU backend is 'triton'",
    },
}

# The backend `use` forces in the current context; a new thread starts with None.
_forced_by_use = contextvars.ContextVar("flexops_forced_backend", default=None)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this input; the message says why."""


def _check_name(name, source):
    if name not in NAMES:
        raise ValueError(f"{source} must be one of {', '.join(NAMES)}; got {name!r}")
    return name


@contextlib.contextmanager
def use(name):
    """Force backend `name` for flexops ops called inside the block by this thread (or task)."""
    token = _forced_by_use.set(_check_name(name, "flexops.backends.use(name)"))
    try:
        yield
    finally:
        _forced_by_use.reset(token)


def forced():
    """The backend forced by this context's `use`, else by FLEXOPS_BACKEND, or None."""
    name = _forced_by_use.get()
    if name is not None:
        return name
    env = os.environ.get("FLEXOPS_BACKEND")
    return _check_name(env, "FLEXOPS_BACKEND") if env else None


def _read_build_info():
    from flexops import _C

    archs = [a for a in _C.cuda_archs.replace(" ", ";").split(";") if a]
    return {
        "cpu_kernels": True,
        "cuda_kernels": bool(archs),
        "cuda_archs": archs,
        "cuda_device": torch.cuda.is_available(),
        "triton_installed": importlib.util.find_spec("triton") is not None,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }


# Read once at import: these facts do not change while the process runs, and torch.compile then
# sees constants instead of tracing the probes.
_BUILD_INFO = _read_build_info()


def info():
    """What this installation can run: compiled kernels, CUDA archs, Triton."""
    return dict(_BUILD_INFO)


def why_not(backend, device, dtype):
    """None if `backend` can run tensors of this device and dtype, else the reason."""
    facts = _BUILD_INFO
    if dtype not in DTYPES[backend]:
        supported = ", ".join(str(d).removeprefix("torch.") for d in DTYPES[backend])
        return f"dtype {dtype} is not supported (supported: {supported})"
    if backend == "cpu" and device.type != "cpu":
        return f"it runs CPU tensors, the input is on {device}"
    if backend == "cuda":
        if not facts["cuda_kernels"]:
            return "flexops was built without CUDA kernels (torch without CUDA, no toolkit, or FLEXOPS_CUDA=0)"
        if device.type != "cuda":
            return f"it runs CUDA tensors, the input is on {device}"
    if backend == "triton":
        if not facts["triton_installed"]:
            return "triton is not installed"
        if device.type == "cpu" and not facts["triton_interpret"]:
            return "CPU tensors need TRITON_INTERPRET=1 set before triton is imported"
        if device.type not in ("cpu", "cuda"):
            return f"it runs CUDA tensors (or CPU ones under TRITON_INTERPRET=1), the input is on {device}"
    return None


def choose(op, device, dtype):
    """The backend that runs `op` on tensors of this device and dtype; raises if none can."""
    name = forced()
    if name is not None:
        reason = MISSING.get(op, {}).get(name) or why_not(name, device, dtype)
        if reason is not None:
            raise BackendUnavailable(f"flexops.{op}: forced backend {name!r} cannot run: {reason}")
        return name
    candidates = ("cpu",) if device.type == "cpu" else CUDA_PRIORITY[op]
    reasons = []
    for candidate in candidates:
        reason = why_not(candidate, device, dtype)
        if reason is None:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    raise BackendUnavailable(
        f"flexops.{op}: no backend runs {dtype} tensors on {device} ({'; '.join(reasons)}); "
        "flexops.backends.use('reference') runs the pure-PyTorch reference"
    )
