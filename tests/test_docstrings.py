"""Every public class and function has a docstring that help() shows; the layers, the ops and the zoo's
networks and entry points say their arguments and give an example."""

import inspect

import pytest

import flexops
import flexops.models as zoo
from flexops.models.registry import _constructors

MODULES = [flexops, flexops.ops, flexops.backends, flexops.flops, zoo, zoo.data, zoo.train, zoo.cresmd, zoo.tasnet,
           zoo.irnas, zoo.tunable, zoo.swinir, zoo.flexir]
try:  # the onnx extra
    import flexops.onnx
    MODULES.append(flexops.onnx)
except ImportError:
    pass


def public(module):
    names = getattr(module, "__all__", [n for n in dir(module) if not n.startswith("_")])
    for name in names:
        obj = getattr(module, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith("flexops"):
            yield f"{module.__name__}.{name}", obj


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_public_name_has_a_docstring(module):
    missing = [name for name, obj in public(module) if not (inspect.getdoc(obj) or "").strip()]
    assert not missing


FULL = [getattr(flexops, name) for name in flexops.__all__ if inspect.isclass(getattr(flexops, name))]
FULL += [getattr(flexops.ops, name) for name in ("tunable_conv2d", "deform_conv2d", "masked_conv2d", "window_attention")]
FULL += [flexops.active_windows, zoo.tasnet.search, zoo.cresmd.train, zoo.train.train]
FULL += list(_constructors.values())


@pytest.mark.parametrize("obj", FULL, ids=lambda o: o.__qualname__)
def test_main_entry_points_document_arguments_and_an_example(obj):
    doc = inspect.getdoc(obj)
    assert "Args" in doc or "Args:" in doc
    assert ">>>" in doc or "Example" in doc or "example" in doc or "python -m" in doc
