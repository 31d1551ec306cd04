"""TASNet's search form: the CResMD supernet with a gate on every feature map (the zoo's tasnet.md, 3.1-3.3).

Per map n and task t_m a controller head gives channel importances z^s_{m,n} = h_n(t_m) (eq. 4); the
task-agnostic importance z^a_n is their exponential moving average over training batches (eq. 5).
Gates are straight-through step functions (eq. 3). Map n is shared by all tasks (phi_n = 1) when the
batch's tasks agree with z^a on it and on every earlier map (eqs. 6-7); shared maps use g(z^a), the
others g(z^s_m). The search minimises l1 + lambda1 R1 + lambda2 R2 (eq. 8): R1 the FLOPs of running
the M tasks with the shared prefix once (eq. 9), R2 the tasks' disagreement on and right after the
shared prefix (eq. 10).
"""

import collections

import torch
from torch import nn

from flexops.models.cresmd import cost
from flexops.models.cresmd.network import CResMD
from flexops.models.registry import register
from flexops.models.tasnet.controller import Controller
from flexops.models.tasnet.deploy import TASNetDeploy


def gate(z):
    """Eq. 3: forward 1[z > 0] exactly, backward the gradient of sigmoid(z)."""
    soft = torch.sigmoid(z)
    return (z > 0).to(z.dtype) + soft - soft.detach()


SearchOutput = collections.namedtuple("SearchOutput", "image flops agreement shared")
SearchOutput.__doc__ = """TASNet's search-time forward: the restored batch, R1 normalised by running every
task on all of CResMD (1 = no saving), R2 as the mean disagreement per gate, and phi [num_maps]."""


