"""FlexIR's adaptive inference (Algorithm 2) and its sharpness score (eqs. 6-8).

The image is cut into a k x k grid of regions (4 = 2 x 2 quadrants, split at floor(i H / k)). Per
region, j = 1 .. max_pointer: run RSTB j and exit j, score the exit's output with `sharpness`; the
region exits with that output once the score passes the threshold (else it goes on; the last exit
is taken if none passes). Two ways to run it:

- mode "crop" (the paper's): each region is restored as its own image (own padding, windows and
  convolution borders), a batch of the samples whose region still runs; outputs are concatenated,
  so there are seams where regions meet.
- mode "mask" (flexops, beyond the paper): one pass over the whole image. Exited regions stop
  costing: their windows are switched off in window_attention (`active`), their tokens skip qkv,
  proj, the MLP and the residual convolutions (which run on the running regions plus the halo
  they need), and their features stay frozen at their exit; exits are evaluated on the running
  regions only. With no exit the output equals the whole-image network at max_pointer: no seams.

Threshold h (spec section 2, reading (a) by default): ref="first": h = threshold x score of the
region's first exit; ref="input": threshold x score of the degraded input region; ref="absolute":
h = threshold. threshold +inf never exits early (max_pointer everywhere), -inf exits at 1; raising
it never lowers an exit.
"""

import math
import numbers

import torch

from flexops.nn.window_attention import active_windows, window_tokens
from flexops.models import checks
from flexops.models.swinir import as_image, as_tokens

REFS = ("first", "input", "absolute")
MODES = ("crop", "mask")


def sharpness(img, beta=0.61):
    """The sharpness score Omega = MG^beta * VG^(1 - beta) (eqs. 6-8, after Zhan et al. 2018), float64.

    Args:
        img: [B, C, h, w] or [C, h, w] with C = 3 (scored on the luma 0.299 R + 0.587 G + 0.114 B) or
            C = 1, values in [0, 1]; h, w >= 2.
        beta: weight of the maximum gradient, in [0, 1].

    G = Roberts gradient magnitude, replicate-padded bottom/right to h x w; B = round_half_up(min(h, w)
    / 16); G_c = the centre (h - B) x (w - B) crop of G; MG = max G_c; VG = (max G_c - min G_c) /
    mean G (over the whole G). Returns [B] (or a 0-dim tensor): 0 where MG = 0 (a flat region).

    >>> sharpness(torch.full((3, 32, 32), 0.5))
    tensor(0., dtype=torch.float64)
    """
    if not isinstance(img, torch.Tensor) or img.dim() not in (3, 4) or img.shape[-3] not in (1, 3):
        raise ValueError(f"img must be [B, C, h, w] or [C, h, w] with C = 1 or 3, got "
                         f"{tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__}")
    if min(img.shape[-2:]) < 2:
        raise ValueError(f"img must be at least 2 x 2 (Roberts gradients), got {tuple(img.shape[-2:])}")
    if not isinstance(beta, numbers.Real) or not 0 <= beta <= 1:
        raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
    batched = img.dim() == 4
    img = (img if batched else img.unsqueeze(0)).double()
    if img.shape[1] == 3:
        luma = 0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]
    else:
        luma = img[:, 0]
    height, width = luma.shape[-2:]
    diagonal = luma[:, :-1, :-1] - luma[:, 1:, 1:]
    anti = luma[:, :-1, 1:] - luma[:, 1:, :-1]
    grad = torch.sqrt(diagonal**2 + anti**2)
    grad = torch.nn.functional.pad(grad.unsqueeze(1), (0, 1, 0, 1), mode="replicate").squeeze(1)
    border = math.floor(min(height, width) / 16 + 0.5)
    top = border // 2
    centre = grad[:, top:height - (border - top), top:width - (border - top)].flatten(1)
    peak, low = centre.max(1).values, centre.min(1).values
    variability = (peak - low) / grad.flatten(1).mean(1).clamp_min(1e-12)
    score = torch.where(peak > 0, peak**beta * variability ** (1 - beta), torch.zeros_like(peak))
    return score if batched else score[0]


