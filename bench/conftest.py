"""pytest wiring of the benchmark harness (harness.py): each bench module's tables are printed as soon
as its last benchmark has run, and `--report DIR` writes them with plots and raw numbers."""

import sys

import harness


def pytest_addoption(parser):
    parser.addoption("--paper-sizes", action="store_true",
                     help="also run the papers' image sizes (HD/2K/4K for TASNet): much longer, see bench/README.md")
    parser.addoption("--report", metavar="DIR",
                     help="write DIR/report.md with every table, DIR/report.json with the numbers, and PNG plots")


def pytest_report_header(config):
    lines = ["flexops benchmarks on " + ", ".join(f"{k}: {v}" for k, v in harness.machine().items())]
    if config.getoption("--paper-sizes"):
        # Estimated from the default run (about 12 minutes) scaled by pixels and batch.
        lines.append("--paper-sizes: TASNet at HD/2K/4K, FlexIR at 128x128 and 256x256, the IR-NAS search step at "
                     "batch 12 and 64x64 (about 21 GB of memory), tunable networks at p = 2..6: roughly 3-4 hours on "
                     "2 CPU cores (TASNet at 4K alone about 2)")
    return lines


def pytest_runtest_setup(item):
    harness.current_module = item.module.__name__


_finished = []  # tables whose module has just run its last benchmark


def pytest_runtest_teardown(item, nextitem):
    if nextitem is None or nextitem.module is not item.module:
        _finished.extend(harness.tables_of_module.get(item.module.__name__, []))


def pytest_runtest_logreport(report):
    # Printed here rather than at teardown, where pytest captures the output.
    if report.when == "teardown" and _finished:
        reporter = pytest_runtest_logreport.config.pluginmanager.get_plugin("terminalreporter")
        for title in _finished:
            reporter.write_line("")
            harness.print_table(title, reporter.write_line, reporter.write_sep)
        _finished.clear()


def pytest_configure(config):
    pytest_runtest_logreport.config = config


def pytest_terminal_summary(terminalreporter, config):
    directory = config.getoption("--report")
    if directory and harness.tables:
        path = harness.write_report(directory, " ".join(["pytest", *sys.argv[1:]]))
        terminalreporter.write_line(f"report: {path}")
