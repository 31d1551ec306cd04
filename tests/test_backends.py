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


def test_use_holds_for_its_own_thread_only():
    """Two threads in interleaved `use` blocks each run their own backend: a call on CPU tensors
    runs in the thread that forced "reference" and is refused in the one that forced "cuda"."""
    import threading

    import flexops

    x, weight, alpha = torch.randn(1, 2, 4, 4), torch.randn(2, 3, 2, 3, 3), torch.rand(2)
    both_inside, both_called = threading.Barrier(2, timeout=60), threading.Barrier(2, timeout=60)
    seen = {}

    def run(name):
        with backends.use(name):
            both_inside.wait()  # the other thread's block is open too
            try:
                flexops.ops.tunable_conv2d(x, weight, None, alpha, padding=1)
                seen[name] = ("ran", backends.forced())
            except backends.BackendUnavailable as error:
                seen[name] = (str(error), backends.forced())
            both_called.wait()
        seen[name + " after"] = backends.forced()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("reference", "cuda")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen["reference"] == ("ran", "reference")
    assert "forced backend 'cuda' cannot run" in seen["cuda"][0] and seen["cuda"][1] == "cuda"
    assert seen["reference after"] is None and seen["cuda after"] is None
    assert backends.forced() is None  # the main thread never saw either


def test_use_in_one_thread_leaves_the_default_of_others(monkeypatch):
    import threading

    monkeypatch.setenv("FLEXOPS_BACKEND", "reference")
    other = []
    with backends.use("cpu"):
        thread = threading.Thread(target=lambda: other.append(backends.forced()))
        thread.start()
        thread.join()
        assert backends.forced() == "cpu"
    assert other == ["reference"]  # the environment's default, not the main thread's block


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
    assert "dtype" in backends.why_not("cpu", cpu, torch.complex64)
    with pytest.raises(backends.BackendUnavailable, match="no backend runs"):
        backends.choose("tunable_conv2d", cpu, torch.complex64)


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
