"""IR-NAS's derived network (the zoo's irnas.md, section 5).

stem1 (3x3 conv 64 + BN + ReLU) -> h1, stem2 (3x3 conv 64 + BN on ReLU(h1)) -> h0; layer l at width
C_l = W * 2**path[l]: s0 = ReLU -> 1x1 conv -> BN of h_{l-1}, s1 = the same of h_{l-2}, h_l =
FixedCell(s0, s1) (nodes * C_l channels); head: ASPP(128, rates 2/4/6, no pooling branch) on ReLU(h_L),
3x3 conv to the image channels, sigmoid (v1: no residual).
"""

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import checks
from flexops.models.irnas.ops import OPS, check_op_name
from flexops.models.irnas.viterbi import check_path
from flexops.models.registry import register
from flexops.nn.dense import Conv2d

# An illustrative genotype (the zoo's irnas.md, section 5): the searched one of the paper (its Fig. 6)
# is published only as a picture. Per node: two (op, input) pairs; input 0 = h_{l-2}, 1 = h_{l-1},
# 2 + j = node j.
ILLUSTRATIVE_GENOTYPE = (("conv", 1), ("dil", 0), ("def", 2), ("skip", 1), ("conv", 3), ("dil", 2),
                         ("def", 0), ("conv", 4), ("skip", 3), ("dil", 5))
ILLUSTRATIVE_PATH = (0, 1, 2, 2)

STEM_CHANNELS = 64
ASPP_CHANNELS = 128
ASPP_RATES = (2, 4, 6)


def check_genotype(genotype, nodes):
    """Raises a ValueError unless `genotype` is 2 * nodes (op name, input index) pairs with node i's
    inputs in 0 .. i + 1; returns it as a list of (str, int) tuples."""
    genotype = [tuple(pair) for pair in genotype]
    if len(genotype) != 2 * nodes:
        raise ValueError(f"genotype must hold 2 (op, input) pairs per node: {2 * nodes} for {nodes} nodes, "
                         f"got {len(genotype)}")
    for k, pair in enumerate(genotype):
        if len(pair) != 2:
            raise ValueError(f"genotype[{k}] must be an (op name, input index) pair, got {pair!r}")
        name, index = pair
        check_op_name(name, f"genotype[{k}]'s op")
        if not isinstance(index, int) or not 0 <= index < 2 + k // 2:
            raise ValueError(f"genotype[{k}] belongs to node {k // 2}, whose inputs are 0 .. {k // 2 + 1}; "
                             f"got input {index!r}")
    return genotype


