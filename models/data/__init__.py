"""Training and test data of the zoo: section 1 of the zoo spec (``docs/zoo/tasnet.md``) and the
patch datasets every method trains on. One module per job, every name importable from here:

- ``levels``: ``Level``, the level <-> task-vector map, ``CRESMD_27_LEVELS`` / ``CRESMD_27_TASKS``,
  CResMD's level sampler and TASNet's relative level pairs;
- ``degradations``: Gaussian blur, Gaussian noise and JPEG (applied in that order by ``degrade``);
- ``images``: image files (``load_image``, ``load_folder``, ``save_image``) and ``sample_images``;
- ``datasets``: ``random_patch`` and the patch datasets ``PatchPairs``, ``RestorationPairs``,
  ``NoisyPairs``;
- ``draws``: the scalar random draws the samplers make.

Images are float32 tensors of shape ``[3, H, W]`` (RGB) with values in ``[0, 1]``; the degradations
also take a batch ``[B, 3, H, W]``. Every random choice is drawn from an explicit
``torch.Generator`` so a result is a pure function of its seed.

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

from flexops.models.data.datasets import NoisyPairs, PatchPairs, RestorationPairs, noise_levels, random_patch
from flexops.models.data.degradations import KERNEL_SIZE, add_noise, degrade, gaussian_blur, gaussian_kernel, jpeg
from flexops.models.data.images import IMAGE_EXTENSIONS, load_folder, load_image, sample_images, save_image
from flexops.models.data.levels import (
    CRESMD_27_LEVELS,
    CRESMD_27_TASKS,
    MAX_QUALITY,
    MAX_RADIUS,
    MAX_SIGMA,
    MIN_QUALITY,
    Level,
    level_to_task,
    sample_level_cresmd,
    sample_pair_relative,
    task_to_level,
)

__all__ = [
    "CRESMD_27_LEVELS",
    "CRESMD_27_TASKS",
    "IMAGE_EXTENSIONS",
    "KERNEL_SIZE",
    "Level",
    "MAX_QUALITY",
    "MAX_RADIUS",
    "MAX_SIGMA",
    "MIN_QUALITY",
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
