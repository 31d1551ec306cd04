"""flexops: fused kernels for controllable and flexible image restoration.

Layers: TunableConv2d, TunableLinear, TunableParameter, DeformConv2d, ModulatedDeformConv2d,
MaskedConv2d, WindowAttention (with active_windows for early exit).
Fused modules swapped into a third-party network: flexops.accelerate(model).
Functional ops: flexops.ops. Backend choice: flexops.backends. FLOP counting: flexops.flops.
Model zoo: flexops.models.
"""

import os
import warnings

import torch  # noqa: F401  (loads libtorch, which flexops._C links against)


def _check_torch_version(built, running):
    """The extension links against torch's C++ ABI: running it with another torch release fails in
    obscure ways (undefined symbols, crashes), so say so plainly. Two builds of the same release
    (e.g. +cpu and +cu130) share the ABI of their C++ API: only a warning."""
    if built == running:
        return
    rebuild = ("rebuild flexops against the torch you run: `pip install --no-build-isolation --force-reinstall "
               "--no-deps .` in the flexops checkout")
    if built.split("+")[0] == running.split("+")[0]:
        warnings.warn(f"flexops was built with torch {built} and runs with torch {running}; if its ops fail, {rebuild}")
        return
    raise ImportError(f"flexops was built against torch {built} but torch {running} is installed: {rebuild}")


def _missing_build(error):
    """The error for a flexops without its compiled parts. A Python started in the checkout imports
    the source folder flexops/, which shadows the installed package and holds neither the
    extension nor the model zoo: say so in one line instead of a circular-import message."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(os.path.join(package_dir, os.pardir, "setup.py")):
        return ImportError(f"flexops was imported from its source folder {package_dir}, which has no compiled "
                           "extension: start Python outside the checkout (e.g. `cd ..`) to use the installed flexops")
    return ImportError(f"flexops is installed without its compiled extension ({error}): reinstall it with "
                       "`pip install .` from the flexops checkout")


try:
    from flexops._build_info import TORCH_VERSION as _BUILT_WITH
except ImportError as error:
    raise _missing_build(error) from None

_check_torch_version(_BUILT_WITH, torch.__version__)

try:
    from flexops import _C  # noqa: F401  (loading the library registers the flexops ops)
except ImportError as error:
    raise _missing_build(error) from None

from flexops import backends, flops, ops  # noqa: E402
from flexops.accelerate import accelerate  # noqa: E402  (torch only: torchvision is looked up when a network holds it)
from flexops import nn  # noqa: E402
from flexops.nn import *  # noqa: E402,F403  (the layers: flexops.nn.__all__)

__version__ = "0.1.0"
__all__ = [*nn.__all__, "accelerate", "backends", "flops", "ops"]
