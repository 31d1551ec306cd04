"""pytest wiring of the benchmark harness (harness.py): tables are printed after the run."""

import harness


def pytest_terminal_summary(terminalreporter):
    harness.print_tables(terminalreporter.write_line, terminalreporter.write_sep)
