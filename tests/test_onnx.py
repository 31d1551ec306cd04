"""ONNX export (flexops.onnx): each op in several configurations and the zoo networks (tiny), exported
once with dynamic sizes, saved, and run in ONNX Runtime (CPU) at two input sizes against eager PyTorch.

Exports take seconds each (more per node), so all the ops' cases share one exported file and all the
zoo's networks another, each used at both sizes (module-scoped fixtures). The ops' tensor arguments
are computed from the image inside the graph: its batch, height and width are the only sizes, and
all are dynamic.
"""

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx (pip install flexops[onnx])")
pytest.importorskip("onnxscript", reason="ONNX export tests need onnxscript (pip install flexops[onnx])")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install flexops[onnx])")

import flexops  # noqa: E402
import flexops.onnx  # noqa: E402
from flexops.ops import deform_conv2d, masked_conv2d, tunable_conv2d, window_attention  # noqa: E402

TOLERANCE = 1e-4  # max error relative to the output's largest magnitude


def _param(*shape, scale=1.0):
    return nn.Parameter(scale * torch.randn(*shape))


class TunableCases(nn.Module):
    """tunable_conv2d with alpha shared ([p], a graph input) and per sample ([B, p], from the image)."""

    def __init__(self):
        super().__init__()
        self.w_shared, self.b_shared = _param(2, 6, 4, 3, 3), _param(2, 6)
        self.w_grouped, self.b_grouped = _param(3, 6, 2, 3, 3), _param(3, 6)
        self.w_dilated = _param(2, 5, 4, 1, 3)
        self.w_depthwise = _param(3, 4, 1, 3, 3)

    def forward(self, x, alpha):
        per_sample = torch.softmax(x.mean((2, 3))[:, :3], -1)  # [B, 3]
        return (
            tunable_conv2d(x, self.w_shared, self.b_shared, alpha, padding=1),
            tunable_conv2d(x, self.w_grouped, self.b_grouped, per_sample, stride=2, padding=1, groups=2),
            tunable_conv2d(x, self.w_dilated, None, per_sample[:, :2], padding=(0, 2), dilation=2),
            tunable_conv2d(x, self.w_depthwise, None, alpha.repeat(2)[:3], stride=(1, 2), padding=1, groups=4),
        )


class MaskedCases(nn.Module):
    """masked_conv2d with one mask row, with M task rows broadcasting a batch-1 map, and without masks."""

    def __init__(self):
        super().__init__()
        self.weight, self.bias = _param(6, 4, 3, 3), _param(6)
        self.register_buffer("in_mask", torch.tensor([1, 0, 1, 1], dtype=torch.bool))
        self.register_buffer("out_mask", torch.tensor([1, 1, 0, 1, 0, 1]))
        self.register_buffer("task_in", torch.rand(3, 4) > 0.3)
        self.register_buffer("task_out", torch.rand(3, 6) > 0.4)

    def forward(self, x):
        infinite = x.index_fill(1, torch.tensor([1]), float("inf"))  # channel 1 is off in in_mask
        return (
            masked_conv2d(infinite, self.weight, self.bias, self.in_mask, self.out_mask, padding=1),
            masked_conv2d(x[:1], self.weight, self.bias, self.task_in, self.task_out, stride=2, padding=1),
            masked_conv2d(x[:1], self.weight, None, self.in_mask[None], self.task_out, dilation=2, padding=2),
            masked_conv2d(x, self.weight, None),
        )