class FixedCell(nn.Module):
    """The compact cell: node i = op_{2i}(state[in_{2i}]) + op_{2i+1}(state[in_{2i+1}]), states being
    [s1 (h_{l-2}), s0 (h_{l-1}), node 0, ...]; output the nodes concatenated, [B, nodes * C, H, W]."""

    def __init__(self, genotype, channels):
        super().__init__()
        self.indices = [index for _, index in genotype]
        self.ops = nn.ModuleList(OPS[name](channels, True) for name, _ in genotype)

    def forward(self, s0, s1):
        states = [s1, s0]
        for node in range(len(self.ops) // 2):
            states.append(sum(self.ops[k](states[self.indices[k]]) for k in (2 * node, 2 * node + 1)))
        return torch.cat(states[2:], dim=1)


def _conv_bn(inp, out, kernel_size=1, relu_after=False):
    layers = [Conv2d(inp, out, kernel_size, padding=kernel_size // 2, bias=False), nn.BatchNorm2d(out)]
    return nn.Sequential(*layers, nn.ReLU()) if relu_after else nn.Sequential(*layers)


class Scaler(nn.Module):
    """ReLU -> 1x1 conv -> BN: a hidden state brought to the width of the next cell."""

    def __init__(self, inp, out):
        super().__init__()
        self.conv = _conv_bn(inp, out)

    def forward(self, x):
        return self.conv(F.relu(x))


class ASPP(nn.Module):
    """DeepLab's atrous spatial pyramid pooling without the pooling branch, with separable atrous
    convs: per rate r, depthwise 3x3 dilation r + BN + ReLU + 1x1 conv + BN + ReLU; plus a 1x1 conv +
    BN + ReLU branch; the branches concatenated -> 1x1 conv + BN + ReLU. [B, inp, H, W] -> [B, out, H, W]."""

    def __init__(self, inp, out=ASPP_CHANNELS, rates=ASPP_RATES):
        super().__init__()
        self.atrous = nn.ModuleList(
            nn.Sequential(Conv2d(inp, inp, 3, padding=r, dilation=r, groups=inp, bias=False), nn.BatchNorm2d(inp),
                          nn.ReLU(), *_conv_bn(inp, out, relu_after=True))
            for r in rates
        )
        self.conv1 = _conv_bn(inp, out, relu_after=True)
        self.project = _conv_bn(out * (len(rates) + 1), out, relu_after=True)

    def forward(self, x):
        return self.project(torch.cat([branch(x) for branch in self.atrous] + [self.conv1(x)], dim=1))


@register("irnas")
class IRNASNet(nn.Module):
    """The network IR-NAS derives from a search: one compact cell per layer at its decoded width.

    Args:
        genotype: 2 * nodes (op name, input index) pairs (`SuperNet.genotype()[0]`); default the
            illustrative genotype `ILLUSTRATIVE_GENOTYPE`.
        path: width index per layer (0 = W, 1 = 2W, 2 = 4W), moving at most one level per layer
            from 0 (`SuperNet.genotype()[1]`); default `ILLUSTRATIVE_PATH` = (0, 1, 2, 2).
        width: W (10, the search width); nodes: N (5 for denoising); in_chans: 1 (gray) or 3.

    forward(x [B, in_chans, H, W]) -> [B, in_chans, H, W] in (0, 1).

    Parameters: stems 64 * (9 in_chans + 2) + 64 * 64 * 9 + 128, per layer the cell's ops (affine BN)
    and two 1x1 scalers (inp * C_l + 2 C_l each), the ASPP and the 3x3 output conv (128 * 9 * in_chans
    + in_chans). The illustrative genotype at W = 10, path (0, 1, 2, 2) has 612,397 (0.612 M). The
    paper's 0.63 M (Table 1) is that of its searched genotype, which is not published (Fig. 6 is a
    picture): it cannot be rebuilt here.

    Example::

        net = IRNASNet(*SuperNet().genotype())
        denoised = net(torch.rand(1, 1, 321, 481))
    """

    def __init__(self, genotype=ILLUSTRATIVE_GENOTYPE, path=ILLUSTRATIVE_PATH, width=10, nodes=5, in_chans=1):
        super().__init__()
        for name, value in (("width", width), ("nodes", nodes), ("in_chans", in_chans)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.genotype = check_genotype(genotype, nodes)
        self.path = check_path(path)
        self.width, self.nodes, self.in_chans = width, nodes, in_chans
        self.stem1 = _conv_bn(in_chans, STEM_CHANNELS, 3, relu_after=True)
        self.stem2 = _conv_bn(STEM_CHANNELS, STEM_CHANNELS, 3)
        channels = [STEM_CHANNELS, STEM_CHANNELS]  # of h_{l-2}, h_{l-1}
        self.cells, self.scalers = nn.ModuleList(), nn.ModuleList()
        for level in self.path:
            width_l = width * 2 ** level
            self.scalers.append(nn.ModuleList([Scaler(channels[1], width_l), Scaler(channels[0], width_l)]))
            self.cells.append(FixedCell(self.genotype, width_l))
            channels = [channels[1], nodes * width_l]
        self.aspp = ASPP(channels[1])
        self.out = Conv2d(ASPP_CHANNELS, in_chans, 3, padding=1)

    def forward(self, x):
        checks.image_batch(x, self.in_chans)
        h1 = self.stem1(x)
        h0 = self.stem2(F.relu(h1))
        for (scale0, scale1), cell in zip(self.scalers, self.cells):
            h1, h0 = h0, cell(scale0(h0), scale1(h1))
        return torch.sigmoid(self.out(self.aspp(F.relu(h0))))
