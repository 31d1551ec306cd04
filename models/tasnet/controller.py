"""TASNet's controller (the zoo's tasnet.md, 3.1): per feature map, the head that turns a task vector into
channel importances. The search form trains it; the deploy form reads its task masks from it."""

import torch
from torch import nn

from flexops.nn.dense import Linear


class Controller(nn.Module):
    """One head per feature map: h_n(t) = Linear(D, hidden) -> ReLU -> Linear(hidden, C) (eq. 4).

    The last bias starts at +1 so every gate starts on: the search starts from the whole CResMD
    and prunes (the zoo's reading; the paper gives no architecture or init for the heads).
    """

    def __init__(self, cond_dim, num_maps, channels, hidden=64):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(Linear(cond_dim, hidden), nn.ReLU(), Linear(hidden, channels)) for _ in range(num_maps)
        )
        for head in self.heads:
            nn.init.constant_(head[2].bias, 1.0)

    def forward(self, tasks, first=0):
        """z^s [M, num_maps - first, C] for tasks [M, D]: the heads of maps first+1 .. num_maps."""
        heads = self.heads[first:]
        if len(heads) == 0:
            return tasks.new_empty(tasks.shape[0], 0, self.heads[0][2].out_features)
        return torch.stack([head(tasks) for head in heads], 1)
