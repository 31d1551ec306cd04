"""flexops where users already are: torch.fx tracing of every op and layer, errors that code written
for torchvision catches, torch.export, torch.compile and an AOTInductor package."""

import pathlib
import sys

import pytest
import torch
import torch.fx
from torch import nn

import flexops
from flexops.ops import deform_conv2d, masked_conv2d, tunable_conv2d, window_attention

# Every op in one network: the one deploy/export.py packages for C++ (deploy/ is a folder of scripts).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "deploy"))
from export import TinyRestorer, example_inputs  # noqa: E402


# One call of each op on valid arguments, as (op, args).
def op_calls():
    x = torch.randn(2, 4, 8, 8)
    return {
        "deform_conv2d": (deform_conv2d, (x, torch.randn(2, 18, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6),
                                          1, 1, 1, torch.rand(2, 9, 8, 8))),
        "masked_conv2d": (masked_conv2d, (x, torch.randn(6, 4, 3, 3), torch.randn(6),
                                          torch.tensor([1, 0, 1, 1]), torch.tensor([[1, 1, 0, 1, 0, 1]] * 2), 1, 1)),
        "tunable_conv2d": (tunable_conv2d, (x, torch.randn(2, 6, 4, 3, 3), torch.randn(2, 6), torch.rand(2, 2),
                                            1, 1)),
        "window_attention": (window_attention, (torch.randn(2, 8, 8, 24), 2, 4, 2, torch.randn(2, 16, 16), None,
                                                torch.rand(2, 2, 2) > 0.3, -100.0)),
    }


class CallOp(nn.Module):
    """Calls one op on its arguments; the tensors are forward's inputs, the rest constants."""

    def __init__(self, op, args):
        super().__init__()
        self.op, self.args = op, args

    def forward(self, t0, t1, t2, t3=None, t4=None):  # named: torch.fx cannot trace *args
        tensors = iter((t0, t1, t2, t3, t4))
        return self.op(*(next(tensors) if isinstance(a, torch.Tensor) else a for a in self.args))


@pytest.mark.parametrize("name", sorted(op_calls()))
def test_fx_trace_op(name):
    op, args = op_calls()[name]
    module = CallOp(op, args)
    graph = torch.fx.symbolic_trace(module)
    calls = [n for n in graph.graph.nodes if n.op == "call_function"]
    assert [n.target.__name__ for n in calls] == [name]  # one node: the op, not its insides
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    torch.testing.assert_close(graph(*tensors), module(*tensors), rtol=0, atol=0)


def layers():
    """(layer, inputs) for every flexops layer."""
    x = torch.randn(2, 4, 8, 8)
    dcn = flexops.ModulatedDeformConv2d(4, 6, 3, padding=1, offset_groups=2, mask_activation="sigmoid")
    nn.init.normal_(dcn.conv_offset.weight, std=0.1)
    return {
        "TunableConv2d": (flexops.TunableConv2d(4, 6, 3, num_params=2, padding=1), (x, torch.rand(2, 2))),
        "TunableLinear": (flexops.TunableLinear(8, 5, num_params=3), (torch.randn(2, 7, 8), torch.rand(2, 3))),
        "TunableLinear-shared": (flexops.TunableLinear(8, 5, num_params=3, mode="linear"),
                                 (torch.randn(7, 8), torch.rand(3))),
        "TunableParameter": (flexops.TunableParameter((4, 5), num_params=2, init=nn.init.normal_),
                             (torch.rand(2),)),
        "DeformConv2d": (flexops.DeformConv2d(4, 6, 3, padding=1, groups=2),
                         (x, torch.randn(2, 18, 8, 8), torch.rand(2, 9, 8, 8))),
        "ModulatedDeformConv2d": (dcn, (x,)),
        "MaskedConv2d": (flexops.MaskedConv2d(4, 6, 3, padding=1),
                         (x, torch.tensor([1, 1, 0, 1]), torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1]]))),
        "WindowAttention": (flexops.WindowAttention(8, window_size=4, num_heads=2),
                            (torch.randn(2, 8, 8, 8), 2, torch.rand(2, 2, 2) > 0.3)),
        "TinyRestorer": (TinyRestorer(), tuple(example_inputs())),
    }


