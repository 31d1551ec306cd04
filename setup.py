"""Build flexops and its compiled extension flexops._C.

The C++ CPU kernels (csrc/cpu) are always built. The CUDA kernels (csrc/cuda) are built when torch
was built with CUDA, a CUDA toolkit is found and a GPU is present; FLEXOPS_CUDA=0/1 forces them off/on.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default here: 8.0;9.0, to bound build time).
"""

import glob
import os


def find_cuda_home():
    # torch guesses CUDA_HOME as the directory above the first `nvcc` on PATH; here that is
    # /usr/local/bin/nvcc, whose parent has no lib64 to link against. Prefer the standard toolkit
    # location when the user has not chosen one.
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


find_cuda_home()

from setuptools import find_packages, setup  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

DEFAULT_CUDA_ARCHS = "8.0;9.0"


def want_cuda():
    """CUDA kernels when FLEXOPS_CUDA=1 asks for them, or by default when this machine has a GPU
    to run them (compiling them takes most of the build: not for a CPU-only machine)."""
    import torch

    forced = os.environ.get("FLEXOPS_CUDA")
    buildable = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if forced == "1" and not buildable:
        raise RuntimeError(
            "FLEXOPS_CUDA=1 but CUDA kernels cannot be built: "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}"
        )
    if forced in ("0", "1"):
        return forced == "1"
    if forced is not None:
        raise RuntimeError(f"FLEXOPS_CUDA must be 0 or 1, got {forced!r}")
    return buildable and torch.cuda.is_available()


def cuda_include_dirs():
    # pip's CUDA 13 torch keeps some toolkit headers that its own headers include (cusparse.h, ...)
    # in the nvidia/cu* wheels beside it; a minimal toolkit may not have them.
    import torch

    site = os.path.dirname(os.path.dirname(torch.__file__))
    return sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))


def extension():
    sources = ["csrc/flexops.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = []
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    include_dirs = [os.path.abspath("csrc")]
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        print(f"flexops: building CUDA kernels for TORCH_CUDA_ARCH_LIST={archs}")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("FLEXOPS_CUDA_ARCHS", f'"{archs}"'))
        extra_compile_args["nvcc"] = ["-O3"]
        include_dirs += cuda_include_dirs()
        ext_class = cpp_extension.CUDAExtension
    else:
        print("flexops: building without CUDA kernels")
        ext_class = cpp_extension.CppExtension
    return ext_class(
        name="flexops._C",
        sources=sources,
        # A rebuild in the same build/ folder (README's second command) recompiles what changed; without
        # the headers here, setuptools would call a header-only change up to date.
        depends=sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/cuda/*.cuh")),
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )


def record_torch_version():
    """flexops/_build_info.py: the torch release the extension is compiled against, which
    flexops/__init__.py compares with the one it runs with (the extension links to torch's C++ ABI)."""
    import torch

    with open(os.path.join("flexops", "_build_info.py"), "w") as f:
        f.write(f'"""Written by setup.py at build time."""\n\nTORCH_VERSION = {torch.__version__!r}\n')


record_torch_version()

setup(
    packages=find_packages(include=["flexops", "flexops.*"])
    + ["flexops.models"] + [f"flexops.models.{p}" for p in find_packages("models")],
    package_dir={"flexops.models": "models"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
