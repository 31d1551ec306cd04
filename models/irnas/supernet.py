"""IR-NAS's search network (the zoo's irnas.md, sections 2-4).

- `MixedOp`: every candidate op on one edge, weighted by the softmax of that edge's alpha row (eq. 2).
- `SuperCell`: N nodes; node i sums mixed edges from h_{l-2} (input 0), h_{l-1} (input 1) and the
  nodes before it (input 2 + j); the cell outputs the concatenation of its nodes (eqs. 1, 3).
- `SuperNet`: stem, then a trellis of layers with cells of width W, 2W, 4W (layer 1: W and 2W), one
  cell per (layer, width) shared by all incoming paths (eq. 5), routers (1x1 conv + BN to the widths
  one level down, same, one level up) mixed by beta, and the end part: the last layer's outputs
  concatenated, a 3x3 conv and a sigmoid. alpha is shared by all cells (v1: one cell structure).
"""

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import checks
from flexops.models.irnas.ops import OP_NAMES, OPS
from flexops.models.irnas.viterbi import NUM_WIDTHS, beta_rows, trellis, viterbi
from flexops.models.registry import register
from flexops.nn.dense import Conv2d

_NONE = OP_NAMES.index("none")


def num_edges(nodes):
    """Mixed edges of a cell with `nodes` nodes: node i has 2 + i inputs (20 for N = 5)."""
    return sum(2 + i for i in range(nodes))


class MixedOp(nn.Module):
    """All of OP_NAMES on one edge: forward(x, weights[6]) = sum_k weights[k] * op_k(x).

    The "none" op adds 0 whatever its weight (and its weight gets no gradient), so it is not run.
    """

    def __init__(self, channels, affine=False):
        super().__init__()
        self.ops = nn.ModuleList(OPS[name](channels, affine) for name in OP_NAMES)

    def forward(self, x, weights):
        return sum(weights[k] * op(x) for k, op in enumerate(self.ops) if k != _NONE)


class SuperCell(nn.Module):
    """A supercell of `nodes` nodes at `channels` (C) channels per node.

    forward(s0, s1, weights): s0 the h_{l-1} input, s1 the h_{l-2} input, both [B, C, H, W];
    weights [num_edges(nodes), 6] the softmaxed alpha. Returns [B, nodes * C, H, W].
    """

    def __init__(self, channels, nodes, affine=False):
        super().__init__()
        self.nodes = nodes
        self.edges = nn.ModuleList(MixedOp(channels, affine) for _ in range(num_edges(nodes)))

    def forward(self, s0, s1, weights):
        states = [s1, s0]
        edge = 0
        for _ in range(self.nodes):
            states.append(sum(self.edges[edge + j](h, weights[edge + j]) for j, h in enumerate(states)))
            edge += len(states) - 1
        return torch.cat(states[2:], dim=1)


def cell_genotype(weights, nodes):
    """The compact cell of a supercell's op weights (softmaxed alpha, [num_edges(nodes), 6]).

    For each node keep the two inputs whose largest non-"none" weight is largest (ties: the lower
    input index), each with its largest non-"none" op (ties: the earlier op of OP_NAMES).

    Returns a list of 2 * nodes (op name, input index) pairs, node by node, input index 0 = h_{l-2},
    1 = h_{l-1}, 2 + j = node j. Example: `cell_genotype(torch.softmax(alpha, -1), 5)`.
    """
    weights = torch.as_tensor(weights).detach().cpu()
    if weights.shape != (num_edges(nodes), len(OP_NAMES)):
        raise ValueError(f"weights must be [{num_edges(nodes)}, {len(OP_NAMES)}] for {nodes} nodes, "
                         f"got {list(weights.shape)}")
    keep = [k for k in range(len(OP_NAMES)) if k != _NONE]
    genotype, start = [], 0
    for node in range(nodes):
        rows = weights[start:start + 2 + node, keep].tolist()
        best = sorted(range(2 + node), key=lambda j: -max(rows[j]))[:2]  # stable: lower index wins ties
        for j in best:
            genotype.append((OP_NAMES[keep[rows[j].index(max(rows[j]))]], j))
        start += 2 + node
    return genotype


