"""The zoo's command lines given bad input: each ends with a non-zero status and one line naming the
file or argument and what was expected, never a traceback."""

import subprocess
import sys

import pytest
import torch

from flexops.models import cresmd, data
from flexops.models import train as training
from flexops.models.flexir import __main__ as flexir_command


def run_module(*args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def refused(result, *phrases):
    """The command failed with status 2 and one error line holding every phrase."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A CResMD checkpoint, its damaged and truncated copies, a photo and a text file named .png."""
    folder = tmp_path_factory.mktemp("files")
    network = dict(nf=4, nb=1)
    state = training.run_state(0, {"model": "cresmd", "network": network}, model=cresmd.CResMD(**network))
    training.save_checkpoint(folder / "cresmd.pt", state)
    content = (folder / "cresmd.pt").read_bytes()
    damaged = bytearray(content)
    start = content.index(b"\x80\x02", content.index(b"data.pkl")) + 2  # the pickled structure's first bytes
    damaged[start:start + 40] = b"X" * 40
    (folder / "damaged.pt").write_bytes(bytes(damaged))
    (folder / "truncated.pt").write_bytes(content[: len(content) // 2])
    data.save_image(torch.rand(3, 16, 16), folder / "photo.png")
    (folder / "text").mkdir()
    (folder / "text" / "notes.png").write_text("not an image\n")
    return folder


def restore(files, checkpoint, *extra):
    return run_module("flexops.models.tasnet", "restore", "--checkpoint", str(files / checkpoint), "--image",
                      str(files / "photo.png"), "--out", str(files / "out"), *extra, cwd=files)


@pytest.mark.parametrize("checkpoint", ["damaged.pt", "truncated.pt"])
def test_an_unreadable_checkpoint_is_named(files, checkpoint):
    line = refused(restore(files, checkpoint), checkpoint, "cannot be read", "damaged, truncated")
    assert "weights_only" not in line


def test_a_checkpoint_of_another_network_is_named(files):
    refused(restore(files, "cresmd.pt"), "cresmd.pt", "holds a 'cresmd' network, not a 'tasnet' one")


def test_task_values_outside_the_unit_interval_are_refused(files):
    refused(restore(files, "cresmd.pt", "--task", "2", "0", "0"), "--task", "lie in [0, 1]", "got 2")


def test_a_file_that_is_no_image_is_named(files):
    result = run_module("flexops.models.cresmd", "train", "--data", str(files / "text"), cwd=files)
    refused(result, "notes.png", "is not a readable image", "PNG or JPEG")


def test_a_run_that_does_not_fit_in_memory_is_refused_before_it_starts(files):
    result = run_module("flexops.models.cresmd", "train", "--batch-size", "1000000", "--nf", "4", "--nb", "1",
                        "--patch-size", "32", "--steps", "1", "--checkpoint", "big.pt", cwd=files)
    refused(result, "CResMD needs about", "GB of memory", "a batch of 1000000 32x32 patches",
            "lower the batch size (at most")
    assert not (files / "big.pt").exists()


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        flexir_command.main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "per process (default: 8)" in shown and "training patch side (default: 128)" in shown
    assert "(default: None)" not in shown
