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
    lines = harness.table_lines("t")
    assert "5% (paper <5%)" in lines[1] and "7% (<5% MISSED)" in lines[1]


def test_a_small_benchmark_with_report_and_the_options(tmp_path):
    command = [sys.executable, "-m", "pytest", str(BENCH / "test_masked_conv2d.py"), "--benchmark-only",
               "-p", "no:cacheprovider", "-k", "M1 and d100", "--report", str(tmp_path), "--paper-sizes"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "masked conv 64->64" in done.stdout  # the table, printed when its module finished
    assert "flexops benchmarks on cpu:" in done.stdout
    assert "--paper-sizes: TASNet at HD/2K/4K" in done.stdout and "hours" in done.stdout  # said up front
    report = (tmp_path / "report.md").read_text()
    assert "masked conv 64->64" in report
    assert json.loads((tmp_path / "report.json").read_text())["tables"]
