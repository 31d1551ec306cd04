"""Datasets of random training patches: the shared skeleton (``PatchPairs``: item i a pure function of
the seed and i), CResMD's and TASNet's items (``RestorationPairs``) and denoising items (``NoisyPairs``)."""

from __future__ import annotations

import operator

import torch

from flexops.models.data import draws
from flexops.models.data.degradations import add_noise, degrade
from flexops.models.data.levels import level_to_task, sample_level_cresmd, sample_pair_relative


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
    top = draws.integer(h - size + 1, generator)
    left = draws.integer(w - size + 1, generator)
    patch = image[:, top : top + size, left : left + size]
    hflip, vflip, rot = (draws.uniform(generator) < 0.5 for _ in range(3))
    if hflip:
        patch = patch.flip(-1)
    if vflip:
        patch = patch.flip(-2)
    if rot:
        # A transpose (as CResMD/BasicSR do for "rot90"); combined with the two random flips every
        # one of the 8 rotations/reflections of the square comes out with probability 1/8.
        patch = patch.transpose(-1, -2)
    return patch.clone(memory_format=torch.contiguous_format)



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
