"""Benchmark harness: a candidate and its baselines are timed in interleaved rounds (in a new random
order each round) in the same run, and results are printed as tables at the end of the session (see conftest.py).

pytest-benchmark's own statistics are those of one round (every function once); the tables give
each function's best round and the ratios. Nothing here asserts a time: benchmarks measure.
"""

import collections
import random
import time

import torch

MIN_ROUNDS, MAX_ROUNDS, TARGET_SECONDS = 5, 50, 1.5

tables = collections.defaultdict(dict)  # title -> {(row, column): text}
notes = {}  # title -> text printed under the table


def _time_round(fns, best, rng):
    # A new order every round: a fixed one can favour a position (the function timed after the one
    # that evicted the caches, or after the clock settled) by a few percent.
    order = list(fns.items())
    rng.shuffle(order)
    for name, fn in order:
        start = time.perf_counter()
        fn()
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)


def compare(benchmark, fns, grad=False):
    """Best-round seconds of each function in `fns` ({name: fn}), timed in interleaved rounds.

    Without `grad` the functions run under inference_mode, as a deployed network would.
    """
    with torch.inference_mode(not grad):
        for fn in fns.values():  # warm-up: first-call allocations, oneDNN primitive caches
            fn()
        best = {}
        rng = random.Random(0)
        start = time.perf_counter()
        _time_round(fns, best, rng)
        per_round = time.perf_counter() - start
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, TARGET_SECONDS / per_round)))
        benchmark.pedantic(_time_round, args=(fns, best, rng), rounds=rounds, iterations=1)
    benchmark.extra_info.update({f"{name}_best_ms": round(1e3 * t, 3) for name, t in best.items()})
    return best


def record(table, row, column, text):
    tables[table][(row, column)] = text


def note(table, text):
    notes[table] = text


def print_tables(write_line, write_sep):
    for title, cells in tables.items():
        rows = list(dict.fromkeys(r for r, _ in cells))
        columns = list(dict.fromkeys(c for _, c in cells))
        width = max(len(str(x)) for x in columns + list(cells.values())) + 2
        head = max(len(str(r)) for r in rows) + 2
        write_sep("=", title)
        write_line(" " * head + "".join(f"{str(c):>{width}}" for c in columns))
        for row in rows:
            write_line(f"{str(row):<{head}}" + "".join(f"{cells.get((row, c), ''):>{width}}" for c in columns))
        if title in notes:
            write_line(notes[title])
