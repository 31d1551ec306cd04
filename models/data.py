"""Training and test data for the controllable-restoration models (CResMD, TASNet).

This module implements section 1 of the zoo spec (``docs/zoo/tasnet.md``): the three degradations
(Gaussian blur, Gaussian noise, JPEG, applied in that order), the map between a degradation level
and the 3-D task vector ``t = (deblur, denoise, deJPEG)``, CResMD's level sampler, TASNet's relative
ground-truth pairs, and a ``Dataset`` of random training patches.

Images are float32 tensors of shape ``[3, H, W]`` (RGB) with values in ``[0, 1]``; the degradations
also take a batch ``[B, 3, H, W]``. Every random choice is drawn from an explicit
``torch.Generator`` so a result is a pure function of its seed.

Level and task vector (labels as in CResMD's file names, divided by ``(40, 50, 92)``)::

    t_blur  = r / 4            r in [0, 4], step 0.1      (std of a 21x21 Gaussian kernel)
    t_noise = sigma / 50       sigma in [0, 50], step 1   (0-255 scale)
    t_jpeg  = (102 - q) / 92   q in {100, 98, ..., 10};   no JPEG (q = None) -> 0

Example::

    import torch
    from flexops.models import data

    g = torch.Generator().manual_seed(0)
    clean = data.random_patch(data.sample_images()[0], 64, g)  # [3, 64, 64]
    level = data.sample_level_cresmd(g)  # Level(radius=0.0, sigma=31.0, quality=100)
    lq = data.degrade(clean, level, g)  # blur -> noise -> JPEG
    task = data.level_to_task(level)  # tensor([0.0000, 0.6200, 0.0217])

    pairs = data.RestorationPairs(data.sample_images(), patch_size=64, relative=True, seed=1)
    degraded, target, task = pairs[0]
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import pathlib
import warnings
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from flexops.ops import ArgumentError

__all__ = [
    "CRESMD_27_LEVELS",
    "CRESMD_27_TASKS",
    "IMAGE_EXTENSIONS",
    "KERNEL_SIZE",
    "Level",
    "NoisyPairs",
    "PatchPairs",
    "RestorationPairs",
    "add_noise",
    "degrade",
    "gaussian_blur",
    "gaussian_kernel",
    "jpeg",
    "level_to_task",
    "load_folder",
    "load_image",
    "noise_levels",
    "random_patch",
    "sample_images",
    "sample_level_cresmd",
    "sample_pair_relative",
    "save_image",
    "task_to_level",
]

# Ranges of the three degradations (spec section 1).
MAX_RADIUS = 4.0
MAX_SIGMA = 50.0
MIN_QUALITY = 10
MAX_QUALITY = 100
KERNEL_SIZE = 21
# Task vector = label / _LABEL_SCALE, labels being 10 r, sigma and 102 - q (0 without JPEG).
_LABEL_SCALE = (40, 50, 92)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class Level(NamedTuple):
    """A degradation level: blur std ``radius`` (pixels, 0..4; 0 = no blur), noise ``sigma``
    (0-255 scale, 0..50; 0 = no noise) and JPEG ``quality`` (int 10..100, or ``None`` = no JPEG)."""

    radius: float
    sigma: float
    quality: int | None


# --------------------------------------------------------------------------------------------- #
# Level <-> task vector
# --------------------------------------------------------------------------------------------- #


def _round_half_up(x: float) -> int:
    # Matlab's round (half away from zero) for the non-negative values used here; Python's round
    # and torch.round send halves to the even neighbour instead.
    return int(math.floor(x + 0.5))


def _labels(level: Level) -> tuple[float, float, float]:
    """CResMD's integer-valued labels (10 r, sigma, 102 - q or 0) of a validated level."""
    radius, sigma, quality = level
    if not 0.0 <= float(radius) <= MAX_RADIUS:
        raise ValueError(f"level.radius must lie in [0, {MAX_RADIUS}], got {radius!r}")
    if not 0.0 <= float(sigma) <= MAX_SIGMA:
        raise ValueError(f"level.sigma must lie in [0, {MAX_SIGMA}], got {sigma!r}")
    if quality is None:
        jpeg_label = 0.0
    else:
        try:
            q = operator.index(quality)
        except TypeError:
            raise ValueError(f"level.quality must be an int or None, got {quality!r}") from None
        if not MIN_QUALITY <= q <= MAX_QUALITY:
            raise ValueError(
                f"level.quality must lie in [{MIN_QUALITY}, {MAX_QUALITY}] or be None, got {quality!r}"
            )
        jpeg_label = float(102 - q)
    return 10.0 * float(radius), float(sigma), jpeg_label


