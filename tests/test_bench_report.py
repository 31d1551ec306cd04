"""The benchmark harness's report: tables with targets and verdicts, report.md, report.json, PNG plots,
and the bench command line (--report, --paper-sizes) on one small benchmark."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def harness():
    spec = importlib.util.spec_from_file_location("harness_under_test", BENCH / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_files_from_a_fake_result_set(harness, tmp_path):
    harness.record("speed", "small", "ms", "1.5", 1.5)
    harness.record("speed", "small", "speed-up", "9.0x", 9.0, ">= 8x", True)
    harness.record("speed", "large", "speed-up", "3.0x", 3.0, ">= 8x", False)
    harness.note("speed", "a note")

    @harness.plot("speed.png")
    def draw(figure):
        axes = figure.add_subplot()
        cells = harness.tables["speed"]
        axes.bar([0, 1], [cells[("small", "speed-up")].value, cells[("large", "speed-up")].value])

    @harness.plot("missing.png")
    def draw_nothing(figure):
        return False

    report = harness.write_report(tmp_path, "pytest bench/")
    text = report.read_text()
    assert "| small | 1.5 | 9.0x (>= 8x met) |" in text and "| large |  | 3.0x (>= 8x MISSED) |" in text
    assert "a note" in text and "![speed.png](speed.png)" in text and "missing.png" not in text
    numbers = json.loads((tmp_path / "report.json").read_text())
    assert {"row": "large", "column": "speed-up", "text": "3.0x", "value": 3.0, "target": ">= 8x", "met": False} in \
        numbers["tables"]["speed"]
    assert numbers["machine"]["cores"] >= 1
    from PIL import Image

    with Image.open(tmp_path / "speed.png") as image:
        assert image.size[0] > 100
    assert not (tmp_path / "missing.png").exists()


def test_table_text_marks_targets(harness):
    harness.record("t", "r", "c", "5%", 5, "paper <5%", None)
    harness.record("t", "r", "d", "7%", 7, "<5%", False)
    harness.record("t", "s", "c", "4%", 4)
    harness.record("t", "s", "d", "3%", 3, "<5%", True)
    lines = harness.table_lines("t")
    # A target every cell of a column shares moves into the column's header; others stay in the cell.
    assert "d (<5%)" in lines[0] and "5% (paper <5%)" in lines[1] and "7% MISSED" in lines[1] and "3% met" in lines[2]


def test_console_tables_fit_the_width_and_wrap_notes_at_words(harness):
    for column in range(12):
        harness.record("wide", "a row with a long name", f"column {column}", f"{column}.0x (paper {column}.5x)", column)
    harness.note("wide", " ".join(["word"] * 80))
    lines = harness.table_lines("wide", width=120)
    assert max(map(len, lines)) <= 120 and sum("a row with a long name" in line for line in lines) >= 2
    note_lines = lines[-3:]
    assert all(line.split() and set(line.split()) == {"word"} for line in note_lines)


def test_rounds_stop_once_best_of_has_settled(harness):
    still_improving = [{"f": 1.00}, {"f": 0.95}, {"f": 0.90}]
    assert not harness.settled(still_improving)
    steady = still_improving + [{"f": 0.899}, {"f": 0.898}]
    assert harness.settled(steady)
    twins_apart = [{"f": 1.0, "f again": 1.1}] * 3
    assert harness.settled(twins_apart) and not harness.settled(twins_apart, twins=("f", "f again"))
    # Slow rounds settle over one round: a second round that did not beat the first by SETTLED.
    slow = [{"f": 10.0}, {"f": 9.95}]
    assert harness.settled(slow, patience=1) and not harness.settled(slow)
    assert not harness.settled([{"f": 10.0}, {"f": 9.0}], patience=1)


def test_verdict_summary_of_a_fake_result_set(harness, tmp_path):
    table = "overhead"
    harness.record(table, "steady", "noise", "+0.5%", 0.5)
    harness.record(table, "steady", "p=2", "+2.0%", 2.0, "<= 5%", True)
    harness.record(table, "shaky", "noise", "+7.8%", 7.8)
    harness.record(table, "shaky", "p=2", "+6.7%", 6.7, "<= 5%", False)  # 1.7 beyond its goal, noise 7.8
    harness.record(table, "shaky", "p=4", "+1.0%", 1.0, "<= 5%", True)
    harness.record("speed", "fast", "speed-up", "9.0x", 9.0, ">= 8x (goal 10x)", True)
    assert harness.verdicts(table) == (2, 1, [("shaky", 7.8, pytest.approx(1.7))])
    assert harness.verdicts("speed") == (1, 0, [])
    harness.unsettled.append("test_fake.py::test_busy")
    text = harness.write_report(tmp_path, "pytest bench/", {"test_fake.py": 75.0}).read_text()
    summary = text[text.index("## Summary"):text.index(f"## {table}")]
    assert f"| {table} | 2 | 1 | shaky: noise +7.8 > margin 1.7 |" in summary
    assert "| speed | 1 | 0 |  |" in summary
    assert "Missed:\n- overhead: shaky / p=2 +6.7% (<= 5%)" in summary
    assert "load average" in summary and "test_fake.py 1 min 15 s" in summary
    assert "Not settled" in summary and "test_fake.py::test_busy" in summary
    # The date is the run's start, as in the console header.
    assert harness.machine()["date"] in text.splitlines()[4]
    console = harness.console_summary()
    assert console[0].startswith("  2 met   1 missed, 1 row(s) within noise  overhead")


def test_summary_warns_of_a_busy_machine(harness, monkeypatch):
    harness.record("speed", "fast", "speed-up", "9.0x", 9.0, ">= 8x", True)
    monkeypatch.setattr(harness.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    harness.session["load at start"] = (0.1, 0.1, 0.1)
    assert not any("BUSY" in line for line in harness.summary_lines() + harness.console_summary())
    harness.session["load at start"] = (6.0, 5.0, 4.0)  # other work running when the benchmarks began
    assert "BUSY MACHINE" in harness.summary_lines()[0] and "BUSY MACHINE" in harness.console_summary()[-1]


def test_plot_outliers_are_clipped_and_marked(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = importlib.util.spec_from_file_location("plots_under_test", BENCH / "plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    values = [3.1, 4.0, 2.2, 5.3, 1246.0, 3.8, 2.9, 4.4]
    figure = plt.figure()
    axes = figure.add_subplot()
    axes.plot(range(len(values)), values)
    clipped = plots.robust_ylim(axes, list(enumerate(values)), keep=(0, 20))
    bottom, top = axes.get_ylim()
    assert clipped == [(4, 1246.0)] and bottom == 0 and 20 <= top < 30
    assert any(text.get_text() == "1.25e+03" for text in axes.texts)  # the outlier's value on the edge
    assert plots.outliers([1.0, 2.0, 1000.0]) == []  # too few values to call any an outlier
    plt.close(figure)


def test_a_small_benchmark_with_report_and_the_options(tmp_path):
    command = [sys.executable, "-m", "pytest", str(BENCH / "test_masked_conv2d.py"), "--benchmark-only",
               "-p", "no:cacheprovider", "-k", "M1 and d100", "--report", str(tmp_path), "--paper-sizes"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "masked conv 64->64" in done.stdout  # the table, printed when its module finished
    assert "Name (time in" not in done.stdout  # pytest-benchmark's own table is switched off
    assert "verdicts (cells meeting / missing their goal" in done.stdout and "per module (min:s)" in done.stdout
    assert "flexops benchmarks on cpu:" in done.stdout
    assert "--paper-sizes: TASNet at HD/2K/4K" in done.stdout and "hours" in done.stdout  # said up front
    report = (tmp_path / "report.md").read_text()
    assert "masked conv 64->64" in report
    assert json.loads((tmp_path / "report.json").read_text())["tables"]


@pytest.mark.skipif(not pathlib.Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc")
def test_first_calls_report_the_peak_of_the_first_call(harness, tmp_path):
    # The factory builds a 16 MB buffer before the first call (not counted); the first call fills a new
    # 64 MB one and frees it, so the peak rises by about 64 MB while the resident size ends where it began.
    module = tmp_path / "bench_peak.py"
    module.write_text(
        "import torch\n"
        "def functions(megabytes):\n"
        "    built = torch.ones(megabytes // 4 * 2**20 // 4)\n"
        "    return {'fill': lambda: torch.ones(megabytes * 2**20 // 4).sum() + built[0]}\n"
    )
    fresh = harness.first_calls(module, "functions", [64], ["fill"], calls=2)["fill"]
    assert fresh.first > 0 and fresh.following > 0
    assert 60 * 2**20 <= fresh.peak_bytes <= 80 * 2**20
