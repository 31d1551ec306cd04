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