def region_edges(size, k):
    """[0, floor(size / k), ..., size]: the k x k grid's cuts along one axis."""
    return [i * size // k for i in range(k + 1)]


def split_regions(x, regions=4):
    """[B, C, H, W] -> the k x k regions (row-major), a list of [B, C, h_r, w_r] views."""
    k = _grid(regions)
    rows, cols = region_edges(x.shape[-2], k), region_edges(x.shape[-1], k)
    return [x[..., rows[i]:rows[i + 1], cols[j]:cols[j + 1]] for i in range(k) for j in range(k)]


def union_regions(parts, regions=4):
    """The inverse of split_regions: concatenates the k x k regions back into one image."""
    k = _grid(regions)
    return torch.cat([torch.cat(parts[i * k:(i + 1) * k], -1) for i in range(k)], -2)


def _grid(regions):
    k = math.isqrt(regions) if isinstance(regions, int) and not isinstance(regions, bool) and regions > 0 else 0
    if k * k != regions:
        raise ValueError(f"regions must be a square number (a k x k grid: 1, 4, 9, ...), got {regions!r}")
    return k


def _passes(score, threshold, reference, ref):
    """score > h, with h = threshold x reference (or threshold itself for ref 'absolute' or an
    infinite threshold, where inf x 0 would be NaN)."""
    if ref == "absolute" or math.isinf(threshold):
        return score > threshold
    return score > threshold * reference


def adaptive(model, x, threshold=1.1, ref="first", regions=4, max_pointer=None, mode="crop"):
    """Algorithm 2 (module docstring). Returns (output [B, C, H * s, W * s], exits [B, regions]: the
    1-based exit of each region, row-major over the grid)."""
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or math.isnan(threshold):
        raise ValueError(f"threshold must be a real number (+-inf allowed), got {threshold!r}")
    if ref not in REFS:
        raise ValueError(f"ref must be one of {REFS}, got {ref!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    max_pointer = model.check_pointer(max_pointer, "max_pointer")
    checks.image_batch(x, model.in_chans)
    k = _grid(regions)
    height, width = x.shape[-2:]
    if min(height, width) // k < model.window_size:
        raise ValueError(f"each of the {k} x {k} regions must be at least window_size = {model.window_size} pixels "
                         f"per side; the image is {height} x {width}")
    threshold = float(threshold)
    with torch.no_grad():
        if mode == "crop":
            outputs, exits = zip(*(_run_region(model, part, threshold, ref, max_pointer)
                                   for part in split_regions(x, regions)))
            return union_regions(list(outputs), regions), torch.stack(exits, 1)
        return _run_masked(model, x, threshold, ref, max_pointer, k)


def _run_region(model, x, threshold, ref, max_pointer):
    """One region of every sample, as its own image: exit j for the samples still running."""
    height, width = x.shape[-2:]
    padded, x_first, tokens = model.head(x)
    reference = sharpness(x) if ref == "input" else None
    output = x.new_empty(x.shape[0], x.shape[1], height * model.scale, width * model.scale)
    exits = torch.full((x.shape[0],), max_pointer, dtype=torch.long)
    index = torch.arange(x.shape[0])
    for j in range(max_pointer):
        tokens = model.layers[j](tokens)
        y = model.finish(model.exit(j, tokens, x_first, padded), height, width)
        score = sharpness(y)
        if reference is None:
            reference = score
        done = _passes(score, threshold, reference, ref) | (j == max_pointer - 1)
        output[index[done]] = y[done]
        exits[index[done]] = j + 1
        keep = ~done
        index, tokens, x_first, padded, reference = index[keep], tokens[keep], x_first[keep], padded[keep], reference[keep]
        if not len(index):
            break
    return output, exits


def _conv_radius(module):
    """Pixels of context its convolutions read around an output pixel (an upper bound)."""
    return sum((m.kernel_size[0] - 1) // 2 for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def _region_boxes(rows, cols, padded_size):
    """Row-major (y0, y1, x0, x1) of each region on the padded map (the padding joins the last row
    and column of regions)."""
    rows, cols = rows[:-1] + [padded_size[0]], cols[:-1] + [padded_size[1]]
    return [(rows[i], rows[i + 1], cols[j], cols[j + 1]) for i in range(len(rows) - 1) for j in range(len(cols) - 1)]


def _apply_in_boxes(function, radius, maps, boxes, running):
    """function(*crops) on each running (sample, region) box plus `radius` of context (cut at the
    map's border, where the whole-map convolution's zero padding gives the same result), as
    (sample index, region, box, centre of the result) tuples."""
    height, width = maps[0].shape[1:3]
    results = []
    for r, (y0, y1, x0, x1) in enumerate(boxes):
        index = running[:, r].nonzero().flatten()
        if not len(index):
            continue
        top, left = max(0, y0 - radius), max(0, x0 - radius)
        bottom, right = min(height, y1 + radius), min(width, x1 + radius)
        crops = [m[index, top:bottom, left:right] for m in maps]
        results.append((index, r, (y0 - top, y1 - top, x0 - left, x1 - left), function(*crops)))
    return results


class RunningRegions:
    """FlexIR's early-exit state for one residual group in mode "mask": the regions still running,
    handed to the zoo's RSTB and Swin blocks as their `running` (the interface of
    flexops.models.swinir.AllTokens). The blocks update the running regions' tokens only, attending
    the windows that hold one of them; the residual convolution runs on their boxes plus `halo`.

    Args:
        running: bool [B, regions], True where a (sample, region) still runs.
        boxes: each region's (y0, y1, x0, x1) on the token map (row-major, as _region_boxes).
        halo: pixels of context the residual convolution reads around an output pixel.
        device: the token map's.
    """

    def __init__(self, running, boxes, halo, device):
        self.running, self.boxes, self.halo = running, boxes, halo
        mask = torch.zeros(running.shape[0], boxes[-1][1], boxes[-1][3], dtype=torch.bool, device=device)
        for r, (y0, y1, x0, x1) in enumerate(boxes):
            mask[running[:, r], y0:y1, x0:x1] = True
        self.mask = mask  # [B, H, W]: True at the running tokens
        self.index = mask.flatten().nonzero().squeeze(1)  # their flat indices
        self._windows = {}  # (window, shift) -> (active windows, flat indices of their tokens)

    def _windows_of(self, window_size, shift_size):
        key = (window_size, shift_size)
        if key not in self._windows:  # the blocks of a group share two grids: computed once each
            active = active_windows(self.mask, window_size, shift_size)
            self._windows[key] = active, window_tokens(active, window_size, shift_size).flatten().nonzero().squeeze(1)
        return self._windows[key]

    def active(self, window_size, shift_size):
        return self._windows_of(window_size, shift_size)[0]

    def in_windows(self, function, x, window_size, shift_size):
        index = self._windows_of(window_size, shift_size)[1]
        flat = x.reshape(-1, x.shape[-1])
        rows = function(flat.index_select(0, index))
        out = rows.new_zeros(flat.shape[0], rows.shape[-1])
        return out.index_copy_(0, index, rows).view(*x.shape[:-1], -1)

    def update(self, function, x, *maps):
        rows = function(*(m.reshape(-1, m.shape[-1]).index_select(0, self.index) for m in (x, *maps)))
        return x.reshape(-1, x.shape[-1]).index_copy(0, self.index, rows).view(x.shape)

    def residual(self, function, y, x):
        out = x.clone()
        for index, r, (y0, y1, x0, x1), result in _apply_in_boxes(function, self.halo, [y], self.boxes, self.running):
            top, bottom, left, right = self.boxes[r]
            out[index, top:bottom, left:right] = result[:, y0:y1, x0:x1] + x[index, top:bottom, left:right]
        return out


def _run_masked(model, x, threshold, ref, max_pointer, k):
    """Mode "mask": one pass over the whole image, exited regions frozen and skipped."""
    height, width = x.shape[-2:]
    batch, s = x.shape[0], model.scale
    padded, x_first, tokens = model.head(x)
    rows, cols = region_edges(height, k), region_edges(width, k)
    boxes = _region_boxes(rows, cols, tokens.shape[1:3])
    running = torch.ones(batch, k * k, dtype=torch.bool)
    exits = torch.full((batch, k * k), max_pointer, dtype=torch.long)
    if ref == "input":
        reference = torch.stack([sharpness(part) for part in split_regions(x, k * k)], 1)
    else:  # "first" fills it at exit 1; "absolute" does not use it
        reference = torch.zeros(batch, k * k, dtype=torch.float64)
    output = x.new_empty(batch, x.shape[1], height * s, width * s)
    maps = [None, as_tokens(x_first), as_tokens(padded)]
    for j in range(max_pointer):
        layer = model.layers[j]
        tokens = layer(tokens, running=RunningRegions(running, boxes, _conv_radius(layer.conv), tokens.device))
        branch = model.branch(j)

        def exit_branch(t, first, image, branch=branch):
            return branch.reconstruct(t, as_image(first), as_image(image)) / model.img_range + model.mean.to(t.dtype)

        maps[0] = tokens
        for index, r, (y0, _, x0, _), result in _apply_in_boxes(exit_branch, _conv_radius(branch), maps, boxes,
                                                                running):
            i, c = divmod(r, k)
            # The region on the unpadded image (the padding is cropped off, as finish() does).
            y = result[..., y0 * s:(y0 + rows[i + 1] - rows[i]) * s, x0 * s:(x0 + cols[c + 1] - cols[c]) * s]
            score = sharpness(y)
            if j == 0 and ref == "first":
                reference[index, r] = score
            done = _passes(score, threshold, reference[index, r], ref) | (j == max_pointer - 1)
            output[index[done], :, rows[i] * s:rows[i + 1] * s, cols[c] * s:cols[c + 1] * s] = y[done]
            exits[index[done], r] = j + 1
            running[index[done], r] = False
        if not running.any():
            break
    return output, exits