def level_to_task(level: Level | Sequence) -> torch.Tensor:
    """Task vector of a degradation level.

    Args:
        level: ``Level(radius, sigma, quality)`` (any 3-sequence is accepted).

    Returns:
        float32 tensor ``[3]``: ``(radius / 4, sigma / 50, (102 - quality) / 92)``, the last entry
        being 0 when ``quality`` is None. Note q = 100 gives 2/92, not 0 (spec section 1).

    Raises:
        ValueError: if a component is outside its range (radius 0..4, sigma 0..50, quality 10..100).
    """
    labels = _labels(Level(*level))
    return torch.tensor([lab / s for lab, s in zip(labels, _LABEL_SCALE)], dtype=torch.float32)


def _as_task(task, name: str = "task") -> torch.Tensor:
    t = torch.as_tensor(task, dtype=torch.float64).detach().cpu()
    if t.shape != (3,):
        raise ValueError(f"{name} must have shape [3], got shape {list(t.shape)} ({task!r})")
    if not bool(torch.isfinite(t).all()) or bool((t < -1e-6).any()) or bool((t > 1 + 1e-6).any()):
        raise ValueError(f"{name} must lie in [0, 1] componentwise, got {t.tolist()}")
    return t.clamp(0.0, 1.0)


def task_to_level(task) -> Level:
    """Degradation level of a task vector (inverse of :func:`level_to_task`).

    Args:
        task: ``[3]`` tensor or sequence with entries in ``[0, 1]``.

    Returns:
        ``Level`` on the spec's grid: radius = 4 t0 rounded to a multiple of 0.1, sigma = 50 t1
        rounded to an integer, quality = None when t2 == 0, else 102 - 92 t2 rounded to the
        nearest even integer and clipped to [10, 100]. Halves round up.

    Raises:
        ValueError: if ``task`` is not of shape ``[3]`` or has an entry outside ``[0, 1]``.
    """
    t0, t1, t2 = _as_task(task).tolist()
    radius = _round_half_up(40.0 * t0) / 10.0
    sigma = float(_round_half_up(50.0 * t1))
    if t2 == 0.0:
        quality = None
    else:
        q = 2 * _round_half_up((102.0 - 92.0 * t2) / 2.0)
        quality = min(max(q, MIN_QUALITY), MAX_QUALITY)
    return Level(radius, sigma, quality)


# The 3 x 3 x 3 validation grid of CResMD (generate_3D_val.m), blur outermost, JPEG innermost.
CRESMD_27_LEVELS: list[Level] = [
    Level(r, s, q)
    for r, s, q in itertools.product((0.0, 1.0, 4.0), (0.0, 15.0, 50.0), (None, 80, 10))
]
CRESMD_27_TASKS: torch.Tensor = torch.stack([level_to_task(lv) for lv in CRESMD_27_LEVELS])


# --------------------------------------------------------------------------------------------- #
# Sampling levels
# --------------------------------------------------------------------------------------------- #


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (), generator=generator))


def _beta_half_one(generator: torch.Generator | None) -> float:
    # Beta(a, 1) has CDF x**a, so U**(1/a) with U uniform is an exact draw; a = 0.5 gives U**2.
    return _uniform(generator) ** 2


def _active_types(generator: torch.Generator | None) -> tuple[bool, bool, bool]:
    """CResMD's choice of degradation types: how many (1, 2 or 3) uniformly, then for one type
    which one uniformly, for two types which one is left out uniformly."""
    count = 1 + _randint(3, generator)
    if count == 3:
        return (True, True, True)
    which = _randint(3, generator)
    if count == 1:
        return tuple(d == which for d in range(3))
    return tuple(d != which for d in range(3))


# Largest label of each type on CResMD's grid: blur 0..40 (r = label / 10), noise 0..50, and the
# JPEG index 0..46 into [None, 100, 98, ..., 10] (label = 2 * index).
_MAX_GRID = (40, 50, 46)


def _grid_to_level(blur: int, noise: int, jpeg_index: int) -> Level:
    return Level(blur / 10.0, float(noise), None if jpeg_index == 0 else 102 - 2 * jpeg_index)


