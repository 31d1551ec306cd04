"""Degradation levels and task vectors (section 1 of ``docs/zoo/tasnet.md``): the map between a level
and the 3-D task vector ``t = (deblur, denoise, deJPEG)``, CResMD's 27-level validation grid, CResMD's
level sampler and TASNet's relative (input, target) level pairs.

Level and task vector (labels as in CResMD's file names, divided by ``(40, 50, 92)``)::

    t_blur  = r / 4            r in [0, 4], step 0.1      (std of a 21x21 Gaussian kernel)
    t_noise = sigma / 50       sigma in [0, 50], step 1   (0-255 scale)
    t_jpeg  = (102 - q) / 92   q in {100, 98, ..., 10};   no JPEG (q = None) -> 0
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import NamedTuple, Sequence

import torch

from flexops.models.data import draws

# Ranges of the three degradations (spec section 1).
MAX_RADIUS = 4.0
MAX_SIGMA = 50.0
MIN_QUALITY = 10
MAX_QUALITY = 100
# Task vector = label / _LABEL_SCALE, labels being 10 r, sigma and 102 - q (0 without JPEG).
_LABEL_SCALE = (40, 50, 92)


class Level(NamedTuple):
    """A degradation level: blur std ``radius`` (pixels, 0..4; 0 = no blur), noise ``sigma``
    (0-255 scale, 0..50; 0 = no noise) and JPEG ``quality`` (int 10..100, or ``None`` = no JPEG)."""

    radius: float
    sigma: float
    quality: int | None


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


def _beta_half_one(generator: torch.Generator | None) -> float:
    # Beta(a, 1) has CDF x**a, so U**(1/a) with U uniform is an exact draw; a = 0.5 gives U**2.
    return draws.uniform(generator) ** 2


def _active_types(generator: torch.Generator | None) -> tuple[bool, bool, bool]:
    """CResMD's choice of degradation types: how many (1, 2 or 3) uniformly, then for one type
    which one uniformly, for two types which one is left out uniformly."""
    count = 1 + draws.integer(3, generator)
    if count == 3:
        return (True, True, True)
    which = draws.integer(3, generator)
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
    binary = draws.uniform(generator) < 0.5
    grid_in, grid_gt = [], []
    for a, m in zip(active, _MAX_GRID):
        if not a:
            grid_in.append(0)
            grid_gt.append(0)
            continue
        if binary:
            x, y = (m * draws.integer(2, generator) for _ in range(2))
        else:
            x, y = (_round_half_up(_beta_half_one(generator) * m) for _ in range(2))
        grid_in.append(max(x, y))
        grid_gt.append(min(x, y))
    return _grid_to_level(*grid_in), _grid_to_level(*grid_gt)

