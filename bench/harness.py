"""Benchmark harness: a candidate and its baselines are timed in interleaved rounds (in a new random
order each round) in the same run, and results are printed as tables at the end of the session (see conftest.py).

pytest-benchmark's own statistics are those of one round (every function once); the tables give
each function's best round and the ratios. Nothing here asserts a time: benchmarks measure.
"""

import collections
import json
import os
import pathlib
import platform
import random
import subprocess
import sys
import textwrap
import time

import torch

MIN_ROUNDS, MAX_ROUNDS, TARGET_SECONDS, SLOW_ROUND_SECONDS = 5, 50, 1.5, 5.0

Cell = collections.namedtuple("Cell", "text value target met")
Cell.__doc__ = """A table cell: its text, the number behind it (None if none), the paper's value or the goal
beside it (text, or None) and whether it meets that goal (True / False, None: no verdict)."""

tables = collections.defaultdict(dict)  # title -> {(row, column): Cell}
notes = {}  # title -> text printed under the table
tables_of_module = collections.defaultdict(list)  # bench module -> titles of the tables it fills
current_module = None  # set by conftest.py before each benchmark
plots = []  # (file name, draw function) registered with @plot


def _time_round(fns, best, rng):
    # A new order every round: a fixed one can favour a position (the function timed after the one
    # that evicted the caches, or after the clock settled) by a few percent.
    order = list(fns.items())
    rng.shuffle(order)
    for name, fn in order:
        start = time.perf_counter()
        fn()
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)


def compare(benchmark, fns, grad=False, min_rounds=None, seconds=TARGET_SECONDS):
    """Best-round seconds of each function in `fns` ({name: fn}), timed in interleaved rounds.

    Without `grad` the functions run under inference_mode, as a deployed network would. `min_rounds`
    overrides the least number of rounds (whole networks get 2, anything else MIN_ROUNDS); beyond it,
    rounds continue for about `seconds` in all (at most MAX_ROUNDS).
    """
    with torch.inference_mode(not grad):
        for fn in fns.values():  # warm-up: first-call allocations, oneDNN primitive caches
            fn()
        best = {}
        rng = random.Random(0)
        start = time.perf_counter()
        _time_round(fns, best, rng)
        per_round = time.perf_counter() - start
        # Whole networks take seconds a round: fewer rounds keep the main job within its time.
        least = min_rounds or (MIN_ROUNDS if per_round < SLOW_ROUND_SECONDS else 2)
        rounds = int(min(MAX_ROUNDS, max(least, seconds / per_round)))
        benchmark.pedantic(_time_round, args=(fns, best, rng), rounds=rounds, iterations=1)
    benchmark.extra_info.update({f"{name}_best_ms": round(1e3 * t, 3) for name, t in best.items()})
    return best


_FIRST_CALLS = textwrap.dedent("""
    import importlib.util, json, pathlib, sys, time, torch
    path, factory, args, name, grad, calls = json.loads(sys.argv[1])
    sys.path.insert(0, str(pathlib.Path(path).parent))  # the bench directory, for `harness`
    spec = importlib.util.spec_from_file_location("bench_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory)(*args)[name]
    seconds = []
    with torch.inference_mode(not grad):
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
    print(json.dumps(seconds))
""")


def first_calls(module_file, factory, args, names, grad=False, calls=4):
    """What a user's script sees: {name: (seconds of the first call, best seconds of the `calls` - 1
    after it)}, each function timed in a new process of its own, so that none warms memory or caches
    for another.

    `factory(*args)`, a function of the bench module `module_file`, builds {name: fn} in that process;
    args must be JSON values. Without `grad` the calls run under inference_mode, as in `compare`.
    """
    result = {}
    module_file = pathlib.Path(module_file).resolve()
    for name in names:
        job = json.dumps([str(module_file), factory, list(args), name, grad, calls])
        # Started in the bench directory: from the repository root, `python -c` would import the source
        # tree's flexops/ (without the zoo, which installs as flexops.models) instead of the installed one.
        done = subprocess.run([sys.executable, "-c", _FIRST_CALLS, job], capture_output=True, text=True, timeout=1800,
                              cwd=module_file.parent)
        if done.returncode != 0:
            raise RuntimeError(f"first calls of {name} in a new process failed:\n{done.stderr}")
        seconds = json.loads(done.stdout.strip().splitlines()[-1])
        result[name] = (seconds[0], min(seconds[1:]))
    return result