def _conv_bn(inp, out, kernel_size):
    return nn.Sequential(Conv2d(inp, out, kernel_size, padding=kernel_size // 2, bias=False), nn.BatchNorm2d(out))


class Router(nn.Module):
    """1x1 conv + BN from a cell output (nodes * C_i channels) to the widths C_{i-1}, C_i, C_{i+1}
    of the next layer that exist (`moves`: subset of 0 = down, 1 = same, 2 = up)."""

    def __init__(self, inp, width, level, moves):
        super().__init__()
        self.branches = nn.ModuleDict({str(m): _conv_bn(inp, width * 2 ** (level + m - 1), 1) for m in moves})

    def forward(self, x):
        return {int(m): branch(x) for m, branch in self.branches.items()}


@register("irnas_supernet")
class SuperNet(nn.Module):
    """IR-NAS's supernet (v1: one cell structure shared by all layers, DCNv2 in the search space).

    Args:
        in_chans: image channels (1: grayscale denoising; 3: de-raining).
        layers: L, number of cell layers (denoising 4, de-raining 3).
        nodes: N, nodes per cell (denoising 5, de-raining 4).
        width: W, channels per node at the lowest width (10 in the paper); must be even ("def").

    forward(x [B, in_chans, H, W]) -> [B, in_chans, H, W] in (0, 1) (sigmoid, no residual).

    Parameters: `alpha` [num_edges(N), 6] op logits (softmax per edge, initialised uniform), `beta`
    [R, 3] transition logits per (layer, source width) (softmax over down/same/up with impossible
    moves masked; rows as `viterbi.beta_rows(L)`). `arch_parameters()` = [alpha, beta],
    `weight_parameters()` = the rest. Cell BNs are not affine (as in DARTS' search); stems, routers
    and upsamplers are. At the denoising configuration (1, 4, 5, 10): 6,471,435 weights.

    Example::

        net = SuperNet()                          # denoising configuration
        y = net(torch.rand(2, 1, 64, 64))
        cell, path = net.genotype()               # 10 (op, input) pairs, e.g. path [0, 1, 2, 2]
    """

    def __init__(self, in_chans=1, layers=4, nodes=5, width=10):
        super().__init__()
        for name, value in (("in_chans", in_chans), ("layers", layers), ("nodes", nodes), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if width % 2:
            raise ValueError(f"width must be even (the 'def' op has 2 offset groups), got {width}")
        self.in_chans, self.layers, self.nodes, self.width = in_chans, layers, nodes, width
        widths = [width * 2 ** i for i in range(NUM_WIDTHS)]
        self.stem1 = nn.Sequential(_conv_bn(in_chans, 64, 3), nn.ReLU())
        self.stem2 = _conv_bn(64, nodes * width, 3)
        self.reduce = _conv_bn(64, width, 3)
        self.upsamplers = nn.ModuleList(_conv_bn(widths[i], widths[i + 1], 1) for i in range(NUM_WIDTHS - 1))
        counts = trellis(layers)
        self.cells = nn.ModuleList(SuperCell(widths[i], nodes) for count in counts for i in range(count))
        self.routers = nn.ModuleList()
        mask = []
        for layer, source in beta_rows(layers):
            targets = counts[layer - 1]
            moves = [m for m in range(3) if 0 <= source + m - 1 < targets]
            self.routers.append(Router(nodes * widths[source], width, source, moves))
            mask.append([m not in moves for m in range(3)])
        self.head = Conv2d(nodes * sum(widths[:counts[-1]]), in_chans, 3, padding=1)
        self.alpha = nn.Parameter(torch.ones(num_edges(nodes), len(OP_NAMES)))
        self.beta = nn.Parameter(torch.ones(len(mask), 3))
        self.register_buffer("impossible", torch.tensor(mask))

    def arch_parameters(self):
        """[alpha, beta]: what the architecture optimiser updates."""
        return [self.alpha, self.beta]

    def weight_parameters(self):
        """Every parameter but alpha and beta: what the weight optimiser updates."""
        return [p for name, p in self.named_parameters() if name not in ("alpha", "beta")]

    def op_weights(self):
        """softmax(alpha) per edge: [num_edges(N), 6]."""
        return F.softmax(self.alpha, dim=-1)

    def transition_probabilities(self):
        """softmax over (down, same, up) of each beta row, impossible moves 0: [R, 3]."""
        return F.softmax(self.beta.masked_fill(self.impossible, float("-inf")), dim=-1)

    def genotype(self):
        """(cell genotype, width path): `cell_genotype(op_weights(), N)` and the Viterbi path of
        `transition_probabilities()`; they build the derived network `IRNASNet(cell, path, W, N)`."""
        with torch.no_grad():
            return cell_genotype(self.op_weights(), self.nodes), viterbi(self.transition_probabilities())

    def forward(self, x):
        checks.image_batch(x, self.in_chans)
        weights, betas = self.op_weights(), self.transition_probabilities()
        features = self.stem1(x)
        previous_inputs = [self.reduce(features)]  # the h_{l-2} input per width
        outputs = [self.stem2(F.relu(features))]  # the previous layer's cell outputs per width
        cell, row = 0, 0
        for count in trellis(self.layers):
            inputs = [0] * count
            for source, hidden in enumerate(outputs):
                for move, routed in self.routers[row](hidden).items():
                    inputs[source + move - 1] = inputs[source + move - 1] + betas[row, move] * routed
                row += 1
            while len(previous_inputs) < count:
                previous_inputs.append(self.upsamplers[len(previous_inputs) - 1](previous_inputs[-1]))
            outputs = []
            for i in range(count):
                outputs.append(self.cells[cell](inputs[i], previous_inputs[i], weights))
                cell += 1
            previous_inputs = inputs
        return torch.sigmoid(self.head(torch.cat(outputs, dim=1)))
