"""Benchmark harness: a candidate and its baselines are timed in interleaved rounds (in a new random
order each round) in the same run, until best-of has settled; results are printed as tables when a
bench module has run (see conftest.py) and written to a report with a verdict summary and plots.

pytest-benchmark times the whole measurement once (its own table is switched off); the tables give
each function's best round and the ratios. Nothing here asserts a time: benchmarks measure.
"""

import collections
import json
import os
import pathlib
import platform
import random
import re
import subprocess
import sys
import textwrap
import time

import torch

MIN_ROUNDS, MAX_ROUNDS, TARGET_SECONDS = 3, 50, 1.5
MIN_SECONDS = 0.5  # functions of a millisecond get more than MIN_ROUNDS: their best-of needs more tries
# Settled: over the last PATIENCE rounds no function's best improved by SETTLED or more (and the two
# copies of a function timed twice for the noise column read within NOISE_SETTLED of each other).
PATIENCE, SETTLED, NOISE_SETTLED = 2, 0.01, 0.02
# Rounds of SLOW_ROUND seconds or more (whole networks at seconds a call) settle over one round and stop
# after two: a third round would cost the main job minutes (the IR-NAS search step against
# torchvision's: 27 s a round); the noise column and the report's unsettled list show what that costs.
SLOW_ROUND = 5.0

Cell = collections.namedtuple("Cell", "text value target met")
Cell.__doc__ = """A table cell: its text, the number behind it (None if none), the paper's value or the goal
beside it (text, or None) and whether it meets that goal (True / False, None: no verdict)."""

tables = collections.defaultdict(dict)  # title -> {(row, column): Cell}
notes = {}  # title -> text printed under the table
tables_of_module = collections.defaultdict(list)  # bench module -> titles of the tables it fills
current_module = None  # set by conftest.py before each benchmark
current_test = None  # the benchmark's test id, set by conftest.py
unsettled = []  # test ids whose best-of was still moving when their time ran out (a busy machine)
plots = []  # (file name, draw function) registered with @plot
doing = None  # what is being measured now, for conftest.py's progress lines (None between benchmarks)
session = {"start": time.time(), "load at start": os.getloadavg()}  # the run, for the report's header


def _time_round(fns, best, rng, number):
    global doing
    # A new order every round: a fixed one can favour a position (the function timed after the one
    # that evicted the caches, or after the clock settled) by a few percent.
    order = list(fns.items())
    rng.shuffle(order)
    for name, fn in order:
        doing = f"round {number}, timing {name}; best " + ", ".join(f"{n} {_ms(best[n])}" for n in fns if n in best)
        start = time.perf_counter()
        fn()
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)


def settled(history, twins=None, patience=PATIENCE):
    """Whether best-of has settled: `history` holds each round's {name: best seconds so far}; see
    PATIENCE (or `patience` rounds), SETTLED and NOISE_SETTLED. `twins`: the names of one function
    timed twice, or None."""
    if len(history) <= patience:
        return False
    now, before = history[-1], history[-1 - patience]
    if any(before[name] - best >= SETTLED * best for name, best in now.items()):
        return False
    return twins is None or abs(now[twins[1]] / now[twins[0]] - 1) < NOISE_SETTLED


