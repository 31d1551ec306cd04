"""pytest wiring of the benchmark harness (harness.py): tables are printed after the run."""

import harness


def pytest_addoption(parser):
    parser.addoption("--paper-sizes", action="store_true",
                     help="also run the papers' image sizes (HD/2K/4K for TASNet): much longer, see bench/README.md")


def pytest_terminal_summary(terminalreporter):
    harness.print_tables(terminalreporter.write_line, terminalreporter.write_sep)