@pytest.mark.parametrize("name", sorted(layers()))
def test_fx_trace_layer(name):
    layer, inputs = layers()[name]
    traced = torch.fx.symbolic_trace(layer, concrete_args={"shift_size": 2} if name == "WindowAttention" else None)
    torch.testing.assert_close(traced(*inputs), layer(*inputs), rtol=0, atol=0)


def test_fx_trace_window_attention_with_its_defaults():
    """Its optional arguments become graph inputs (proxies), so nothing may branch on them."""
    layer = flexops.WindowAttention(12, 4, 2)
    traced = torch.fx.symbolic_trace(layer)
    x, active = torch.randn(2, 8, 8, 12), torch.rand(2, 2, 2) > 0.3
    torch.testing.assert_close(traced(x), layer(x), rtol=0, atol=0)
    torch.testing.assert_close(traced(x, 2, active), layer(x, 2, active), rtol=0, atol=0)


class Holder(nn.Module):
    """Holds one layer and calls it on its first `arity` inputs."""

    def __init__(self, layer, arity):
        super().__init__()
        self.layer, self.arity = layer, arity

    def forward(self, a, b=None, c=None):  # named: torch.fx cannot trace *args
        return self.layer(*(a, b, c)[: self.arity])


@pytest.mark.parametrize("name", sorted(set(layers()) - {"TinyRestorer"}))
def test_fx_trace_layer_inside_a_module_is_one_leaf(name):
    """As torch.nn's own layers are: one call_module node, which runs the layer itself."""
    layer, inputs = layers()[name]
    holder = Holder(layer, len(inputs))
    traced = torch.fx.symbolic_trace(holder)
    calls = [(n.op, n.target) for n in traced.graph.nodes if n.op not in ("placeholder", "output")]
    assert calls == [("call_module", "layer")]
    torch.testing.assert_close(traced(*inputs), holder(*inputs), rtol=0, atol=0)


# One bad argument per op, with the message it must give.
BAD_CALLS = {
    "deform_conv2d": ({1: torch.randn(2, 18, 7, 8)}, r"offset must be \[B, 2\*og\*kh\*kw, Ho, Wo\] = \[2, 18, 8, 8\]"),
    "masked_conv2d": ({3: torch.ones(5)}, r"in_mask must be \[4\] or \[M, 4\]"),
    "tunable_conv2d": ({3: torch.rand(3, 2)}, r"alpha must be \[p\] = \[2\] or \[B, p\] = \[2, 2\]"),
    "window_attention": ({4: torch.randn(2, 15, 16)}, r"rel_pos_bias must be \[num_heads, N, N\] = \[2, 16, 16\]"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
@pytest.mark.parametrize("caught", [ValueError, RuntimeError])
def test_argument_errors_are_value_and_runtime_errors(name, caught):
    op, args = op_calls()[name]
    change, message = BAD_CALLS[name]
    args = [change.get(i, a) for i, a in enumerate(args)]
    with pytest.raises(caught, match=message) as error:
        op(*args)
    assert type(error.value) is flexops.ops.ArgumentError


def test_non_tensor_argument_is_also_a_type_error():
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list") as error:
        deform_conv2d([1.0], torch.randn(1, 2, 1, 1), torch.randn(1, 1, 1, 1))
    assert isinstance(error.value, RuntimeError) and isinstance(error.value, ValueError)


def test_export_and_compile():
    model, inputs = TinyRestorer().eval(), tuple(example_inputs())
    with torch.no_grad():
        expected = model(*inputs)
        program = torch.export.export(model, inputs)
        targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        assert {f"flexops.{op}.default" for op in op_calls()} <= targets
        torch.testing.assert_close(program.module()(*inputs), expected)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(*inputs), expected)


def test_aoti_package(tmp_path):
    """The package that C++ loads (deploy/) runs in Python with the eager output."""
    model, inputs = TinyRestorer().eval(), tuple(example_inputs())
    with torch.no_grad():
        expected = model(*inputs)
        program = torch.export.export(model, inputs)
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "all_ops.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    torch.testing.assert_close(loaded(*inputs), expected, rtol=1e-5, atol=1e-5)
