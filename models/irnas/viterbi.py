"""Width decoding of the IR-NAS supernet (the zoo's irnas.md, section 4).

The supernet's beta rows are Markov transition probabilities: row (layer l, source width i) gives
the probabilities of moving down (i - 1), staying (i) and moving up (i + 1) into layer l, the source
of layer 1 being the stem at width 0. The decoded path is the most probable sequence of widths
(Viterbi), not the per-layer argmax, so the width changes by at most one level per layer.
"""

import math

import torch

NUM_WIDTHS = 3  # W, 2W, 4W


def trellis(layers):
    """Widths present at each layer: layer l (1-based) holds widths 0 .. min(3, l + 1) - 1."""
    return [min(NUM_WIDTHS, layer + 1) for layer in range(1, layers + 1)]


def beta_rows(layers):
    """(layer, source width) of each beta row, layer 1's source being the stem (width 0)."""
    sources = [1] + trellis(layers)[:-1]
    return [(layer, width) for layer, count in enumerate(sources, 1) for width in range(count)]


def check_path(path, layers=None):
    """Raises a ValueError unless `path` is a valid width path: ints in {0, 1, 2}, starting at 0 or 1
    (one move from the stem's width 0), each step changing the width by at most one level."""
    path = list(path)
    if layers is not None and len(path) != layers:
        raise ValueError(f"path must have one width per layer ({layers}), got {len(path)}: {path}")
    if not path:
        raise ValueError("path must not be empty")
    previous = 0
    for layer, width in enumerate(path, 1):
        if not isinstance(width, int) or not 0 <= width < NUM_WIDTHS:
            raise ValueError(f"path entries must be width indices 0, 1 or 2 (W, 2W, 4W); got {path}")
        if abs(width - previous) > 1:
            raise ValueError(f"path {path} jumps from width {previous} to {width} at layer {layer}: "
                             "a path moves at most one width level per layer (starting from 0 at the stem)")
        previous = width
    return path


def viterbi(beta):
    """The most probable width path through the supernet's trellis.

    Args:
        beta: [R, 3] transition probabilities (down, same, up) per (layer, source width) in the order
            of `beta_rows(L)` (what `SuperNet.transition_probabilities()` returns): R = 1 + 2 + 3 + 3 ...
            for L layers (R = 9 for L = 4). Entries must be >= 0; impossible moves should be 0.

    Returns:
        list of L width indices (0 = W, 1 = 2W, 2 = 4W) maximising the product of the transition
        probabilities from the stem at width 0. Ties go to the lower width (all-W at uniform beta).

    Example::

        path = viterbi(supernet.transition_probabilities())     # e.g. [0, 1, 2, 2]
    """
    beta = torch.as_tensor(beta).detach().to("cpu", torch.float64)
    if beta.dim() != 2 or beta.shape[1] != 3:
        raise ValueError(f"beta must be [R, 3] (down, same, up per layer and source width), got {list(beta.shape)}")
    layers = next((n for n in range(1, beta.shape[0] + 1) if len(beta_rows(n)) == beta.shape[0]), None)
    if layers is None:
        raise ValueError(f"beta has {beta.shape[0]} rows, which is no trellis: L layers need 1, 3, 6, 9, 12, ... rows")
    if not bool(torch.isfinite(beta).all()) or bool((beta < 0).any()):
        raise ValueError("beta must hold transition probabilities (finite, >= 0), not logits")
    log = [[math.log(p) if p > 0 else -math.inf for p in row] for row in beta.tolist()]
    score, back, row = [0.0], [], 0  # log probability of the best path ending at each width
    for count in trellis(layers):
        new, came_from = [-math.inf] * count, [-1] * count
        for source, value in enumerate(score):
            for move in range(3):
                target = source + move - 1
                candidate = value + log[row][move]
                if 0 <= target < count and candidate > new[target]:  # strict: the lower source wins a tie
                    new[target], came_from[target] = candidate, source
            row += 1
        score = new
        back.append(came_from)
    width = max(range(len(score)), key=lambda w: (score[w], -w))
    if score[width] == -math.inf:
        raise ValueError("beta gives every path probability 0")
    path = [width]
    for came_from in reversed(back[1:]):
        width = came_from[width]
        path.append(width)
    return path[::-1]