def sample_level_cresmd(generator: torch.Generator | None) -> Level:
    """Draw one absolute degradation level the way CResMD builds its training set
    (``generate_3groups.m``, spec section 1).

    The number of active types is uniform in {1, 2, 3} (which single type / which left-out type
    uniform). Each active type gets ``round(Beta(0.5, 1) * range)`` on its label grid: blur label
    0..40 (radius = label / 10), sigma 0..50, JPEG index 0..46 into ``[None, 100, 98, ..., 10]``.
    Inactive types are 0 / None. Beta(0.5, 1) favours light degradations.

    Args:
        generator: source of randomness (``None`` = torch's global generator).

    Returns:
        ``Level``.
    """
    active = _active_types(generator)
    grid = [_round_half_up(_beta_half_one(generator) * m) if a else 0 for a, m in zip(active, _MAX_GRID)]
    return _grid_to_level(*grid)


def sample_pair_relative(generator: torch.Generator | None) -> tuple[Level, Level]:
    """Draw an (input, target) level pair for TASNet's relative ground truth (spec eq. 11).

    Readings (spec section 1, [R]): the number of active types is chosen as in
    :func:`sample_level_cresmd`; the granularity is continuous or binary with probability 1/2
    each, for the whole pair. For every active type two grid levels are drawn independently,
    continuous: each with CResMD's ``round(Beta(0.5, 1) * range)``; binary: each 0 or the maximum
    (r = 4, sigma = 50, q = 10) with probability 1/2. The larger becomes the input level, the
    smaller the target level, so ``level_to_task(level_in) >= level_to_task(level_gt)`` in every
    component (equality, i.e. task component 0, is possible). Inactive types are 0 / None in both.

    The task vector of the pair is ``level_to_task(level_in) - level_to_task(level_gt)``.

    Args:
        generator: source of randomness (``None`` = torch's global generator).

    Returns:
        ``(level_in, level_gt)``.
    """
    active = _active_types(generator)
    binary = _uniform(generator) < 0.5
    grid_in, grid_gt = [], []
    for a, m in zip(active, _MAX_GRID):
        if not a:
            grid_in.append(0)
            grid_gt.append(0)
            continue
        if binary:
            x, y = (m * _randint(2, generator) for _ in range(2))
        else:
            x, y = (_round_half_up(_beta_half_one(generator) * m) for _ in range(2))
        grid_in.append(max(x, y))
        grid_gt.append(min(x, y))
    return _grid_to_level(*grid_in), _grid_to_level(*grid_gt)


# --------------------------------------------------------------------------------------------- #
# Degradations
# --------------------------------------------------------------------------------------------- #


def _check_image(image: torch.Tensor, name: str = "image") -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (3, 4) or image.shape[-3] not in (1, 3):
        raise ValueError(f"{name} must have shape [C, H, W] or [B, C, H, W] with C = 3 (RGB) or 1 (gray), "
                         f"got {list(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor in [0, 1], got dtype {image.dtype}")


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
    _check_image(image)
    radius = float(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
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
    _check_image(image)
    sigma = float(sigma)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
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
    _check_image(image)
    if quality is None:
        return image
    try:
        q = operator.index(quality)
    except TypeError:
        raise ValueError(f"quality must be an int or None, got {quality!r}") from None
    if not 1 <= q <= 100:
        raise ValueError(f"quality must lie in [1, 100], got {quality!r}")
    import torchvision.io as tvio

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


# --------------------------------------------------------------------------------------------- #
# Images
# --------------------------------------------------------------------------------------------- #


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W]`` or ``[H, W, 3]`` array -> float32 ``[3, H, W]`` in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0).contiguous()


# Colour (RGB) photographs shipped inside scikit-image's package (no download). Left out: RGBA
# (logo), synthetic (colorwheel, checkerboard, phantom), binary (horse), grayscale photos and
# textures (camera, moon, coins, ...), and `cat`, an alias of `chelsea`.
_SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "stereo_motorcycle",  # the left view of the stereo pair
)


@functools.cache
def _sample_images() -> tuple[torch.Tensor, ...]:
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            'sample_images() needs scikit-image; install it with `pip install "flexops[zoo]"` '
            "(or `pip install scikit-image`)"
        ) from err
    images = []
    for name in _SKIMAGE_PHOTOS:
        array = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            array = array[0]
        images.append(_to_tensor(array))
    return tuple(images)


def sample_images() -> list[torch.Tensor]:
    """The colour photographs bundled with scikit-image (no download needed): astronaut, chelsea,
    coffee, hubble_deep_field, immunohistochemistry, retina, rocket and the left motorcycle view.

    Returns:
        list of float32 ``[3, H, W]`` tensors in ``[0, 1]`` (smallest side 300). They are loaded
        once and cached: the tensors are shared between calls, so do not modify them in place.

    Raises:
        ImportError: if scikit-image is not installed (``pip install "flexops[zoo]"``).
    """
    return list(_sample_images())