def compare(benchmark, fns, grad=False, seconds=TARGET_SECONDS, twins=None):
    """Best-round seconds of each function in `fns` ({name: fn}), timed in interleaved rounds.

    Without `grad` the functions run under inference_mode, as a deployed network would. After an
    untimed warm-up round, rounds run until best-of has settled (at least MIN_ROUNDS and MIN_SECONDS;
    see `settled`, with `twins` the names of the function timed twice for a noise column) or for
    `seconds` in all (at most MAX_ROUNDS): a quiet machine stops early, a busy one keeps looking for
    quiet moments. Rounds of SLOW_ROUND seconds or more: two rounds at least, settled over one.
    """
    global doing
    best, history = {}, []
    rng = random.Random(0)

    def measure():
        start = time.perf_counter()
        while True:
            _time_round(fns, best, rng, len(history) + 1)
            history.append(dict(best))
            slow = sum(best.values()) >= SLOW_ROUND
            elapsed, done = time.perf_counter() - start, settled(history, twins, 1 if slow else PATIENCE)
            if len(history) >= MAX_ROUNDS or len(history) >= (2 if slow else MIN_ROUNDS) and (
                    done and elapsed >= MIN_SECONDS or elapsed >= seconds):
                if not done and elapsed >= seconds and current_test not in unsettled:
                    unsettled.append(current_test)
                return

    with torch.inference_mode(not grad):
        for name, fn in fns.items():  # warm-up: first-call allocations, oneDNN primitive caches
            doing = f"warm-up call of {name}"
            fn()
        benchmark.pedantic(measure, rounds=1, iterations=1)
    doing = None
    benchmark.extra_info.update({f"{name}_best_ms": round(1e3 * t, 3) for name, t in best.items()})
    benchmark.extra_info["rounds"] = len(history)
    return best


def _ms(seconds):
    return f"{1e3 * seconds:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


_FIRST_CALLS = textwrap.dedent("""
    import ctypes, importlib.util, json, pathlib, sys, time, torch
    path, factory, args, name, grad, calls, warm = json.loads(sys.argv[1])
    sys.path.insert(0, str(pathlib.Path(path).parent))  # the bench directory, for `harness`
    spec = importlib.util.spec_from_file_location("bench_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fns = getattr(module, factory)(*args)
    fn = fns[name]
    if warm is not None:
        with torch.inference_mode(not grad):
            fns[warm]()


    def kib(field):  # a field of /proc/self/status in KiB
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


    try:  # heap memory freed so far goes back to the OS (glibc), so that it does not absorb the call's growth
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # the peak resident size (VmHWM) restarts from the current one (Linux; writing "5" resets it)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = kib("VmRSS")
    except OSError:
        before = None
    seconds = []
    with torch.inference_mode(not grad):
        for call in range(calls):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
            if call == 0:
                peak = None if before is None else 1024 * (kib("VmHWM") - before)
    print(json.dumps([seconds, peak]))
""")

Fresh = collections.namedtuple("Fresh", "first following peak_bytes")
Fresh.__doc__ = """A function run in a new process: seconds of its first call, best seconds of the calls after
it, and how far its first call raised the process's peak resident memory above the resident memory
before it (heap memory freed before the call returned to the OS first), in bytes (None where the OS
cannot say: Linux only)."""


def first_calls(module_file, factory, args, names, grad=False, calls=4, warm=None):
    """What a user's script sees: {name: Fresh}, each function timed in a new process of its own, so
    that none warms memory or caches for another.

    `factory(*args)`, a function of the bench module `module_file`, builds {name: fn} in that process
    (what it builds there before the first call, such as a network and its input, is not counted in
    the peak); args must be JSON values. Without `grad` the calls run under inference_mode, as in
    `compare`. `warm`: the name of another of its functions, called once before them (not timed or
    counted), e.g. the same network on a small input: the first call's peak is then what its size
    costs, without the library code and caches that any first call maps in.
    """
    result = {}
    module_file = pathlib.Path(module_file).resolve()
    for name in names:
        job = json.dumps([str(module_file), factory, list(args), name, grad, calls, warm])
        # Started in the bench directory: from the repository root, `python -c` would import the source
        # tree's flexops/ (without the zoo, which installs as flexops.models) instead of the installed one.
        done = in_new_process([sys.executable, "-c", _FIRST_CALLS, job], f"{name}: first calls",
                              timeout=1800, cwd=module_file.parent)
        if done.returncode != 0:
            raise RuntimeError(f"first calls of {name} in a new process failed:\n{done.stderr}")
        seconds, peak = json.loads(done.stdout.strip().splitlines()[-1])
        result[name] = Fresh(seconds[0], min(seconds[1:]), peak)
    return result


def in_new_process(command, what, timeout=7200, **options):
    """subprocess.run(command) with its output captured, said in the progress lines as `what`."""
    global doing
    doing = f"{what} in a new process"
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)
    finally:
        doing = None


