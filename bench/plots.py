"""Drawing helpers every bench plot uses: a y range that one outlier cannot stretch (the outlier is
marked at the edge with its value), goal / paper / ideal lines in one style each, the noise band."""

import statistics

STYLES = {  # reference lines, by what they show
    "goal": {"color": "tab:red", "ls": "--", "lw": 1.2},
    "paper": {"color": "tab:purple", "ls": ":", "lw": 1.5},
    "ideal": {"color": "gray", "ls": "-.", "lw": 1.0},
}
FAR = 3.0  # interquartile ranges beyond the quartiles where a value counts as an outlier (Tukey's "far out")


def reference(axes, y, kind, label=None, span=None):
    """A horizontal line at `y` in the style of `kind` (goal, paper or ideal): across the axes, or
    from span[0] to span[1] in data coordinates (one group of bars, one point)."""
    if span is None:
        axes.axhline(y, label=label, **STYLES[kind])
    else:
        axes.hlines(y, *span, label=label, **STYLES[kind])


def noise_band(axes, x, noise, label="noise (one function twice)"):
    """A grey band of +-|noise| around zero at each x: differences inside it are the machine's."""
    size = [abs(n) for n in noise]
    axes.fill_between(x, [-n for n in size], size, color="gray", alpha=0.25, lw=0, label=label)


def outliers(values):
    """The values outside FAR interquartile ranges beyond the quartiles (none among fewer than 5)."""
    if len(values) < 5:
        return []
    q1, _, q3 = statistics.quantiles(values, n=4)
    spread = FAR * (q3 - q1)
    return [v for v in values if v < q1 - spread or v > q3 + spread]


def robust_ylim(axes, points, keep=()):
    """Sets the y range to the values of `points` ([(x, y)]) without their outliers, and to the
    values in `keep` (lines that must show: a goal, zero); each outlier is drawn as a triangle on the
    edge it lies beyond, labelled with its value. Returns the points drawn so."""
    far = outliers([y for _, y in points])
    shown = [y for _, y in points if y not in far] + list(keep)
    low, high = min(shown), max(shown)
    pad = 0.08 * (high - low) or 0.5 * (abs(high) or 1)
    bottom = 0 if low == 0 else low - pad  # bars and ratios start at zero
    top = high + pad
    axes.set_ylim(bottom, top)
    clipped = [(x, y) for x, y in points if not bottom <= y <= top]
    for x, y in clipped:
        edge, marker, offset = (top, "^", -11) if y > top else (bottom, "v", 4)
        axes.plot([x], [edge], marker=marker, color="black", ms=6, clip_on=False, ls="none")
        axes.annotate(f"{y:.3g}", (x, edge), textcoords="offset points", xytext=(5, offset), fontsize=7)
    return clipped