def record_first_calls(table, row, fresh):
    """Fills a "<name> fresh ms" cell per function of `first_calls`' result: "first / next" ms."""
    for name, (first, following) in fresh.items():
        record(table, row, f"{name.split()[0]} fresh ms", f"{1e3 * first:.0f} / {1e3 * following:.1f}", 1e3 * following)


def record(table, row, column, text, value=None, target=None, met=None):
    """Fills a cell: `text` as printed, `value` the number for report.json and plots, `target` the
    paper's value or the goal printed beside it, `met` whether the cell meets it."""
    tables[table][(row, column)] = Cell(text, value, target, met)
    if current_module is not None and table not in tables_of_module[current_module]:
        tables_of_module[current_module].append(table)


def plot(file_name):
    """Decorator registering `draw(figure)` to draw report plot `file_name` (PNG) from `tables`; it
    returns False when the tables it needs were not measured in this run."""

    def register(draw):
        plots.append((file_name, draw))
        return draw

    return register


def cell_text(cell):
    verdict = {True: " met", False: " MISSED", None: ""}[cell.met]
    return cell.text + (f" ({cell.target}{verdict})" if cell.target is not None else verdict)


def machine():
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}


def note(table, text):
    notes[table] = text


def table_lines(title):
    """The table as aligned text lines, its note last."""
    cells = tables[title]
    rows = list(dict.fromkeys(r for r, _ in cells))
    columns = list(dict.fromkeys(c for _, c in cells))
    texts = {key: cell_text(cell) for key, cell in cells.items()}
    width = max(len(str(x)) for x in columns + list(texts.values())) + 2
    head = max(len(str(r)) for r in rows) + 2
    lines = [" " * head + "".join(f"{str(c):>{width}}" for c in columns)]
    for row in rows:
        lines.append(f"{str(row):<{head}}" + "".join(f"{texts.get((row, c), ''):>{width}}" for c in columns))
    if title in notes:
        lines.append(notes[title])
    return lines


def print_table(title, write_line, write_sep):
    write_sep("=", title)
    for line in table_lines(title):
        write_line(line)


def print_tables(write_line, write_sep):
    for title in tables:
        print_table(title, write_line, write_sep)


def markdown_table(title):
    cells = tables[title]
    rows = list(dict.fromkeys(r for r, _ in cells))
    columns = list(dict.fromkeys(c for _, c in cells))
    lines = ["| | " + " | ".join(map(str, columns)) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(cell_text(cells[(row, c)]) if (row, c) in cells else "" for c in columns)
                     + " |")
    return lines


def write_report(directory, command):
    """report.md (every table, the machine, the plots), report.json (every cell's number, target and
    verdict) and the registered plots as PNG files in `directory`. Returns the report's path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = machine()
    drawn = _draw_plots(directory)
    lines = ["# flexops benchmark report", "", f"`{command}`", "",
             ", ".join(f"{k}: {v}" for k, v in info.items()), ""]
    for title in tables:
        lines += [f"## {title}", "", *markdown_table(title), ""]
        if title in notes:
            lines += [notes[title], ""]
    for name in drawn:
        lines += [f"![{name}]({name})", ""]
    (directory / "report.md").write_text("\n".join(lines))
    results = {title: [{"row": str(r), "column": str(c), **cell._asdict()} for (r, c), cell in cells.items()]
               for title, cells in tables.items()}
    (directory / "report.json").write_text(json.dumps({"machine": info, "command": command, "notes": notes,
                                                       "tables": results}, indent=1))
    return directory / "report.md"


def _draw_plots(directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    for name, draw in plots:
        figure = plt.figure(figsize=(7, 4.5))
        try:
            if draw(figure) is not False:
                figure.tight_layout()
                figure.savefig(directory / name, dpi=110)
                drawn.append(name)
        finally:
            plt.close(figure)
    return drawn