def record_first_calls(table, row, fresh):
    """Fills a "<name> fresh ms" cell per function of `first_calls`' result: "first / next" ms."""
    for name, calls in fresh.items():
        record(table, row, f"{name.split()[0]} fresh ms", f"{1e3 * calls.first:.0f} / {1e3 * calls.following:.1f}",
               1e3 * calls.following)


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
    """What the numbers were measured on, and when the run started."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(session["start"]))}


def note(table, text):
    notes[table] = text


def _rows_and_columns(cells):
    return list(dict.fromkeys(r for r, _ in cells)), list(dict.fromkeys(c for _, c in cells))


def _console_column(cells, column):
    """(header, {row: text}) of a column on the console: a target shared by every cell of the column
    moves into the header, leaving each cell its text and verdict."""
    column_cells = {r: cell for (r, c), cell in cells.items() if c == column}
    targets = {cell.target for cell in column_cells.values()}
    if len(targets) == 1 and None not in targets:
        verdicts = {True: " met", False: " MISSED", None: ""}
        return f"{column} ({targets.pop()})", {r: cell.text + verdicts[cell.met] for r, cell in column_cells.items()}
    return str(column), {r: cell_text(cell) for r, cell in column_cells.items()}


def table_lines(title, width=120):
    """The table as aligned text lines for the console, its note last: columns that would not fit in
    `width` characters go to further blocks (each repeating the row names), the note is wrapped."""
    cells = tables[title]
    rows, columns = _rows_and_columns(cells)
    shown = [_console_column(cells, c) for c in columns]
    head = max(len(str(r)) for r in rows) + 2
    widths = [max(len(header), *(len(t) for t in texts.values())) + 2 for header, texts in shown]
    blocks, block, used = [], [], head
    for column, column_width in zip(shown, widths):
        if block and used + column_width > width:
            blocks.append(block)
            block, used = [], head
        block.append((column, column_width))
        used += column_width
    blocks.append(block)
    lines = []
    for i, block in enumerate(blocks):
        if i:
            lines.append("")
        lines.append(" " * head + "".join(f"{header:>{w}}" for (header, _), w in block))
        for row in rows:
            lines.append(f"{str(row):<{head}}" + "".join(f"{texts.get(row, ''):>{w}}" for (_, texts), w in block))
    if title in notes:
        lines += textwrap.wrap(notes[title], width)
    return lines


def print_table(title, write_line, write_sep):
    write_sep("=", title)
    for line in table_lines(title):
        write_line(line)


def markdown_table(title):
    cells = tables[title]
    rows, columns = _rows_and_columns(cells)
    lines = ["| | " + " | ".join(map(str, columns)) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        texts = (cell_text(cells[(row, c)]) if (row, c) in cells else "" for c in columns)
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return lines


def bound(target):
    """The number a verdict's target compares with ("<= 15%" -> 15.0, ">= 3x (goal 5x)" -> 3.0)."""
    found = re.search(r"[<>]=?\s*([-+]?\d+(?:\.\d+)?)", target)
    if found is None:
        raise ValueError(f"target must hold a comparison such as '<= 5%' or '>= 8x', got {target!r}")
    return float(found.group(1))


def verdicts(title):
    """(met, missed, noisy) of a table: how many cells meet their goal and miss it, and per row whose
    "noise" column (a function timed against itself) exceeds the margin of a judged cell of the row
    (how far its value lies from the goal), (row, noise, margin): there the verdict is noise's call."""
    cells = tables[title]
    judged = [(r, cell) for (r, _), cell in cells.items() if cell.met is not None]
    noisy = []
    for row in dict.fromkeys(r for r, _ in judged):
        noise = cells.get((row, "noise"))
        if noise is None:
            continue
        margins = [abs(cell.value - bound(cell.target)) for r, cell in judged if r == row and cell.value is not None]
        if margins and abs(noise.value) > min(margins):
            noisy.append((row, noise.value, min(margins)))
    return sum(cell.met for _, cell in judged), sum(not cell.met for _, cell in judged), noisy


