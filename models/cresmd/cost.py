"""What each convolution of CResMD's chain costs per pair of active channels: CResMD's MACs
(`CResMD.macs`, every channel active) and TASNet's, whose gates and masks switch channels off
(its eq. 9 and `TASNetDeploy.macs`).

Map n = the output of the n-th convolution: 1 conv_first, 2..2nb+1 the trunk convs, 2nb+2 upconv
(viewed after PixelShuffle: one gate covers its 4 source channels), 2nb+3 HRconv; conv_last (n =
2nb+4) writes the image, whose channels are never gated. Convolution n costs
K^2 * H_n * W_n * |active(n-1)| * |active(n)| multiply-accumulates; map 0 is the input image.
"""

import torch
import torch.nn.functional as F


def pair_costs(net, height, width):
    """[num_maps + 1] int64: K^2 H_n W_n of each convolution n = 1 .. num_maps + 1 (conv_last last).

    upconv runs at half size with 4 channels per gate: 4 half-size maps per pair of gates.
    """
    half, full = 9 * (height // 2) * (width // 2), 9 * height * width
    return torch.tensor([half] * (1 + 2 * net.nb) + [4 * half, full, full], dtype=torch.int64)


def chain_macs(costs, counts):
    """Sum over convolutions of cost_n * counts[..., n - 1] * counts[..., n]; counts [..., num_maps + 2]
    holds the active channels of maps 0 .. num_maps + 1 (image in and image out at the ends)."""
    return (costs * counts[..., :-1] * counts[..., 1:]).sum(-1)


def with_image_ends(counts, net):
    """counts of maps 1..num_maps [..., num_maps] -> [..., num_maps + 2] with the image channels at
    both ends (map 0 = input image, map num_maps + 1 = output image)."""
    return F.pad(counts, (1, 1), value=net.in_nc)