class DeformCases(nn.Module):
    """deform_conv2d with mask (DCNv2) and without (DCNv1), groups, offset groups, stride, dilation;
    offsets large enough to sample outside the image."""

    def __init__(self):
        super().__init__()
        #  (out channels, kernel, stride, padding, dilation, groups, offset groups, mask, bias)
        self.configs = [(6, (3, 3), 1, 1, 1, 1, 1, True, True), (6, (3, 3), 2, 1, 1, 2, 2, True, False),
                        (4, (3, 1), (1, 2), (1, 0), (2, 1), 1, 4, False, True), (8, (2, 3), 1, (0, 2), 2, 4, 2, True, True)]
        self.weights, self.biases, self.offsets, self.masks = (nn.ParameterList(), nn.ParameterList(), nn.ModuleList(),
                                                               nn.ModuleList())
        for out, kernel, stride, padding, dilation, groups, offset_groups, mask, _ in self.configs:
            points = kernel[0] * kernel[1]
            self.weights.append(_param(out, 4 // groups, *kernel))
            self.biases.append(_param(out))
            self.offsets.append(nn.Conv2d(4, 2 * offset_groups * points, kernel, stride, padding, dilation))
            self.masks.append(nn.Conv2d(4, offset_groups * points, kernel, stride, padding, dilation))

    def forward(self, x):
        outputs = []
        for i, (_, _, stride, padding, dilation, _, _, mask, bias) in enumerate(self.configs):
            outputs.append(deform_conv2d(x, 3 * self.offsets[i](x), self.weights[i], self.biases[i] if bias else None,
                                         stride, padding, dilation, torch.sigmoid(self.masks[i](x)) if mask else None))
        return tuple(outputs)


class WindowCases(nn.Module):
    """window_attention with and without shift, the exact shift mask and SwinIR's -100, a shared and a
    per-image bias, a given scale, and inactive windows."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 24)  # C = 8
        self.bias_4, self.bias_8 = _param(2, 16, 16, scale=0.5), _param(1, 64, 64, scale=0.5)

    def forward(self, x):
        qkv = self.qkv(x.permute(0, 2, 3, 1))
        per_image = self.bias_4 * x.mean((1, 2, 3))[:, None, None, None]  # [B, 2, 16, 16]
        active = F.avg_pool2d(x[:, :1], 4)[:, 0] > 0  # some windows off
        return (
            window_attention(qkv, 2, 4, 0, self.bias_4),
            window_attention(qkv, 2, 4, 2, per_image, active=active),
            window_attention(qkv, 4, 8, 4, None, scale=0.3, mask_value=-100.0),
            window_attention(qkv, 1, 8, 3, self.bias_8, active=F.avg_pool2d(x[:, :1], 8)[:, 0] > 0),
        )


class Ops(nn.Module):
    """Every op's cases: one export for all of them."""

    def __init__(self):
        super().__init__()
        self.tunable, self.masked, self.deform, self.window = TunableCases(), MaskedCases(), DeformCases(), WindowCases()

    def forward(self, x, alpha):
        return {"tunable_conv2d": self.tunable(x, alpha), "masked_conv2d": self.masked(x),
                "deform_conv2d": self.deform(x), "window_attention": self.window(x)}


TINY_SWINIR = dict(img_size=8, embed_dim=8, num_heads=[2], window_size=4, mlp_ratio=2.0, drop_path_rate=0.0)


class Zoo(nn.Module):
    """The zoo's networks, tiny: SwinIR with every upsampler (the denoiser with a shifted block),
    FlexIR at pointer 1, TASNet's deploy form at M tasks, a tunable ResNet at a shared omega and
    per-image omegas, the IR-NAS derived network (its DCNs with offsets that move), CResMD."""

    def __init__(self):
        super().__init__()
        from flexops.models.cresmd import CResMD
        from flexops.models.flexir import FlexIR
        from flexops.models.irnas import IRNASNet
        from flexops.models.swinir import SwinIR
        from flexops.models.tasnet import TASNetDeploy
        from flexops.models.tunable import TunableEDSR

        self.swinirs = nn.ModuleList([
            SwinIR(upscale=1, upsampler="", depths=[2], **TINY_SWINIR),
            SwinIR(upscale=2, upsampler="pixelshuffle", num_feat=8, depths=[1], **TINY_SWINIR),
            SwinIR(upscale=3, upsampler="pixelshuffledirect", depths=[1], **TINY_SWINIR),
            SwinIR(upscale=4, upsampler="nearest+conv", num_feat=8, depths=[1], **TINY_SWINIR),
        ])
        self.flexir = FlexIR(upscale=1, upsampler="", **{**TINY_SWINIR, "depths": [2, 2], "num_heads": [2, 2]})
        self.tasnet = TASNetDeploy.from_widths(CResMD(nf=4, nb=1), 2, 3, 2)
        self.tunable = TunableEDSR(n_resblocks=1, n_feats=4)
        self.irnas = IRNASNet([("def", 0), ("skip", 1), ("sep", 2), ("skip", 0)], path=[1], width=2, nodes=2)
        for module in self.irnas.modules():
            if isinstance(module, flexops.ModulatedDeformConv2d):
                nn.init.normal_(module.conv_offset.weight, std=0.1)
        self.cresmd = CResMD(nf=4, nb=1)

    def forward(self, x, omega, omegas, cond, tasks):
        return {"swinir": tuple(net(x) for net in self.swinirs), "flexir": self.flexir(x, pointer=1),
                "tasnet_deploy": self.tasnet(x[:1], tasks), "tunable": (self.tunable(x, omega), self.tunable(x, omegas)),
                "irnas": self.irnas(x[:, :1]), "cresmd": self.cresmd(x, cond)}


class Exported:
    """A model exported once by flexops.onnx.export (default dynamic shapes) to an ONNX file, and its
    outputs in ONNX Runtime (CPU) and in eager PyTorch at each input size, each computed once.
    The model returns {name: tensor or tuple}; ONNX gives the same tensors flattened, in order."""

    def __init__(self, model, make_inputs, sizes, path):
        self.model, self.make_inputs = model.eval(), make_inputs
        inputs = make_inputs(*sizes[0])
        self.names = [f"input{i}" for i in range(len(inputs))]
        flexops.onnx.export(model, inputs, input_names=self.names).save(str(path))
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.path, self._outputs = path, {}

    def outputs(self, size):
        """(ONNX, eager) outputs at size (batch, height, width), each {name: tuple of tensors}."""
        if size not in self._outputs:
            torch.manual_seed(1)
            inputs = self.make_inputs(*size)
            with torch.no_grad():
                eager = {name: out if isinstance(out, tuple) else (out,) for name, out in self.model(*inputs).items()}
            flat, spec = pytree.tree_flatten(eager)
            found = self.session.run(None, {name: t.numpy() for name, t in zip(self.names, inputs)})
            assert len(found) == len(flat)
            self._outputs[size] = pytree.tree_unflatten([torch.from_numpy(t) for t in found], spec), eager
        return self._outputs[size]


def assert_close(actual, expected, what):
    assert actual.shape == expected.shape, f"{what}: ONNX gave {tuple(actual.shape)}, PyTorch {tuple(expected.shape)}"
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= TOLERANCE * expected.abs().max().item(), f"{what}: max error {error:.3g}"


def check(exported, name, size):
    found, expected = exported.outputs(size)
    for i, (actual, wanted) in enumerate(zip(found[name], expected[name])):
        assert_close(actual, wanted, f"{name} output {i}")


def ids(size):
    return "x".join(map(str, size))


OP_SIZES = [(2, 16, 24), (3, 24, 8)]  # (batch, height, width): multiples of the windows (4 and 8)
ZOO_SIZES = [(2, 16, 20), (1, 14, 10)]  # even (CResMD, TASNet); the second no multiple of SwinIR's window


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    torch.manual_seed(0)
    return Exported(Ops(), lambda b, h, w: (torch.randn(b, 4, h, w), torch.tensor([0.3, 0.7])), OP_SIZES,
                    tmp_path_factory.mktemp("onnx") / "ops.onnx")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    torch.manual_seed(0)

    def inputs(batch, height, width):  # x, omega, omegas, cond, tasks (M = batch + 2)
        return (torch.rand(batch, 3, height, width), torch.tensor([0.3, 0.7]), torch.rand(batch, 2),
                torch.rand(batch, 3), torch.rand(batch + 2, 3))

    return Exported(Zoo(), inputs, ZOO_SIZES, tmp_path_factory.mktemp("onnx") / "zoo.onnx")


@pytest.mark.parametrize("size", OP_SIZES, ids=ids)
@pytest.mark.parametrize("name", ["tunable_conv2d", "masked_conv2d", "deform_conv2d", "window_attention"])
def test_op(ops, name, size):
    check(ops, name, size)


def test_deform_conv2d_is_onnx_deformconv(ops):
    types = [node.op_type for node in onnx.load(str(ops.path)).graph.node]
    assert types.count("DeformConv") == len(DeformCases().configs)


@pytest.mark.parametrize("size", ZOO_SIZES, ids=ids)
@pytest.mark.parametrize("name", ["swinir", "flexir", "tasnet_deploy", "tunable", "irnas", "cresmd"])
def test_zoo(zoo, name, size):
    check(zoo, name, size)


def test_export_takes_args_as_a_tuple():
    with pytest.raises(flexops.ops.ArgumentError, match="args must be a tuple"):
        flexops.onnx.export(nn.Identity(), torch.rand(1))
