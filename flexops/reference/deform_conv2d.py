"""Modulated deformable convolution (DCNv2) in pure PyTorch: the executable specification.

Semantics are exactly torchvision.ops.deform_conv2d's. Every other backend is tested against this
function; it is vectorised (one gather per bilinear corner) and differentiable by autograd in all
of input, offset, weight, bias and mask.
"""
import torch


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                  mask=None):
    """out[b, o] = sum over (c, i, j) of weight[o, c, i, j] * mask * bilinear(input[b, c], y, x) + bias[o].

    input [B, Cin, H, W]; weight [Cout, Cin/groups, kh, kw]; offset [B, og*kh*kw*2, Ho, Wo] as
    (dy, dx) pairs per offset group and kernel point k = i*kw + j; mask [B, og*kh*kw, Ho, Wo] or
    None (DCNv1). Input channel c uses offset group c // (Cin/og). The kernel point (i, j) of
    output pixel (oy, ox) samples y = oy*stride_h - pad_h + i*dil_h + dy (x likewise).
    """
    batch, in_channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    groups = in_channels // group_channels
    kernel_points = kh * kw
    offset_groups = offset.shape[1] // (2 * kernel_points)
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = stride, padding, dilation
    out_h = (height + 2 * pad_h - (dil_h * (kh - 1) + 1)) // stride_h + 1
    out_w = (width + 2 * pad_w - (dil_w * (kw - 1) + 1)) // stride_w + 1

    # Sampling coordinates of every (offset group, kernel point, output pixel): [B, og, kh, kw, Ho, Wo].
    arange = dict(dtype=input.dtype, device=input.device)
    base_y = (torch.arange(kh, **arange) * dil_h)[:, None] + torch.arange(out_h, **arange) * stride_h - pad_h
    base_x = (torch.arange(kw, **arange) * dil_w)[:, None] + torch.arange(out_w, **arange) * stride_w - pad_w
    offset = offset.reshape(batch, offset_groups, kh, kw, 2, out_h, out_w)
    y = base_y[:, None, :, None] + offset[:, :, :, :, 0]
    x = base_x[None, :, None, :] + offset[:, :, :, :, 1]
    # A NaN coordinate samples NaN, as in torchvision (its corner weights are NaN), unless the other
    # coordinate puts the point outside: torchvision tests each coordinate's range first.
    y, x = (torch.where(y.isnan() & ((x <= -1) | (x >= width)), -2, y),
            torch.where(x.isnan() & ((y <= -1) | (y >= height)), -2, x))
    # Points this far out sample only zeros; clamping keeps floor().long() from overflowing.
    samples = kernel_points * out_h * out_w
    # (A NaN passes by where, not clamp, whose gradient at NaN is 0.)
    y = torch.where(y.isnan(), y, y.clamp(-2, height)).reshape(batch, offset_groups, 1, samples)
    x = torch.where(x.isnan(), x, x.clamp(-2, width)).reshape(batch, offset_groups, 1, samples)

    # Bilinear sampling with zeros outside: a corner contributes only when it lies in the image.
    # (This alone gives torchvision's "only if -1 < y < H and -1 < x < W": outside that range every
    # corner is outside or has weight 0. Testing only the corners also reproduces torchvision's
    # offset gradient at y == -1 exactly, which zero offsets with padding hit on the border.)
    y0, x0 = y.detach().floor(), x.detach().floor()
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    channels = input.reshape(batch, offset_groups, in_channels // offset_groups, height * width)
    columns = 0
    for cy, cx, corner_weight in ((y0, x0, hy * hx), (y0, x0 + 1, hy * lx),
                                  (y0 + 1, x0, ly * hx), (y0 + 1, x0 + 1, ly * lx)):
        inside = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)  # False at a NaN coordinate
        index = torch.where(inside, cy * width + cx, 0).long()
        values = torch.gather(channels, 3, index.expand(-1, -1, channels.shape[2], -1))
        # torchvision's arithmetic, which decides non-finite results: a corner outside contributes
        # weight * 0 (not the clamped pixel times 0, which is NaN for an infinite pixel) and the
        # mask multiplies the blended value (an infinite mask times a zero weight would be NaN).
        columns = columns + torch.where(inside, values, 0) * corner_weight
    if mask is not None:
        columns = columns * mask.reshape(batch, offset_groups, 1, samples)

    # The convolution itself: per group, weight [Cout/g, Cin/g * kh*kw] @ columns [Cin/g * kh*kw, Ho*Wo].
    columns = columns.reshape(batch, groups, group_channels, kernel_points, out_h * out_w)
    weight = weight.reshape(groups, out_channels // groups, group_channels, kernel_points)
    out = torch.einsum("gock,bgckl->bgol", weight, columns).reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out
