"""The input tile of an implicit-GEMM convolution, shared by the tunable and the masked kernels."""

import triton
import triton.language as tl


@triton.jit
def input_tile(x_image, channel, k, k_ok, oy, ox, m_ok, H, W, sx_c, sx_h, sx_w,
               stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH: tl.constexpr, KW: tl.constexpr):
    """[BLOCK_M, BLOCK_K] of the image at x_image: for output pixels (oy, ox) (valid where m_ok) and
    reduction indices k (valid where k_ok), input channel `channel` of each k at its tap
    (k // KW % KH, k % KW); zero where the tap falls outside the image."""
    ky = (k // KW) % KH
    kx = k % KW
    iy = oy[:, None] * stride_h - pad_h + ky[None, :] * dil_h
    ix = ox[:, None] * stride_w - pad_w + kx[None, :] * dil_w
    inside = m_ok[:, None] & k_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    return tl.load(x_image + channel[None, :] * sx_c + iy * sx_h + ix * sx_w, mask=inside, other=0.0)