def load_folder(path) -> list[torch.Tensor]:
    """Load every ``.png``, ``.jpg`` and ``.jpeg`` file (any letter case) of a folder, sorted by
    file name, converted to RGB with Pillow. Sub-folders and other files are ignored.

    Args:
        path: folder (str or path-like).

    Returns:
        list of float32 ``[3, H, W]`` tensors in ``[0, 1]``.

    Raises:
        FileNotFoundError: if ``path`` does not exist or is not a folder.
        ValueError: if the folder holds no such image.
    """
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found (or not a directory): {str(folder)!r}")
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )
    if not files:
        raise ValueError(
            f"no images in {str(folder)!r}: files ending in {', '.join(IMAGE_EXTENSIONS)} "
            "(any letter case) are read"
        )
    return [load_image(p) for p in files]


def load_image(path) -> torch.Tensor:
    """One PNG/JPEG file as a float32 ``[3, H, W]`` RGB tensor in ``[0, 1]`` (Pillow).

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        flexops.ops.ArgumentError: if it is not an image Pillow can read (a ValueError).
    """
    from PIL import Image

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {str(path)!r}")
    try:
        with Image.open(path) as im:
            return _to_tensor(np.array(im.convert("RGB")))
    except (OSError, SyntaxError) as error:  # Pillow's kinds for an unknown, damaged or cut file
        raise ArgumentError(f"{str(path)!r} is not a readable image ({type(error).__name__}): PNG or JPEG "
                            "files are expected") from None


def save_image(image: torch.Tensor, path) -> None:
    """Writes a ``[3, H, W]`` (or gray ``[1, H, W]``) image in ``[0, 1]`` (clipped, rounded to 8 bits) to ``path``; the
    format follows the file extension (PNG for lossless output)."""
    from PIL import Image

    _check_image(image)
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array)).save(path)


