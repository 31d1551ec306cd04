"""TASNet's deploy form: M task vectors on one image, the shared part once (the zoo's tasnet.md, 3.4).

For an image x [1, 3, H, W] and tasks [M, D], maps 1..n* (the task-agnostic prefix) run once with
fixed channel masks; every later convolution is ONE `flexops.ops.masked_conv2d` call for all M tasks,
each task convolving only its own active channels (the first such call broadcasts the shared map).
Shared residual blocks scale with local_scale(t-bar), t-bar the mean training task vector;
the others and the output scale with each task's own vector.

Memory: 27 tasks at 4K as one batch would hold 57 GB per feature map. `forward` cuts the image into
tiles (with the halo the network's receptive field needs, so results equal the untiled run) and, when
even a small tile of all M tasks would not fit, runs the tasks in chunks; `max_memory` bounds it.
"""

import copy
import math

import torch
from torch import nn

from flexops.models import checks
from flexops.models.cresmd import cost
from flexops.models.cresmd.network import CResMD
from flexops.models.tasnet.controller import Controller
from flexops.ops import ArgumentError, masked_conv2d

DEFAULT_MAX_MEMORY = 4 << 30
MIN_TILE = 64  # below this the halo's recomputation costs more than chunking the tasks


class TASNetDeploy(nn.Module):
    """TASNetDeploy(supernet, ta_masks, controller, task_mean, ts_width=None, max_memory=4 GiB).

    Built by `TASNet.deploy()` from a search, or by `TASNetDeploy.from_widths(cresmd, ...)`.

    Args:
        supernet: the CResMD whose weights run (copied); the deploy form is made on its device.
        ta_masks: bool [n_shared, nf], the channels kept by maps 1..n_shared, shared by all tasks.
        controller: the per-map heads h_n (copied); maps after n_shared take their task masks from them.
        task_mean: [cond_dim], the t-bar that shared residual blocks scale with.
        ts_width: None: a task keeps the channels where h_n(t) > 0 (a searched model); an int: the
            ts_width channels of largest h_n(t) (explicit widths).
        max_memory: bytes the forward's feature maps may take (default 4 GiB); see `forward`.

    forward(x [1, 3, H, W], tasks [M, cond_dim]) -> [M, 3, H, W]: output m restores x at task m.

    >>> deploy = TASNetDeploy.from_widths(CResMD(), n_shared=42, ta_width=32, ts_width=18)
    >>> outputs = deploy(torch.rand(1, 3, 320, 480), data.CRESMD_27_TASKS)     # [27, 3, 320, 480]
    >>> deploy.macs(320, 480, data.CRESMD_27_TASKS)                           # what that call cost
    """

    def __init__(self, supernet, ta_masks, controller, task_mean, ts_width=None, max_memory=DEFAULT_MAX_MEMORY):
        super().__init__()
        if not isinstance(supernet, CResMD):
            raise TypeError(f"supernet must be a flexops.models.cresmd.CResMD; got {type(supernet).__name__}")
        nf, maps = supernet.nf, supernet.num_maps
        if ta_masks.dim() != 2 or ta_masks.shape[0] > maps or ta_masks.shape[1] != nf:
            raise ValueError(f"ta_masks must be [n_shared <= {maps}, {nf}]; got {list(ta_masks.shape)}")
        if ts_width is not None and not 0 <= ts_width <= nf:
            raise ValueError(f"ts_width must be in [0, {nf}]; got {ts_width}")
        device = supernet.conv_first.weight.device
        self.supernet = copy.deepcopy(supernet)
        self.controller = copy.deepcopy(controller).to(device)
        self.register_buffer("ta_masks", ta_masks.detach().to(device, torch.bool, copy=True))
        self.register_buffer("task_mean", task_mean.detach().to(device, copy=True).reshape(supernet.cond_dim))
        self.ts_width, self.max_memory = ts_width, max_memory

    @classmethod
    def from_widths(cls, cresmd, n_shared, ta_width, ts_width, seed=0, max_memory=DEFAULT_MAX_MEMORY):
        """A deploy form of explicit widths on `cresmd`'s weights (no search): maps 1..n_shared keep
        `ta_width` channels (random, the same for every task), every later map keeps `ts_width`
        channels chosen per task by randomly initialised heads (the top ts_width of h_n(t)), so
        different tasks use different channels. Shared blocks scale with local_scale(0.5, ...).

        `from_widths(cresmd, 0, nf, nf)` is CResMD itself, task by task; `from_widths(cresmd, 42,
        32, 18)` is the zoo's stand-in for the paper's searched net (4.08 % of CResMD's MACs per
        inference with 27 tasks at HD; the paper's Table 1: 4.02 %).
        """
        nf, maps = cresmd.nf, cresmd.num_maps
        if not 0 <= n_shared <= maps:
            raise ValueError(f"n_shared must be in [0, {maps}] (CResMD's gated maps); got {n_shared}")
        if not 0 <= ta_width <= nf:
            raise ValueError(f"ta_width must be in [0, {nf}]; got {ta_width}")
        generator = torch.Generator().manual_seed(seed)
        ta_masks = torch.zeros(n_shared, nf, dtype=torch.bool)
        for row in ta_masks:
            row[torch.randperm(nf, generator=generator)[:ta_width]] = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            controller = Controller(cresmd.cond_dim, maps, nf)
        task_mean = torch.full((cresmd.cond_dim,), 0.5)
        return cls(cresmd, ta_masks, controller, task_mean, ts_width=ts_width, max_memory=max_memory)

    @property
    def n_shared(self):
        return self.ta_masks.shape[0]

    def masks(self, tasks):
        """bool [M, num_maps, nf]: the channels each task keeps in each map (the shared prefix the same
        for all)."""
        tasks = self._check_tasks(tasks)
        z = self.controller(tasks, first=self.n_shared)
        if self.ts_width is None:
            specific = z > 0
        else:
            kept = torch.zeros_like(z).scatter(-1, z.topk(self.ts_width, -1).indices, 1.0)
            specific = kept > 0
        shared = self.ta_masks.expand(tasks.shape[0], -1, -1)
        return torch.cat([shared, specific], 1)

    def macs(self, height, width, tasks):
        """Multiply-accumulates of forward(x [1, 3, height, width], tasks) untiled, as fvcore counts
        them (flexops.flops.count gives the same): the convolutions (tasnet.md 3.4: the shared prefix
        once, every later convolution per task with its own active channels; bias not counted) plus
        the Linears (controller heads of the task-specific maps, residual and output scales)."""
        tasks = self._check_tasks(tasks)
        net, shared = self.supernet, self.n_shared
        counts = cost.with_image_ends(self.masks(tasks).sum(-1), net)  # [M, N + 2]
        costs = cost.pair_costs(net, height, width)
        # Convolutions 1..n* run once, the rest once per task (the first of them reads the shared map);
        # conv_last too when every map is shared: its input is then the same for all tasks.
        once = shared + (shared == net.num_maps)
        convs = int(cost.chain_macs(costs[:once], counts[0, : once + 1]))
        convs += int(cost.chain_macs(costs[once:], counts[:, once:]).sum())
        m, d, nf = tasks.shape[0], net.cond_dim, net.nf
        hidden = self.controller.heads[0][0].out_features
        heads = (net.num_maps - shared) * m * (d * hidden + hidden * nf)
        shared_blocks = sum(1 for b in range(net.nb) if 2 * b + 3 <= shared)
        scales = (shared_blocks + (net.nb - shared_blocks) * m) * d * nf + m * d * net.in_nc
        return convs + heads + scales

    def _check_tasks(self, tasks):
        return checks.tasks(tasks, self.supernet.cond_dim)

    def halo(self):
        """Pixels of context a tile needs on each side for outputs equal to the untiled run: the
        receptive-field radius (1 + 2 per half-size 3x3 convolution + 2 for the full-size ones),
        rounded up to keep tiles on the stride-2 grid."""
        radius = 1 + 2 * (2 * self.supernet.nb + 1) + 2 + 1
        return radius + radius % 2

    def plan(self, height, width, tasks, max_memory=None, tile=None, element_size=4):
        """(tile side or None for the whole image, tasks per chunk) for the memory bound.

        Peak memory is about bytes_per_task_pixel * tasks * pixels of the (tile + halo), the two
        full-size maps of nf channels alive at once in the tail.
        """
        max_memory = self.max_memory if max_memory is None else max_memory
        per_pixel = (2 * self.supernet.nf + 3) * element_size
        if tile is None and tasks * height * width * per_pixel <= max_memory:
            return None, tasks
        halo = self.halo()
        if tile is None:
            side = math.isqrt(max(0, max_memory // (tasks * per_pixel))) - 2 * halo
            tile = max(MIN_TILE, side)
        tile = max(2, tile - tile % 2)
        if tile >= max(height, width):
            tile = None
            span = height * width
        else:
            span = (min(tile, height) + 2 * halo) * (min(tile, width) + 2 * halo)
        chunk = max(1, min(tasks, max_memory // (span * per_pixel)))
        return tile, chunk

    def forward(self, x, tasks, max_memory=None, tile=None):
        """Restores x [1, 3, H, W] (even H, W) at each of tasks [M, cond_dim] -> [M, 3, H, W].

        max_memory: bytes for feature maps (default: the module's, 4 GiB). tile: force this tile side
        (even; the halo is added around it). Tiling and task chunks change the cost, not the result.
        """
        net = self.supernet
        tasks = self._check_tasks(tasks)
        net.check_input(x, tasks[:1])
        if x.shape[0] != 1:
            raise ArgumentError(f"x must be one image [1, {net.in_nc}, H, W] (its M outputs are the tasks); "
                                f"got batch {x.shape[0]}: call once per image")
        height, width = x.shape[2:]
        side, chunk = self.plan(height, width, tasks.shape[0], max_memory, tile, x.element_size())
        masks = self.masks(tasks)
        if side is None and chunk == tasks.shape[0]:
            return self._run(x, tasks, masks)
        out = x.new_empty(tasks.shape[0], net.in_nc, height, width)
        halo = self.halo()
        for top, left, box in _tiles(height, width, side, halo):
            crop = x[:, :, box[0]:box[1], box[2]:box[3]]
            for first in range(0, tasks.shape[0], chunk):
                part = slice(first, first + chunk)
                restored = self._run(crop, tasks[part], masks[part])
                out[part, :, top[0]:top[1], left[0]:left[1]] = restored[
                    :, :, top[0] - box[0]:top[1] - box[0], left[0] - box[2]:left[1] - box[2]]
        return out

    def _run(self, x, tasks, masks):
        net, shared = self.supernet, self.n_shared

        def mask(n):  # active channels of map n: [nf] shared, [M, nf] per task, None for the image
            if n == 0 or n > net.num_maps:
                return None
            return masks[0, n - 1] if n <= shared else masks[:, n - 1]

        def masked(index, layer, input):
            out_mask = mask(index)
            if out_mask is not None and layer.out_channels != net.nf:  # upconv: 4 channels per gate
                out_mask = out_mask.repeat_interleave(layer.out_channels // net.nf, dim=-1)
            return masked_conv2d(input, layer.weight, layer.bias, mask(index - 1), out_mask,
                                 layer.stride, layer.padding, layer.dilation)

        mean = self.task_mean[None]
        scales = [block.local_scale(mean if 2 * b + 3 <= shared else tasks) for b, block in enumerate(net.recon_trunk)]
        return net.run(x, masked, scales, net.global_scale(tasks))


def _tiles(height, width, side, halo):
    """(rows, cols, box) per tile: the output rows [r0, r1) and cols [c0, c1) it gives, and the input
    box (r0', r1', c0', c1') it reads, i.e. the tile grown by the halo and clipped to the image."""
    if side is None:
        yield (0, height), (0, width), (0, height, 0, width)
        return
    for r0 in range(0, height, side):
        for c0 in range(0, width, side):
            r1, c1 = min(r0 + side, height), min(c0 + side, width)
            yield (r0, r1), (c0, c1), (max(0, r0 - halo), min(height, r1 + halo), max(0, c0 - halo), min(width, c1 + halo))
