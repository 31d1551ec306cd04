"""IR-NAS's loss (the zoo's irnas.md, section 6): eq. 7, MSE + lambda * log10(1 / SSIM), lambda = 0.5.

SSIM as in HiNAS' code: an 11x11 Gaussian window (sigma 1.5) per channel, zero-padded 'same'
filtering, C1 = 0.01^2, C2 = 0.03^2 (images in [0, 1]), averaged over the whole map.
"""

import functools
import math

import torch
import torch.nn.functional as F

WINDOW, SIGMA, C1, C2 = 11, 1.5, 0.01 ** 2, 0.03 ** 2
LAMBDA = 0.5


@functools.cache
def _window(dtype, device):
    x = torch.arange(WINDOW, dtype=torch.float64) - WINDOW // 2
    g = torch.exp(-x * x / (2 * SIGMA ** 2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def _check_pair(x, y):
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"output and target must be [B, C, H, W] of the same shape, got {list(x.shape)} and "
                         f"{list(y.shape)}")


def ssim(x, y):
    """Mean SSIM of two image batches [B, C, H, W] with values in [0, 1] (a 0-dim tensor).

    Example: `ssim(denoised, clean)` (1 for identical images)."""
    _check_pair(x, y)
    channels = x.shape[1]
    window = _window(x.dtype, x.device).expand(channels, 1, WINDOW, WINDOW)

    def blur(t):
        return F.conv2d(t, window, padding=WINDOW // 2, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + C1) * (2 * cov + C2)
    denominator = (mu_x ** 2 + mu_y ** 2 + C1) * (var_x + var_y + C2)
    return (numerator / denominator).mean()


def log_ssim_loss(output, target):
    """Eq. 8: log10(1 / SSIM(output, target)) = -log10(ssim(output, target)); 0 when they are equal."""
    return -torch.log10(ssim(output, target))


def irnas_loss(output, target, weight=LAMBDA):
    """Eq. 7: mean squared error + weight * log_ssim_loss (weight = lambda = 0.5). HiNAS' code
    halves this sum (same minimiser); we follow the paper's equation."""
    return F.mse_loss(output, target) + weight * log_ssim_loss(output, target)


def psnr(output, target):
    """Peak signal-to-noise ratio in dB of images in [0, 1] (over the whole batch)."""
    _check_pair(output, target)
    return 10 * math.log10(1 / max(F.mse_loss(output, target).item(), 1e-12))
