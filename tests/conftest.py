"""Test setup: Triton kernels run on CPU tensors through the interpreter, which must be switched on
before triton is first imported; and the installed flexops, not the source tree, is what is tested."""

import os
import pathlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import flexops  # noqa: E402

# The source folder flexops/ (not a virtual environment inside the checkout, as README's .venv is).
_source_folder = pathlib.Path(__file__).resolve().parents[1] / "flexops"
if pathlib.Path(flexops.__file__).resolve().parent == _source_folder:
    raise pytest.UsageError(
        f"flexops was imported from the source tree ({flexops.__file__}); install it with "
        "`pip install .` and run pytest from a directory that does not shadow it"
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