def run_line():
    """When the run started, how long it has taken and the load averages at its start and now."""
    minutes, seconds = divmod(round(time.time() - session["start"]), 60)
    load = [" / ".join(f"{x:.2f}" for x in averages) for averages in (session["load at start"], os.getloadavg())]
    return (f"started {machine()['date']}, {minutes} min {seconds} s; load average (1 / 5 / 15 min) {load[0]} at the "
            f"start, {load[1]} at the end (the machine has {os.cpu_count()} cores)")


def busy():
    """Whether other work shared the machine: a 1-minute load average above 1 at the start, or above
    the cores + 1 at the end (the benchmarks themselves keep about one runnable thread per core)."""
    cores = os.cpu_count() or 1
    return session["load at start"][0] > 1 or os.getloadavg()[0] > cores + 1


BUSY = "BUSY MACHINE (see the load averages): times and verdicts are not comparable with a quiet run's"


def summary_lines():
    """The verdict summary: a markdown table of met / missed cells per table, rows whose noise
    exceeds their margin, then every missed cell."""
    lines = ([f"**{BUSY}.**", ""] if busy() else []) + ["| table | met | missed | noise beyond the margin |",
                                                       "|---|---|---|---|"]
    missed = []
    for title, cells in tables.items():
        met, misses, noisy = verdicts(title)
        if met or misses:
            flagged = "; ".join(f"{row}: noise {noise:+.1f} > margin {margin:.1f}" for row, noise, margin in noisy)
            lines.append(f"| {title} | {met} | {misses} | {flagged} |")
        misses = [f"{row} / {column} {cell.text} ({cell.target})" for (row, column), cell in cells.items()
                  if cell.met is False]
        if misses:
            missed.append(f"- {title}: " + "; ".join(misses))
    lines += ["", "Missed:", *missed] if missed else []
    if unsettled:
        lines += ["", "Not settled (best-of still moving when the time limit came; a busy machine): "
                  + ", ".join(unsettled)]
    return lines


def console_summary(width=120):
    """The verdicts per table in one line each (for the end of the console output)."""
    lines = []
    for title in tables:
        met, missed, noisy = verdicts(title)
        if met or missed:
            flag = f", {len(noisy)} row(s) within noise" if noisy else ""
            counts = f"{met:3} met {missed:3} missed{flag}  "
            lines.append(counts + textwrap.shorten(title, width - len(counts), placeholder=" ..."))
    if unsettled:
        lines += textwrap.wrap(f"not settled (read with care): {', '.join(unsettled)}", width)
    if busy():
        lines.append(BUSY)
    return lines


def write_report(directory, command, module_seconds=None):
    """report.md (the verdict summary, the run's duration and load, every table, the plots),
    report.json (every cell's number, target and verdict) and the registered plots as PNG files in
    `directory`; `module_seconds` ({bench module: seconds}) is listed under the summary. Returns the
    report's path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = machine()
    drawn = _draw_plots(directory)
    lines = ["# flexops benchmark report", "", f"`{command}`", "", ", ".join(f"{k}: {v}" for k, v in info.items()),
             "", "## Summary", "", f"Run {run_line()}.", ""]
    if module_seconds:
        lines += ["Time per module: " + ", ".join("{} {} min {} s".format(m, *divmod(round(s), 60))
                                                  for m, s in module_seconds.items()), ""]
    lines += [*summary_lines(), ""]
    for title in tables:
        lines += [f"## {title}", "", *markdown_table(title), ""]
        if title in notes:
            lines += [notes[title], ""]
    for name in drawn:
        lines += [f"![{name}]({name})", ""]
    (directory / "report.md").write_text("\n".join(lines))
    results = {title: [{"row": str(r), "column": str(c), **cell._asdict()} for (r, c), cell in cells.items()]
               for title, cells in tables.items()}
    (directory / "report.json").write_text(json.dumps({"machine": info, "run": run_line(), "command": command,
                                                       "module seconds": module_seconds, "notes": notes,
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
