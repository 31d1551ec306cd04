"""Backend selection: defaults by device, forcing, and errors that say why."""

import pytest
import torch

from flexops import backends


def test_info_reports_the_build():
    info = backends.info()
    assert info["cpu_kernels"] is True
    assert info["cuda_kernels"] == bool(info["cuda_archs"])
    assert set(info) >= {"cuda_device", "triton_installed", "triton_interpret"}


def test_cpu_tensors_default_to_cpu_kernels():
    assert backends.choose("tunable_conv2d", torch.device("cpu"), torch.float32) == "cpu"


def test_use_forces_and_restores():
    with backends.use("reference"):
        assert backends.forced() == "reference"
        with backends.use("triton"):
            assert backends.forced() == "triton"
        assert backends.forced() == "reference"
    assert backends.forced() is None


def test_env_var_forces(monkeypatch):
    monkeypatch.setenv("FLEXOPS_BACKEND", "reference")
    assert backends.choose("tunable_conv2d", torch.device("cpu"), torch.float32) == "reference"
    monkeypatch.setenv("FLEXOPS_BACKEND", "fastest")
    with pytest.raises(ValueError, match="FLEXOPS_BACKEND must be one of"):
        backends.forced()


def test_unknown_name():
    with pytest.raises(ValueError, match="must be one of"):
        with backends.use("gpu"):
            pass


def test_reasons():
    cpu = torch.device("cpu")
    assert "runs CUDA tensors" in backends.why_not("cuda", cpu, torch.float32) or not backends.info()["cuda_kernels"]
    assert "dtype" in backends.why_not("cpu", cpu, torch.float16)
    with pytest.raises(backends.BackendUnavailable, match="no backend runs"):
        backends.choose("tunable_conv2d", cpu, torch.float16)


def test_torch_version_check():
    from flexops import _check_torch_version

    _check_torch_version("2.14.1+cu130", "2.14.1+cu130")
    with pytest.warns(UserWarning, match="built with torch 2.14.1\\+cpu and runs with torch 2.14.1\\+cu130"):
        _check_torch_version("2.14.1+cpu", "2.14.1+cu130")
    with pytest.raises(ImportError, match="built against torch 2.13.0 but torch 2.14.1 is installed: rebuild"):
        _check_torch_version("2.13.0", "2.14.1")


def test_import_with_another_torch_fails_with_how_to_rebuild():
    import subprocess
    import sys

    code = "import torch; torch.__version__ = '1.0.0'; import flexops"
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "but torch 1.0.0 is installed: rebuild flexops" in done.stderr
