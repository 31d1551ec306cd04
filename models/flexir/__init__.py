"""FlexIR: SwinIR with per-block exits, a pointer and adaptive per-region early exit.

The specification (architecture, Algorithms 1 and 2, the sharpness score, the counting convention,
the readings chosen where the paper is silent) is the zoo's flexir.md.

    net = FlexIR.from_swinir(swinir)            # every exit branch starts as SwinIR's tail
    y = net(x, pointer=3)                       # head, B-RSTB 1..3, exit 3
    y, exits = net.adaptive(x, threshold=1.1)   # Algorithm 2 on a 2 x 2 region grid
    params, macs = cost(net, (1, 3, 128, 128), pointer=3)
"""

from flexops.models.flexir.network import ExitBranch, FlexIR

__all__ = ["ExitBranch", "FlexIR"]