@register("tasnet")
class TASNet(nn.Module):
    """TASNet(in_nc=3, out_nc=3, nf=64, nb=32, cond_dim=3, share=True, gamma=0.9, momentum=0.99, hidden=64).

    The search form: `forward(x, tasks)` -> SearchOutput(image, flops, agreement, shared) on a batch
    x [B, 3, H, W] with one task vector per image, tasks [B, cond_dim] (during search the batch is
    the M tasks of eqs. 5-10). `deploy()` freezes the searched architecture into a `TASNetDeploy`.

    Args:
        in_nc, out_nc, nf, nb, cond_dim: the CResMD supernet (`self.supernet`, official names).
        share: False gives TSNet (no forced sharing: phi = 0, every map task-specific).
        gamma: eq. 6's agreement threshold. momentum: the EMA factor mu of z^a and of the mean task
            vector t-bar that shared residual blocks scale with (tasnet.md 3.3).
        hidden: width of the controller heads.

    >>> model = TASNet(nf=64, nb=32)
    >>> out = model(degraded, tasks)              # [M, 3, H, W] and [M, 3]: one search step's forward
    >>> loss = F.l1_loss(out.image, target) + 0.05 * out.flops + 0.05 * out.agreement    # eq. 8
    >>> deploy = model.eval().deploy()            # after the search (see `search`)
    """

    def __init__(self, in_nc=3, out_nc=3, nf=64, nb=32, cond_dim=3, share=True, gamma=0.9, momentum=0.99, hidden=64):
        super().__init__()
        if not 0 <= gamma <= 1 or not 0 <= momentum < 1:
            raise ValueError(f"gamma must be in [0, 1] and momentum in [0, 1); got {gamma} and {momentum}")
        self.supernet = CResMD(in_nc, out_nc, nf, nb, cond_dim)
        self.num_maps = self.supernet.num_maps
        self.controller = Controller(cond_dim, self.num_maps, nf, hidden)
        self.share, self.gamma, self.momentum = share, gamma, momentum
        self.register_buffer("z_agnostic", torch.ones(self.num_maps, nf))
        self.register_buffer("task_mean", torch.zeros(cond_dim))
        self.register_buffer("shared", torch.zeros(self.num_maps, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def _moving_average(self, name, batch_value):
        """mu * stop_grad(previous) + (1 - mu) * batch_value, stored back (the first update takes the
        batch value); batch_value keeps its gradient through the returned tensor."""
        previous = getattr(self, name)
        value = batch_value if self.updates == 0 else self.momentum * previous + (1 - self.momentum) * batch_value
        previous.copy_(value.detach())
        return value

    def forward(self, x, tasks):
        tasks = self.supernet.check_input(x, tasks, name="x").expand(x.shape[0], -1)
        z_specific = self.controller(tasks)  # [M, N, C]
        g_specific = gate(z_specific)
        if self.training:
            z_agnostic = self._moving_average("z_agnostic", z_specific.mean(0))
            task_mean = self._moving_average("task_mean", tasks.mean(0))
            self.updates += 1
        else:
            z_agnostic, task_mean = self.z_agnostic, self.task_mean
        g_agnostic = gate(z_agnostic)  # [N, C]
        shared = self.agreement(g_specific, g_agnostic) if self.training else self.shared.clone()
        if self.training:
            self.shared.copy_(shared)
        phi = shared.to(x.dtype)
        gates = phi[:, None] * g_agnostic + (1 - phi[:, None]) * g_specific  # [M, N, C]
        image = self._run(x, tasks, task_mean, gates, phi)
        # R1 over its value for all of CResMD: a ratio, the same at every (even) image size, so the
        # costs of a 2x2 image serve (and the forward has no size-dependent Python for torch.fx).
        costs = cost.pair_costs(self.supernet, 2, 2)
        flops = flops_regularizer(costs, g_specific, g_agnostic, phi, self.supernet)
        full = flops_regularizer(costs, torch.ones_like(g_specific), torch.ones_like(g_agnostic),
                                 torch.zeros_like(phi), self.supernet)
        agreement = agreement_regularizer(g_specific, g_agnostic, phi) / g_specific.numel()
        return SearchOutput(image, flops / full, agreement, shared)

    def agreement(self, g_specific, g_agnostic):
        """phi [N] bool (eqs. 6-7): map n is shared iff eta_i = 1 for every i <= n, where eta_n = 1 when
        the batch's tasks keep, on average, more than gamma of the task-agnostic channels of map n."""
        if not self.share:
            return torch.zeros(self.num_maps, dtype=torch.bool, device=g_agnostic.device)
        with torch.no_grad():
            kept = (g_specific * g_agnostic).sum(-1).mean(0)
            eta = kept > self.gamma * g_agnostic.sum(-1)
            return eta.cumprod(0).bool()

    def _run(self, x, tasks, task_mean, gates, phi):
        net = self.supernet
        channels = net.nf

        def gated_conv(index, layer, input):
            # A convolution reading the residual stream (each block's conv1, upconv) sees the stream
            # through the previous map's gate, as the deploy form's in_mask does; the other inputs
            # come out of a gated map already.
            if index % 2 == 0 and index < net.num_maps:
                input = input * gates[:, index - 2, :, None, None]
            out = layer(input)
            if index > net.num_maps:  # conv_last: the image, never gated
                return out
            gate_n = gates[:, index - 1]
            if layer.out_channels != channels:  # upconv: one gate per shuffled channel covers 4 channels
                gate_n = gate_n.repeat_interleave(layer.out_channels // channels, dim=1)
            return out * gate_n[:, :, None, None]

        mean_scales = [block.local_scale(task_mean[None]) for block in net.recon_trunk]
        scales = []
        for b, block in enumerate(net.recon_trunk):
            phi_block = phi[2 * b + 2]  # map of the block's conv2 (index 2b + 3)
            scales.append(phi_block * mean_scales[b] + (1 - phi_block) * block.local_scale(tasks))
        return net.run(x, gated_conv, scales, net.global_scale(tasks))

    def deploy(self):
        """The searched architecture as a `TASNetDeploy`: the shared prefix and its masks g(z^a) frozen,
        per-task masks g(h_n(t)) of the other maps from the controller heads."""
        n_shared = int(self.shared.long().cumprod(0).sum())
        ta_masks = self.z_agnostic[:n_shared] > 0
        return TASNetDeploy(self.supernet, ta_masks, self.controller, self.task_mean)


def flops_regularizer(pair_costs, g_specific, g_agnostic, phi, net):
    """Eq. 9, R1 = 2 sum_n K^2 H_n W_n [phi_n |g^a_n| |g^a_{n-1}| + (1 - phi_n) sum_m |g^s_{m,n}| |g^s_{m,n-1}|].

    pair_costs [N + 1] (cost.pair_costs); g_specific [M, N, C]; g_agnostic [N, C]; phi [N]. Maps 0 and
    N + 1 are the image (in_nc channels, ungated); conv_last (n = N + 1) counts as shared iff map N is.
    The boundary into the task-specific part counts g^s_{m, n-1}, as the paper writes it.
    """
    agnostic = cost.with_image_ends(g_agnostic.sum(-1), net)  # [N + 2]
    specific = cost.with_image_ends(g_specific.sum(-1), net)  # [M, N + 2]
    phi = torch.cat([phi, phi[-1:]])  # [N + 1]
    costs = pair_costs.to(g_agnostic.dtype)
    shared = (costs * phi * agnostic[:-1] * agnostic[1:]).sum()
    specific_cost = (costs * (1 - phi) * specific[:, :-1] * specific[:, 1:]).sum()
    return 2 * (shared + specific_cost)


def agreement_regularizer(g_specific, g_agnostic, phi):
    """Eq. 10, R2 = sum_n phi_{n-1} sum_c sum_m |g^s_{m,n,c} - g^a_{n,c}| with phi_0 = 1."""
    phi_before = torch.cat([phi.new_ones(1), phi[:-1]])
    return (phi_before[:, None] * (g_specific - g_agnostic).abs()).sum()