def random_patch(image: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random ``size`` x ``size`` crop, then a horizontal flip, a vertical flip and a 90-degree
    rotation, each with probability 1/2 (CResMD's augmentation).

    Args:
        image: ``[3, H, W]`` tensor with ``H, W >= size``.
        size: patch side.
        generator: source of randomness.

    Returns:
        New contiguous ``[3, size, size]`` tensor.

    Raises:
        ValueError: if the image is smaller than the patch.
    """
    if image.dim() != 3:
        raise ValueError(f"image must have shape [C, H, W], got {list(image.shape)}")
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"image of size {h}x{w} is smaller than the patch size {size}x{size}")
    top = _randint(h - size + 1, generator)
    left = _randint(w - size + 1, generator)
    patch = image[:, top : top + size, left : left + size]
    hflip, vflip, rot = (_uniform(generator) < 0.5 for _ in range(3))
    if hflip:
        patch = patch.flip(-1)
    if vflip:
        patch = patch.flip(-2)
    if rot:
        # A transpose (as CResMD/BasicSR do for "rot90"); combined with the two random flips every
        # one of the 8 rotations/reflections of the square comes out with probability 1/8.
        patch = patch.transpose(-1, -2)
    return patch.clone(memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------- #
# Dataset
# --------------------------------------------------------------------------------------------- #


class PatchPairs(torch.utils.data.Dataset):
    """Random training patches of ``images`` made into training items by ``make_item(clean, generator)``:
    the one dataset skeleton the zoo's methods share (each supplies its degradation).

    Item ``i`` is a deterministic function of ``(seed, i)``: it uses its own generator seeded with
    ``seed * 1_000_003 + i``, so data-loader workers, distributed ranks and resumed runs see the
    same data. Image ``i % len(images)`` is cropped with :func:`random_patch` (crop, flips and
    transposition), then ``make_item`` degrades the clean patch with the same generator.

    Args:
        images: non-empty sequence of ``[C, H, W]`` float tensors in [0, 1], each at least
            ``patch_size`` on both sides (e.g. :func:`sample_images` or :func:`load_folder`).
        patch_size: side of the square patches.
        make_item: ``(clean [C, p, p], generator) -> tuple`` of the item's tensors.
        seed: base seed.
        length: number of items; default ``len(images) * 1000`` (a virtual epoch).
        channels: the image channel counts accepted (RGB or gray by default).

    Example: ``PatchPairs(sample_images(), 64, lambda y, g: (add_noise(y, 25, g), y))``.
    """

    def __init__(self, images, patch_size, make_item, seed=0, length=None, channels=(1, 3)) -> None:
        images = list(images)
        if not images:
            raise ValueError("images must not be empty")
        patch_size = operator.index(patch_size)
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        for k, img in enumerate(images):
            if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] not in channels:
                shape = list(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise ValueError(f"images[{k}] must be a [C, H, W] tensor with C in {channels}, got {shape}")
            h, w = img.shape[1:]
            if h < patch_size or w < patch_size:
                raise ValueError(
                    f"images[{k}] of size {h}x{w} is smaller than the patch size {patch_size}x{patch_size}"
                )
        self.images = images
        self.patch_size = patch_size
        self.make_item = make_item
        self.seed = operator.index(seed)
        self.length = len(images) * 1000 if length is None else operator.index(length)
        if self.length < 0:
            raise ValueError(f"length must be >= 0, got {self.length}")

    def __len__(self) -> int:
        return self.length

    def generator(self, index: int) -> torch.Generator:
        """The generator that item ``index`` draws from (seeded with ``seed * 1_000_003 + index``)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + index) % (1 << 63))

    def __getitem__(self, index: int):
        index = operator.index(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        g = self.generator(index)
        clean = random_patch(self.images[index % len(self.images)], self.patch_size, g).float()
        return self.make_item(clean, g)


class RestorationPairs(PatchPairs):
    """CResMD's and TASNet's training items: ``(degraded [3, p, p], target [3, p, p], task [3])``.

    - ``relative=False`` (CResMD, absolute ground truth): ``level = sample_level_cresmd``,
      ``degraded = degrade(clean, level)``, ``target = clean``, ``task = level_to_task(level)``.
    - ``relative=True`` (TASNet, spec eq. 11): ``level_in, level_gt = sample_pair_relative``,
      ``degraded = degrade(clean, level_in)``, ``target = degrade(clean, level_gt)``,
      ``task = level_to_task(level_in) - level_to_task(level_gt)``. Both use the same standard
      normal noise field (scaled by their own sigma), so equal levels give identical images and
      the target's noise is a scaled-down copy of the input's, not an unpredictable new draw.

    Args:
        images, patch_size (64 in CResMD), seed, length: as :class:`PatchPairs` (RGB images).
        relative: use TASNet's relative ground truth instead of CResMD's absolute one.
    """

    def __init__(self, images, patch_size=64, relative=False, seed=0, length=None) -> None:
        super().__init__(images, patch_size, self._relative_item if relative else self._absolute_item, seed, length,
                         channels=(3,))
        self.relative = bool(relative)

    @staticmethod
    def _absolute_item(clean, g):
        level = sample_level_cresmd(g)
        return degrade(clean, level, g), clean, level_to_task(level)

    @staticmethod
    def _relative_item(clean, g):
        level_in, level_gt = sample_pair_relative(g)
        noise_seed = int(torch.randint(1 << 62, (), generator=g))
        degraded = degrade(clean, level_in, torch.Generator().manual_seed(noise_seed))
        target = degrade(clean, level_gt, torch.Generator().manual_seed(noise_seed))
        task = level_to_task(level_in) - level_to_task(level_gt)
        return degraded, target, task


def noise_levels(sigma) -> tuple:
    """``sigma`` (a noise level in (0, 255] or a non-empty sequence of them) as a tuple of levels."""
    sigmas = (sigma,) if isinstance(sigma, (int, float)) else tuple(sigma)
    if not sigmas or any(not isinstance(s, (int, float)) or not 0 < s <= 255 for s in sigmas):
        raise ValueError(f"sigma must be a noise level in (0, 255] or a non-empty sequence of them, got {sigma!r}")
    return sigmas


class NoisyPairs(PatchPairs):
    """Denoising items ``(noisy [C, p, p], clean [C, p, p])``: white Gaussian noise (clipped, 8-bit) of
    ``sigma``, or of one level drawn per item from a sequence of them (0-255 scale). RGB or gray images.

    Args:
        images, patch_size, seed, length: as :class:`PatchPairs`.
        sigma: a noise level in (0, 255] or a non-empty sequence of them.
    """

    def __init__(self, images, patch_size=64, sigma=25.0, seed=0, length=None) -> None:
        self.sigmas = noise_levels(sigma)
        super().__init__(images, patch_size, self._noisy_item, seed, length)

    def _noisy_item(self, clean, g):
        # A draw only when there is a choice: a single level keeps the generator's stream for the noise.
        sigma = self.sigmas[int(torch.randint(len(self.sigmas), (), generator=g))] if len(self.sigmas) > 1 else self.sigmas[0]
        return add_noise(clean, sigma, g), clean
