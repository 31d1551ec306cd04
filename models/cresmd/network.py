"""CResMD: controllable residual network for multi-dimensional modulation (He et al., ECCV 2020).

The official architecture (hejingwenhejingwen/CResMD, `CResMDNet`), with its state_dict names so its
checkpoints load with strict=True. A stride-2 head, `nb` residual blocks whose residual branch is
scaled per channel by `local_scale(cond)`, a PixelShuffle(2) tail, and a global residual scaled by
`global_scale(cond)`; cond = 0 gives the identity (no restoration). Its full specification, with the
counts checked in tests, is section 2 of the zoo's tasnet.md.

>>> net = CResMD(nb=4)
>>> y = net(torch.rand(1, 3, 64, 64), torch.tensor([0.25, 0.3, 0.0]))   # deblur r=1, denoise sigma=15
"""

import torch
import torch.nn.functional as F
from torch import nn

from flexops.models import checks
from flexops.models.cresmd import cost
from flexops.models.registry import register
from flexops.nn.dense import Conv2d, Linear


def _official_init_(module, scale=0.1):
    """CResMD's initialisation: every Conv2d and Linear kaiming-normal (fan-in) times 0.1, bias 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, a=0, mode="fan_in")
            layer.weight.data.mul_(scale)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class ResidualBlockCRes(nn.Module):
    """x + conv2(ReLU(conv1(x))) * local_scale(cond), the scale per channel (no activation)."""

    def __init__(self, nf=64, cond_dim=3):
        super().__init__()
        self.conv1 = Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = Conv2d(nf, nf, 3, 1, 1)
        self.local_scale = Linear(cond_dim, nf)


def _add_scaled(base, out, scale):
    """base + out * scale. Without autograd, in out's own memory: `out` is always a convolution's fresh
    output here, and with many tasks every new map is a fresh block of hundreds of megabytes that
    costs a page fault per 4 KiB (ReLUs are in place for the same reason; conv backward does not
    need its output, so they are in place with autograd too)."""
    if torch.is_grad_enabled() or out.shape != torch.broadcast_shapes(base.shape, out.shape, scale.shape):
        return base + out * scale
    return out.mul_(scale).add_(base)


def plain_conv(index, conv, input):
    """The ungated convolution: CResMD's own step of `CResMD.run`."""
    return conv(input)


@register("cresmd")
class CResMD(nn.Module):
    """CResMD(in_nc=3, out_nc=3, nf=64, nb=32, cond_dim=3); forward(x, cond).

    Args:
        in_nc, out_nc: image channels in and out (equal: the network adds its input back).
        nf: feature channels. nb: residual blocks. cond_dim: task-vector length D (3: deblur,
            denoise, deJPEG levels in [0, 1]; 2 for the official 2-D model).

    forward(x, cond): x [B, in_nc, H, W] with even H and W (the official network cannot run odd
    sizes either: the stride-2 head and PixelShuffle(2) would not give the input size back); cond
    [B, cond_dim] or [cond_dim] (shared by the batch). Returns [B, out_nc, H, W].

    2,559,759 parameters at the defaults (2,557,708 with cond_dim=2).

    >>> net = CResMD()
    >>> net.load_state_dict(torch.load("3D_modulation.pth"))       # the official checkpoint, strict
    >>> y = net(torch.rand(1, 3, 320, 480), torch.tensor([0.25, 0.3, 0.0]))
    """

    def __init__(self, in_nc=3, out_nc=3, nf=64, nb=32, cond_dim=3):
        super().__init__()
        if in_nc != out_nc:
            raise ValueError(f"in_nc and out_nc must be equal (the output adds the input); got {in_nc} and {out_nc}")
        for name, value in (("in_nc", in_nc), ("nf", nf), ("nb", nb), ("cond_dim", cond_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        self.in_nc, self.nf, self.nb, self.cond_dim = in_nc, nf, nb, cond_dim
        self.global_scale = Linear(cond_dim, out_nc)
        self.conv_first = Conv2d(in_nc, nf, 3, 2, 1)
        self.recon_trunk = nn.Sequential(*[ResidualBlockCRes(nf, cond_dim) for _ in range(nb)])
        self.upconv = Conv2d(nf, nf * 4, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.HRconv = Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = Conv2d(nf, out_nc, 3, 1, 1)
        _official_init_(self)

    @property
    def num_maps(self):
        """Convolution outputs in chain order, conv_last excluded: conv_first, the 2*nb trunk convs,
        upconv (after the shuffle), HRconv. TASNet gates each of them."""
        return 2 * self.nb + 3

    def check_input(self, x, cond, name="x"):
        """Validates x [B, in_nc, H, W] (even H, W) and cond; returns cond as [B or 1, cond_dim]."""
        checks.image_batch(x, self.in_nc, name)
        checks.even_size(x, name, "CResMD halves and doubles them")
        return self.check_cond(cond, None if checks.traced(x) else x.shape[0])

    def check_cond(self, cond, batch, name="cond"):
        return checks.tasks(cond, self.cond_dim, batch, name)

    def forward(self, x, cond):
        cond = self.check_input(x, cond)
        scales = [block.local_scale(cond) for block in self.recon_trunk]
        return self.run(x, plain_conv, scales, self.global_scale(cond))

    def run(self, x, conv, block_scales, global_scale):
        """CResMD's dataflow with each convolution done by `conv(index, layer, input)`.

        `index` numbers the convolutions in chain order from 1 (conv_first) to num_maps + 1
        (conv_last); CResMD runs them plainly, TASNet gates or masks them. block_scales: per block,
        the [B, nf] residual scales; global_scale: [B, out_nc].
        """
        stream = conv(1, self.conv_first, x)
        index = 2
        for block, scale in zip(self.recon_trunk, block_scales):
            hidden = F.relu(conv(index, block.conv1, stream), inplace=True)
            stream = _add_scaled(stream, conv(index + 1, block.conv2, hidden), scale[:, :, None, None])
            index += 2
        out = F.relu(self.pixel_shuffle(conv(index, self.upconv, stream)), inplace=True)
        out = F.relu(conv(index + 1, self.HRconv, out), inplace=True)
        out = conv(index + 2, self.conv_last, out)
        return _add_scaled(x, out, global_scale[:, :, None, None])

    def macs(self, height, width):
        """Multiply-accumulates of one inference at height x width, as fvcore counts them: the
        convolutions (bias not counted) and the scale Linears ((nb * nf + out_nc) * cond_dim)."""
        widths = cost.with_image_ends(torch.full((self.num_maps,), self.nf), self)  # every channel active
        convs = int(cost.chain_macs(cost.pair_costs(self, height, width), widths))
        return convs + (self.nb * self.nf + self.in_nc) * self.cond_dim
