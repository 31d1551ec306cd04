"""Tests of flexops.models.data: degradations, level <-> task vector, samplers and the dataset."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flexops.models import data
from flexops.models.data import Level
from flexops.ops import ArgumentError

QUALITIES = [None] + list(range(100, 9, -2))  # CResMD's 47-entry JPEG list


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def task(*values):
    return torch.tensor(values, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# level <-> task vector
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "level, expected",
    [
        (Level(0.0, 0.0, None), (0.0, 0.0, 0.0)),
        (Level(0.0, 0.0, 100), (0.0, 0.0, 2 / 92)),
        (Level(4.0, 50.0, 10), (1.0, 1.0, 1.0)),
        (Level(1.0, 15.0, 80), (0.25, 0.3, 22 / 92)),
        (Level(0.1, 1.0, 98), (0.025, 0.02, 4 / 92)),
    ],
)
def test_level_to_task_values(level, expected):
    t = data.level_to_task(level)
    assert t.dtype == torch.float32 and t.shape == (3,)
    torch.testing.assert_close(t, task(*expected))


def test_level_to_task_accepts_plain_tuple():
    torch.testing.assert_close(data.level_to_task((2.0, 25.0, None)), task(0.5, 0.5, 0.0))


@pytest.mark.parametrize(
    "level, word",
    [
        (Level(4.5, 0.0, None), "radius"),
        (Level(-0.1, 0.0, None), "radius"),
        (Level(0.0, 51.0, None), "sigma"),
        (Level(0.0, 0.0, 8), "quality"),
        (Level(0.0, 0.0, 101), "quality"),
        (Level(0.0, 0.0, 50.5), "quality"),
    ],
)
def test_level_to_task_rejects_out_of_range(level, word):
    with pytest.raises(ValueError, match=word):
        data.level_to_task(level)


def test_task_to_level_inverts_every_grid_value():
    # one component at a time over its whole grid (the full product is 98k levels)
    for label in range(41):
        lv = Level(label / 10, 0.0, None)
        assert data.task_to_level(data.level_to_task(lv)) == lv
    for sigma in range(51):
        lv = Level(0.0, float(sigma), None)
        assert data.task_to_level(data.level_to_task(lv)) == lv
    for q in QUALITIES:
        lv = Level(0.0, 0.0, q)
        assert data.task_to_level(data.level_to_task(lv)) == lv
    for lv in data.CRESMD_27_LEVELS:
        assert data.task_to_level(data.level_to_task(lv)) == lv


def test_task_to_level_special_values_and_rounding():
    assert data.task_to_level([0.0, 0.0, 0.0]) == Level(0.0, 0.0, None)
    assert data.task_to_level([1.0, 1.0, 1.0]) == Level(4.0, 50.0, 10)
    assert data.task_to_level([0.0, 0.0, 2 / 92]).quality == 100
    # any positive JPEG component means "some JPEG": the lightest one is q = 100
    assert data.task_to_level([0.0, 0.0, 1e-4]).quality == 100
    lv = data.task_to_level(task(0.26, 0.31, 0.5))  # 1.04 -> 1.0; 15.5 -> 16; 56 -> 56
    assert lv == Level(1.0, 16.0, 56)
    assert data.task_to_level(task(0.0, 0.0, 0.51)).quality % 2 == 0
    assert isinstance(data.task_to_level([0, 0, 0.5]).quality, int)


@pytest.mark.parametrize("bad", [[0.0, 0.0], [[0.0, 0.0, 0.0]], [0.0, 1.5, 0.0], [-0.2, 0.0, 0.0]])
def test_task_to_level_rejects_bad_task(bad):
    with pytest.raises(ValueError, match="task"):
        data.task_to_level(bad)


def test_cresmd_27_tasks():
    t = data.CRESMD_27_TASKS
    assert t.shape == (27, 3) and t.dtype == torch.float32
    expected = torch.tensor(
        list(itertools.product((0.0, 0.25, 1.0), (0.0, 0.3, 1.0), (0.0, 22 / 92, 1.0))), dtype=torch.float32
    )
    torch.testing.assert_close(t, expected)
    # blur outermost, JPEG innermost
    torch.testing.assert_close(t[1], task(0.0, 0.0, 22 / 92))
    torch.testing.assert_close(t[3], task(0.0, 0.3, 0.0))
    torch.testing.assert_close(t[9], task(0.25, 0.0, 0.0))
    assert len(data.CRESMD_27_LEVELS) == 27
    assert data.CRESMD_27_LEVELS[0] == Level(0.0, 0.0, None)
    assert data.CRESMD_27_LEVELS[-1] == Level(4.0, 50.0, 10)
    assert data.CRESMD_27_LEVELS[1] == Level(0.0, 0.0, 80)
    torch.testing.assert_close(torch.stack([data.level_to_task(lv) for lv in data.CRESMD_27_LEVELS]), t)


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------


def _on_grid(lv):
    return (
        0 <= lv.radius <= 4
        and math.isclose(lv.radius * 10, round(lv.radius * 10), abs_tol=1e-9)
        and 0 <= lv.sigma <= 50
        and lv.sigma == int(lv.sigma)
        and lv.quality in QUALITIES
    )


def test_sample_level_cresmd_reproducible_and_in_range():
    g1, g2 = gen(7), gen(7)
    s1 = [data.sample_level_cresmd(g1) for _ in range(50)]
    s2 = [data.sample_level_cresmd(g2) for _ in range(50)]
    assert s1 == s2
    assert len(set(s1)) > 10
    g = gen(1)
    levels = [data.sample_level_cresmd(g) for _ in range(3000)]
    assert all(isinstance(lv, Level) and _on_grid(lv) for lv in levels)
    tasks = torch.stack([data.level_to_task(lv) for lv in levels])
    nonzero = (tasks > 0).sum(1)
    counts = torch.bincount(nonzero, minlength=4)
    assert counts[1] > 0 and counts[2] > 0 and counts[3] > 0
    # each type is active with probability 2/3, its level round(Beta(0.5, 1) * range) (mean ~ 1/3)
    mean = tasks.mean(0)
    assert torch.all((mean > 0.17) & (mean < 0.28)), mean
    # Beta(0.5, 1) favours light degradations
    active = tasks[:, 1][tasks[:, 1] > 0]
    assert active.median() < 0.35
    # all 3 types are active 1/3 of the time (a Beta draw can still round to level 0)
    assert 0.15 < counts[3].item() / len(levels) < 0.35


def test_sample_pair_relative():
    g1, g2 = gen(5), gen(5)
    first = [data.sample_pair_relative(g1) for _ in range(30)]
    assert first == [data.sample_pair_relative(g2) for _ in range(30)]
    g = gen(2)
    pairs = [data.sample_pair_relative(g) for _ in range(2000)]
    extremes = 0
    fractional = 0
    n_types = set()
    for lin, lgt in pairs:
        assert _on_grid(lin) and _on_grid(lgt)
        tin, tgt = data.level_to_task(lin), data.level_to_task(lgt)
        assert torch.all(tin >= tgt)
        t = tin - tgt
        assert torch.all((t >= 0) & (t <= 1))
        if all(v in (0.0, 1.0) for v in torch.cat([tin, tgt]).tolist()):
            extremes += 1
        if torch.any((t > 0) & (t < 1)):
            fractional += 1
        n_types.add(int((tin > 0).sum()))
    # binary granularity (levels 0 or max) is chosen for half the pairs
    assert 0.4 < extremes / len(pairs) < 0.65
    assert fractional / len(pairs) > 0.3
    assert {1, 2, 3} <= n_types
    # a binary pair with a full-range task component exists
    assert any(float((data.level_to_task(a) - data.level_to_task(b)).max()) == 1.0 for a, b in pairs)


# ------------------------------------------------------------------------------------------------
# degradations
# ------------------------------------------------------------------------------------------------


def test_gaussian_kernel_sums_to_one():
    for r in (0.1, 1.0, 2.5, 4.0):
        k = data.gaussian_kernel(r)
        assert k.shape == (21,)
        assert math.isclose(k.sum().item(), 1.0, abs_tol=1e-12)
        assert math.isclose(torch.outer(k, k).sum().item(), 1.0, abs_tol=1e-12)
        torch.testing.assert_close(k, k.flip(0))


def test_blur_identity_and_constant():
    x = torch.rand(3, 20, 30)
    assert torch.equal(data.gaussian_blur(x, 0), x)
    flat = torch.full((3, 16, 24), 0.37)
    for r in (0.5, 2.0, 4.0):
        torch.testing.assert_close(data.gaussian_blur(flat, r), flat, atol=1e-6, rtol=0)


def test_blur_matches_2d_convolution_with_replicate_padding():
    x = torch.rand(2, 3, 40, 33, dtype=torch.float64)
    r = 1.7
    k = data.gaussian_kernel(r)
    k2 = torch.outer(k, k).expand(3, 1, 21, 21)
    ref = F.conv2d(F.pad(x, (10, 10, 10, 10), mode="replicate"), k2, groups=3)
    out = data.gaussian_blur(x, r)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(data.gaussian_blur(x[1], r), ref[1])
    assert out.std() < x.std()


def test_noise_statistics_and_reproducibility():
    flat = torch.full((3, 256, 256), 0.5)
    y = data.add_noise(flat, 25, gen(0))
    assert abs((y - flat).std().item() - 25 / 255) < 0.03 * 25 / 255
    assert abs((y - flat).mean().item()) < 1e-3
    assert torch.equal(y, data.add_noise(flat, 25, gen(0)))
    assert not torch.equal(y, data.add_noise(flat, 25, gen(1)))
    # clipped and quantised to 8 bits, like CResMD's saved noisy images
    assert y.min() >= 0 and y.max() <= 1
    torch.testing.assert_close(y * 255, torch.round(y * 255), atol=1e-4, rtol=0)
    assert torch.equal(data.add_noise(flat, 0, gen(0)), flat)
    with pytest.raises(ValueError, match="sigma"):
        data.add_noise(flat, -1, gen(0))


def test_noise_clips():
    white = torch.ones(3, 32, 32)
    y = data.add_noise(white, 50, gen(0))
    assert y.max() == 1.0 and y.min() >= 0


def test_jpeg():
    x = torch.rand(3, 32, 48)
    assert torch.equal(data.jpeg(x, None), x)
    smooth = data.gaussian_blur(torch.rand(3, 48, 48), 2.0)
    y10 = data.jpeg(smooth, 10)
    assert y10.shape == smooth.shape and y10.dtype == torch.float32
    assert y10.min() >= 0 and y10.max() <= 1
    assert (y10 - smooth).abs().mean() > 1e-3
    # higher quality is closer to the input
    assert (data.jpeg(smooth, 95) - smooth).abs().mean() < (y10 - smooth).abs().mean()
    batch = torch.stack([smooth, smooth.flip(-1)])
    yb = data.jpeg(batch, 10)
    assert yb.shape == batch.shape
    torch.testing.assert_close(yb[0], y10)
    with pytest.raises(ValueError, match="quality"):
        data.jpeg(x, 0)


def test_degradations_and_save_image_refuse_what_is_no_image(tmp_path):
    """flexops.models.checks.image: ArgumentError (a ValueError) naming the image, TypeError for a non-tensor."""
    with pytest.raises(ArgumentError, match=r"image must have shape \[C, H, W\] or \[B, C, H, W\].*got \[2, 5, 5\]"):
        data.gaussian_blur(torch.rand(2, 5, 5), 1.0)
    with pytest.raises(ArgumentError, match=r"must be a floating-point tensor in \[0, 1\], got dtype torch.uint8"):
        data.jpeg(torch.zeros(3, 4, 4, dtype=torch.uint8), 50)
    with pytest.raises(TypeError, match="image must be a torch.Tensor, got list"):
        data.add_noise([[0.5]], 5.0, None)
    with pytest.raises(ArgumentError, match=r"got \[4, 4\]"):
        data.save_image(torch.rand(4, 4), tmp_path / "flat.png")


def test_degrade_order_blur_noise_jpeg():
    x = torch.rand(3, 40, 40)
    level = Level(2.0, 20.0, 30)
    out = data.degrade(x, level, gen(4))
    manual = data.jpeg(data.add_noise(data.gaussian_blur(x, 2.0), 20.0, gen(4)), 30)
    assert torch.equal(out, manual)
    noise_first = data.jpeg(data.gaussian_blur(data.add_noise(x, 20.0, gen(4)), 2.0), 30)
    assert not torch.allclose(out, noise_first)
    assert torch.equal(data.degrade(x, Level(0.0, 0.0, None), gen(0)), x)
    assert data.degrade(x.unsqueeze(0), level, gen(4)).shape == (1, 3, 40, 40)


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------


def _dihedral(x):
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        out += [r, r.flip(-1)]
    return out


def test_random_patch():
    img = torch.rand(3, 30, 50)
    p = data.random_patch(img, 16, gen(0))
    assert p.shape == (3, 16, 16) and p.is_contiguous()
    assert torch.equal(p, data.random_patch(img, 16, gen(0)))
    square = torch.rand(3, 12, 12)
    seen = set()
    for s in range(60):
        q = data.random_patch(square, 12, gen(s))
        matches = [i for i, d in enumerate(_dihedral(square)) if torch.equal(q, d)]
        assert len(matches) == 1
        seen.add(matches[0])
        q.zero_()  # a new tensor: the image is untouched
    assert len(seen) == 8
    assert square.abs().sum() > 0
    with pytest.raises(ValueError, match=r"30x50.*64x64"):
        data.random_patch(img, 64, gen(0))


def test_load_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (10, 12), dtype=np.uint8)  # grayscale: becomes 3 channels
    c = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.PNG")
    Image.fromarray(b).save(tmp_path / "b.png")
    Image.fromarray(c).save(tmp_path / "c.jpeg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    images = data.load_folder(tmp_path)
    assert [tuple(im.shape) for im in images] == [(3, 20, 30), (3, 10, 12), (3, 16, 16)]
    assert all(im.dtype == torch.float32 and im.min() >= 0 and im.max() <= 1 for im in images)
    torch.testing.assert_close(images[0], torch.from_numpy(a).permute(2, 0, 1).float() / 255)
    assert torch.equal(images[1][0], images[1][2])
    assert len(data.load_folder(str(tmp_path))) == 3


def test_load_folder_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_folder(missing)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        data.load_folder(tmp_path / "file.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"\.png"):
        data.load_folder(empty)


def test_sample_images():
    images = data.sample_images()
    assert len(images) >= 5
    for im in images:
        assert im.dim() == 3 and im.shape[0] == 3 and min(im.shape[1:]) >= 64
        assert im.dtype == torch.float32
        assert im.min() >= 0 and im.max() <= 1
        assert im.std() > 0.01
    again = data.sample_images()
    assert all(x is y for x, y in zip(images, again))


# ------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 40, 52, generator=g), torch.rand(3, 36, 36, generator=g)]


@pytest.mark.parametrize("relative", [False, True])
def test_restoration_pairs_deterministic(small_images, relative):
    ds = data.RestorationPairs(small_images, patch_size=24, relative=relative, seed=3)
    assert len(ds) == 2000
    other = data.RestorationPairs(small_images, patch_size=24, relative=relative, seed=3)
    for i in (0, 1, 1999):
        x, y, t = ds[i]
        assert x.shape == y.shape == (3, 24, 24) and t.shape == (3,)
        assert x.dtype == y.dtype == t.dtype == torch.float32
        assert torch.all((t >= 0) & (t <= 1))
        assert x.min() >= 0 and x.max() <= 1 and y.min() >= 0 and y.max() <= 1
        for u, v in zip((x, y, t), other[i]):
            assert torch.equal(u, v)
    assert not torch.equal(ds[0][1], ds[2][1])
    shifted = data.RestorationPairs(small_images, patch_size=24, relative=relative, seed=4)
    assert not torch.equal(ds[0][1], shifted[0][1])
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch[0].shape == (2, 3, 24, 24) and batch[2].shape == (2, 3)


def test_restoration_pairs_absolute(small_images):
    ds = data.RestorationPairs(small_images, patch_size=16, seed=0, length=50)
    assert len(ds) == 50
    for i in range(20):
        x, y, t = ds[i]
        # the target is a clean patch of image i % 2, the task a CResMD level
        assert data.task_to_level(t) is not None
        if float(t.sum()) == 0:
            assert torch.equal(x, y)


def test_restoration_pairs_relative(small_images):
    ds = data.RestorationPairs(small_images, patch_size=16, relative=True, seed=1, length=300)
    zero_tasks = 0
    for i in range(len(ds)):
        x, y, t = ds[i]
        if float(t.sum()) == 0:
            # equal levels, same noise field: the target is the input
            assert torch.equal(x, y)
            zero_tasks += 1
    assert zero_tasks > 0


def test_restoration_pairs_validation(small_images):
    with pytest.raises(ValueError, match="empty"):
        data.RestorationPairs([])
    with pytest.raises(ValueError, match=r"images\[1\].*36x36.*40x40"):
        data.RestorationPairs(small_images, patch_size=40)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        data.RestorationPairs([torch.rand(1, 64, 64)])


def test_restoration_pairs_on_sample_images():
    ds = data.RestorationPairs(data.sample_images(), patch_size=64, relative=True)
    assert len(ds) == 1000 * len(data.sample_images())
    x, y, t = ds[5]
    assert x.shape == y.shape == (3, 64, 64) and t.shape == (3,)


def test_noisy_pairs_rgb_and_gray():
    rgb = data.sample_images()[0]
    pairs = data.NoisyPairs([rgb], 32, sigma=25, seed=1)
    noisy, clean = pairs[3]
    assert noisy.shape == clean.shape == (3, 32, 32)
    assert torch.equal(noisy, pairs[3][0]) and not torch.equal(noisy, pairs[4][0])
    assert 20 < 255 * (noisy - clean).std() < 30
    gray = data.NoisyPairs([rgb[:1]], 32, sigma=(10, 70), seed=1)
    spreads = {round(float(255 * (n - c).std()) / 30) for n, c in (gray[i] for i in range(20))}
    assert gray[0][0].shape == (1, 32, 32) and spreads == {0, 2}  # both levels drawn
    with pytest.raises(ValueError, match=r"sigma must be a noise level in \(0, 255\]"):
        data.NoisyPairs([rgb], 32, sigma=[])
    with pytest.raises(ValueError, match=r"images\[0\] must be a \[C, H, W\] tensor with C in \(1, 3\)"):
        data.NoisyPairs([torch.rand(2, 40, 40)], 32)


def test_patch_pairs_hands_the_item_generator_to_make_item():
    seen = []
    pairs = data.PatchPairs([torch.rand(3, 40, 40)], 16, lambda clean, g: seen.append(torch.rand(1, generator=g)) or (clean,))
    pairs[7]
    expected = pairs.generator(7)
    data.random_patch(pairs.images[0], 16, expected)
    assert torch.equal(seen[0], torch.rand(1, generator=expected))
