"""pytest wiring of the benchmark harness (harness.py): a progress line at least every 30 seconds
while a benchmark runs, each bench module's tables printed as soon as its last benchmark has run, the
verdicts and the time per module at the end, and `--report DIR` writes the tables with a summary,
plots and raw numbers. pytest-benchmark's own table is switched off: the project's tables replace it."""

import os
import sys
import textwrap
import threading
import time

import pytest

import harness

PROGRESS_SECONDS = 25  # between progress lines (checked every second): at most 30 s without one
WIDTH = 120  # console columns the tables and progress lines fit in


def pytest_addoption(parser):
    parser.addoption("--paper-sizes", action="store_true",
                     help="also run the papers' image sizes (HD/2K/4K for TASNet): much longer, see bench/README.md")
    parser.addoption("--report", metavar="DIR",
                     help="write DIR/report.md with a verdict summary and every table, DIR/report.json with the "
                          "numbers, and PNG plots")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Before pytest-benchmark reads it: its table of every benchmark (one round of a whole measurement
    # here, in nanoseconds) says nothing the project's tables do not; --benchmark-only still runs them.
    config.option.benchmark_quiet = True
    _state["config"] = config
    # pytest captures file descriptors 1 and 2 while a test runs (pytest's own lines are written
    # between tests): a copy of the terminal's descriptor, taken now, reaches it during a benchmark.
    _state["terminal"] = open(os.dup(sys.stdout.fileno()), "w", buffering=1)
    threading.Thread(target=_progress_lines, daemon=True, name="bench progress").start()


def pytest_report_header(config):
    lines = ["flexops benchmarks on " + ", ".join(f"{k}: {v}" for k, v in harness.machine().items())]
    if config.getoption("--paper-sizes"):
        # Estimated from the default run scaled by pixels and batch.
        lines.append("--paper-sizes: TASNet at HD/2K/4K, FlexIR at 128x128 and 256x256, the IR-NAS search step at "
                     "batch 12 and 64x64 (about 21 GB of memory), tunable networks at p = 2..6: roughly 3-4 hours on "
                     "2 CPU cores (TASNet at 4K alone about 2)")
    return lines


# The terminal is written by pytest (main thread) and by the progress thread: one at a time.
_terminal = threading.Lock()
_state = {"config": None, "terminal": None, "test": None, "module start": None, "last line": time.time()}
_module_seconds = {}  # bench module file -> seconds from its first benchmark's setup to its last's teardown
_finished = []  # tables whose module has just run its last benchmark


def _write_line(text):
    """`text` on a line of its own on the terminal, also while pytest captures a benchmark's output."""
    reporter = _state["config"].pluginmanager.get_plugin("terminalreporter")
    reporter.flush()
    if reporter.currentfspath:  # pytest's line of dots: end it, and have pytest name the module again after
        text = "\n" + text
        reporter.currentfspath = None
    _state["terminal"].write(text + "\n")
    _state["terminal"].flush()


def _progress_lines():
    while True:
        time.sleep(1)
        with _terminal:
            now = time.time()
            if _state["test"] is None or now - _state["last line"] < PROGRESS_SECONDS:
                continue
            minutes, seconds = divmod(round(now - _state["module start"]), 60)
            text = f"  [{minutes}:{seconds:02d} in module] {_state['test']}: {harness.doing or 'setting up'}"
            _write_line(textwrap.shorten(text, WIDTH, placeholder=" ..."))
            _state["last line"] = now


def pytest_runtest_setup(item):
    with _terminal:
        if harness.current_module != item.module.__name__:
            _state["module start"] = _state["last line"] = time.time()
        harness.current_module = item.module.__name__
        harness.current_test = item.nodeid.rsplit("/", 1)[-1]
        _state["test"] = item.name  # its module is named in pytest's line above the progress lines


def pytest_runtest_teardown(item, nextitem):
    with _terminal:
        _state["test"] = None
        if nextitem is None or nextitem.module is not item.module:
            _module_seconds[item.nodeid.split("::")[0].rsplit("/", 1)[-1]] = time.time() - _state["module start"]
            _finished.extend(harness.tables_of_module.get(item.module.__name__, []))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_logstart(nodeid, location):
    with _terminal:  # pytest writes the module's name here
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_logreport(report):
    with _terminal:  # pytest writes the test's dot here, and the finished module's tables are printed
        result = yield
        # Printed here rather than at teardown, where pytest captures the output.
        if report.when == "teardown" and _finished:
            reporter = _state["config"].pluginmanager.get_plugin("terminalreporter")
            for title in _finished:
                reporter.write_line("")
                harness.print_table(title, reporter.write_line, reporter.write_sep)
            reporter.flush()
            _finished.clear()
        return result


def pytest_terminal_summary(terminalreporter, config):
    if not harness.tables:
        return
    terminalreporter.write_sep("=", "verdicts (cells meeting / missing their goal, per table)")
    for line in harness.console_summary(WIDTH):
        terminalreporter.write_line(line)
    times = ", ".join("{} {}:{:02}".format(m, *divmod(round(s), 60)) for m, s in _module_seconds.items())
    for line in textwrap.wrap(f"run {harness.run_line()}; per module (min:s): {times}", WIDTH):
        terminalreporter.write_line(line)
    directory = config.getoption("--report")
    if directory:
        path = harness.write_report(directory, " ".join(["pytest", *sys.argv[1:]]), _module_seconds)
        terminalreporter.write_line(f"report: {path}")
