"""CResMD (He et al., ECCV 2020): the network (`CResMD`, network.py), the cost of its convolution chain
(cost.py, which TASNet's eq. 9 counts with too) and its training (`train`, train.py).

    python -m flexops.models.cresmd train --data DIV2K_sub/ --steps 1000000 --checkpoint cresmd.pt
"""

from flexops.models.cresmd import cost
from flexops.models.cresmd.network import CResMD, ResidualBlockCRes
from flexops.models.cresmd.train import l1_loss, train

__all__ = ["CResMD", "ResidualBlockCRes", "cost", "l1_loss", "train"]
