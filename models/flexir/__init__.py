"""FlexIR: SwinIR with per-block exits, a pointer and adaptive per-region early exit.

The specification (architecture, Algorithms 1 and 2, the sharpness score, the counting convention,
the readings chosen where the paper is silent) is the zoo's flexir.md.

    net = FlexIR.from_swinir(swinir)            # every exit branch starts as SwinIR's tail
    y = net(x, pointer=3)                       # head, B-RSTB 1..3, exit 3
    y, exits = net.adaptive(x, threshold=1.1)   # Algorithm 2 on a 2 x 2 region grid
    params, macs = cost(net, (1, 3, 128, 128), pointer=3)

    python -m flexops.models.flexir train --teacher 005_colorDN_DFWB_s128w8_SwinIR-M_noise25.pth --checkpoint flexir.pt
"""

from flexops.models.flexir.cost import adaptive_macs, cost
from flexops.models.flexir.distill import ChannelScoring, Distillation, charbonnier, pointer_schedule, train
from flexops.models.flexir.inference import adaptive, sharpness, split_regions, union_regions
from flexops.models.flexir.network import ExitBranch, FlexIR

__all__ = ["ChannelScoring", "Distillation", "ExitBranch", "FlexIR", "adaptive", "adaptive_macs", "charbonnier", "cost",
           "pointer_schedule", "sharpness", "split_regions", "train", "union_regions"]
