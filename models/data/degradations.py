"""The three degradations of CResMD's data (section 1 of ``docs/zoo/tasnet.md``), applied in this
order: Gaussian blur, Gaussian noise, JPEG; ``degrade`` applies a whole ``Level``. They take an
image ``[C, H, W]`` or a batch ``[B, C, H, W]`` in ``[0, 1]``."""

from __future__ import annotations

import operator
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from flexops.models import checks
from flexops.models.data.levels import Level

KERNEL_SIZE = 21


def gaussian_kernel(radius: float, size: int = KERNEL_SIZE, dtype=torch.float64) -> torch.Tensor:
    """1-D normalised Gaussian of standard deviation ``radius`` sampled at ``-(size//2)..size//2``.

    The 2-D blur kernel is its outer product with itself (a sampled 2-D Gaussian normalised to sum
    1, as Matlab's ``fspecial('gaussian', 21, r)``). Returns a ``[size]`` tensor summing to 1.
    """
    if radius <= 0:
        raise ValueError(f"radius must be > 0 for a Gaussian kernel, got {radius!r}")
    x = torch.arange(size, dtype=torch.float64) - (size // 2)
    k = torch.exp(-(x * x) / (2.0 * float(radius) ** 2))
    return (k / k.sum()).to(dtype)


def _strength(value, name: str) -> float:
    """A degradation's strength as a float >= 0 (0 leaves the image as it is)."""
    value = float(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def gaussian_blur(image: torch.Tensor, radius: float) -> torch.Tensor:
    """Blur with a 21x21 Gaussian kernel of standard deviation ``radius`` (pixels).

    Args:
        image: ``[3, H, W]`` or ``[B, 3, H, W]`` float tensor.
        radius: kernel std, >= 0; 0 returns ``image`` itself (no blur).

    Returns:
        Tensor of the same shape, dtype and device; not clamped or quantised.

    Borders are padded by **replicating** the edge pixels. This is what CResMD's data scripts do
    (Matlab ``imfilter(img, fspecial('gaussian', 21, r), 'replicate')``), so our blurred images
    match theirs up to floating point; replicate padding also works for images smaller than the
    kernel (reflect padding needs more than 10 pixels per side) and, like any edge-extending
    padding, leaves a constant image constant (up to float rounding). The 2-D Gaussian is
    separable, so it is applied as a 21-tap column pass and a 21-tap row pass (shift-and-add,
    faster on CPU than a depthwise convolution for patches); this equals filtering with the 21x21
    outer-product kernel.
    """
    checks.image(image)
    radius = _strength(radius, "radius")
    if radius == 0:
        return image
    x = image if image.dim() == 4 else image.unsqueeze(0)
    h, w = x.shape[-2:]
    taps = gaussian_kernel(radius).tolist()
    pad = KERNEL_SIZE // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    cols = x[..., 0:h, :] * taps[0]
    for j in range(1, KERNEL_SIZE):
        cols.add_(x[..., j : j + h, :], alpha=taps[j])
    out = cols[..., 0:w] * taps[0]
    for j in range(1, KERNEL_SIZE):
        out.add_(cols[..., j : j + w], alpha=taps[j])
    return out if image.dim() == 4 else out.squeeze(0)


def _quantise(image: torch.Tensor) -> torch.Tensor:
    # What Matlab's im2uint8 (and writing an 8-bit PNG) does: clip to [0, 1], round to k / 255.
    return torch.round(image.clamp(0.0, 1.0) * 255.0) / 255.0


def add_noise(image: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """Add white Gaussian noise of standard deviation ``sigma / 255``, then clip and quantise.

    Args:
        image: ``[3, H, W]`` or ``[B, 3, H, W]`` float tensor in ``[0, 1]``.
        sigma: noise std on the 0-255 scale, >= 0; 0 returns ``image`` itself.
        generator: source of the noise (``None`` = torch's global generator). The noise is drawn
            on the generator's device and moved to the image's.

    Returns:
        Tensor of the same shape, clipped to ``[0, 1]`` and rounded to multiples of 1/255.

    Reading: CResMD adds the noise in floating point and stores the result as an 8-bit image
    (``im2uint8`` / PNG), so its noisy inputs are clipped and quantised; we do the same here so the
    on-the-fly inputs have the statistics of CResMD's saved LQ images.
    """
    checks.image(image)
    sigma = _strength(sigma, "sigma")
    if sigma == 0:
        return image
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype, device=device)
    return _quantise(image + noise.to(image.device) * (sigma / 255.0))


def jpeg(image: torch.Tensor, quality: int | None) -> torch.Tensor:
    """JPEG-compress and decompress at ``quality`` (libjpeg via ``torchvision.io``).

    Args:
        image: ``[3, H, W]`` or ``[B, 3, H, W]`` float tensor in ``[0, 1]``.
        quality: int in 1..100 (the spec uses 10..100), or ``None`` to return ``image`` itself.

    Returns:
        Tensor of the same shape, dtype and device, values multiples of 1/255 in ``[0, 1]``. The
        input is clipped and rounded to 8 bits before encoding.
    """
    checks.image(image)
    if quality is None:
        return image
    try:
        q = operator.index(quality)
    except TypeError:
        raise ValueError(f"quality must be an int or None, got {quality!r}") from None
    if not 1 <= q <= 100:
        raise ValueError(f"quality must lie in [1, 100], got {quality!r}")
    import torchvision.io as tvio  # an optional dependency (flexops[zoo]): imported when used

    batch = image if image.dim() == 4 else image.unsqueeze(0)
    as_uint8 = torch.round(batch.detach().clamp(0.0, 1.0) * 255.0).to(torch.uint8).cpu()
    with warnings.catch_warnings():
        # torchvision >= 0.29 marks its image codecs deprecated (in favour of TorchCodec); they
        # still work, and the warning would fire once per patch.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        out = [tvio.decode_jpeg(tvio.encode_jpeg(img.contiguous(), quality=q)) for img in as_uint8]
    result = torch.stack(out).to(device=image.device, dtype=image.dtype) / 255.0
    return result if image.dim() == 4 else result.squeeze(0)


def degrade(image: torch.Tensor, level: Level | Sequence, generator: torch.Generator | None) -> torch.Tensor:
    """Apply blur, then noise, then JPEG (spec section 1), i.e.
    ``jpeg(add_noise(gaussian_blur(image, r), sigma, generator), q)``.

    Args:
        image: ``[3, H, W]`` or ``[B, 3, H, W]`` float tensor in ``[0, 1]``.
        level: ``Level(radius, sigma, quality)``; the zero level returns ``image`` unchanged.
        generator: source of the noise.

    Returns:
        Degraded tensor of the same shape. A blur-only result is not quantised (CResMD stores it
        as 8 bits; the difference is below 0.5/255).
    """
    radius, sigma, quality = Level(*level)
    return jpeg(add_noise(gaussian_blur(image, radius), sigma, generator), quality)

