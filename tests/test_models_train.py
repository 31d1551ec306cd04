"""The zoo's shared training loop: resumable checkpoints (also after Ctrl-C), failures that keep the
last good checkpoint, per-rank data, two gloo processes under torchrun, and the command lines."""

import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch

from flexops import backends
from flexops.models import cresmd, data
from flexops.models import train as training
from flexops.ops import ArgumentError


def tiny_run(checkpoint, steps, loss_fn=cresmd.l1_loss, config=None, precision="fp32"):
    torch.manual_seed(0)
    model = cresmd.CResMD(nf=4, nb=1)
    images = [image[:, :64, :64] for image in data.sample_images()[:2]]
    dataset = data.RestorationPairs(images, patch_size=16, seed=3)
    return training.train(model, loss_fn, dataset, steps=steps, batch_size=2, checkpoint=checkpoint, save_every=2,
                          milestones=[3], config=config, progress=False, precision=precision)


def interrupt_at(step):
    def loss(model, batch, current):
        if current == step:
            raise KeyboardInterrupt
        return cresmd.l1_loss(model, batch)

    return loss


BF16 = pytest.param("bf16", marks=pytest.mark.skipif(
    torch.bfloat16 not in backends.DTYPES["cpu"], reason="flexops' CPU ops do not take bfloat16 in this build"))


@pytest.mark.parametrize("precision", ["fp32", BF16])
def test_interrupted_run_saves_and_resumes_to_the_uninterrupted_weights(tmp_path, precision):
    straight = tiny_run(tmp_path / "straight.pt", 5, precision=precision)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path / "resumed.pt", 5, loss_fn=interrupt_at(3), precision=precision)
    assert training.load_checkpoint(tmp_path / "resumed.pt")["step"] == 3
    resumed = tiny_run(tmp_path / "resumed.pt", 5, precision=precision)
    state = training.load_checkpoint(tmp_path / "resumed.pt")
    assert state["step"] == 5 and state["precision"] == precision
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.skipif(torch.bfloat16 not in backends.DTYPES["cpu"],
                    reason="flexops' CPU ops do not take bfloat16 in this build")
def test_bf16_on_a_cpu_without_bf16_arithmetic_warns(monkeypatch):
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    training._warn_emulated_bf16.cache_clear()  # said once per process: an earlier bf16 run may have said it
    with pytest.warns(UserWarning, match="no bfloat16 arithmetic .* use fp32 for speed"):
        training.autocast("bf16", torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.autocast("bf16", torch.device("cpu"))  # once per process, not at every training step
        monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
        training._warn_emulated_bf16.cache_clear()
        training.autocast("bf16", torch.device("cpu"))


def test_bf16_training_runs_its_forward_in_bf16_and_keeps_fp32_weights():
    seen = []

    def loss(model, batch, step):
        seen.append(model.conv_first(batch[0]).dtype)  # the network's output: fp32 (its input added back)
        return cresmd.l1_loss(model, batch)

    torch.manual_seed(0)
    initial = cresmd.CResMD(nf=4, nb=1).state_dict()
    trained = tiny_run(None, 2, loss_fn=loss, precision="bf16")
    assert seen == [torch.bfloat16] * 3  # the memory probe's forward, then two steps
    for (name, a), b in zip(trained.state_dict().items(), initial.values()):
        assert a.dtype == b.dtype, name
    assert not torch.equal(trained.conv_first.weight, initial["conv_first.weight"])


def test_precision_errors(tmp_path):
    with pytest.raises(ArgumentError, match="fp16 needs a CUDA device .* use bf16"):
        tiny_run(None, 1, precision="fp16")
    with pytest.raises(ArgumentError, match="precision must be one of fp32, bf16, fp16; got 'fp8'"):
        tiny_run(None, 1, precision="fp8")
    tiny_run(tmp_path / "run.pt", 2)
    with pytest.raises(ArgumentError, match="was trained in fp32, not bf16: resume with precision fp32"):
        tiny_run(tmp_path / "run.pt", 4, precision="bf16")


def test_a_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    tiny_run(tmp_path / "run.pt", 2)

    def nan_loss(model, batch, step):
        return cresmd.l1_loss(model, batch) * float("nan")

    with pytest.raises(FloatingPointError, match="the checkpoint keeps step 2"):
        tiny_run(tmp_path / "run.pt", 4, loss_fn=nan_loss)
    assert training.load_checkpoint(tmp_path / "run.pt")["step"] == 2


def test_resuming_with_other_settings_is_refused(tmp_path):
    tiny_run(tmp_path / "run.pt", 2, config={"nf": 4})
    with pytest.raises(ValueError, match="was made with"):
        tiny_run(tmp_path / "run.pt", 4, config={"nf": 8})


def test_load_model_rebuilds_from_the_registry(tmp_path):
    model = cresmd.train(steps=1, patch_size=16, batch_size=1, nf=4, nb=1, checkpoint=tmp_path / "c.pt",
                         progress=False)
    loaded = training.load_model(tmp_path / "c.pt")
    assert isinstance(loaded, cresmd.CResMD) and loaded.nf == 4
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        training.load_checkpoint(tmp_path / "missing.pt")


def test_training_says_where_it_saved_and_keeps_what_resuming_needs(tmp_path, capsys):
    tiny_run(tmp_path / "run.pt", 3)
    assert f"saved step 3 to {tmp_path / 'run.pt'}" in capsys.readouterr().out
    state = training.load_checkpoint(tmp_path / "run.pt")
    # The weights, Adam's two moments per weight and the schedule: no second copy of the network.
    assert set(state) == {"format", "step", "config", "precision", "model", "optimizer", "scheduler"}
    weights = sum(t.numel() for t in state["model"].values())
    slots = state["optimizer"]["state"].values()
    moments = sum(t.numel() for slot in slots for name, t in slot.items() if name != "step")
    assert moments == 2 * weights


def test_say_prints_on_the_first_process_only(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    training.say("result")
    monkeypatch.setenv("RANK", "0")
    training.say("result")
    assert capsys.readouterr().out == "result\n"


def test_a_run_that_would_not_fit_is_refused_before_its_first_step(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "available_memory", lambda device: 1024)
    with pytest.raises(ArgumentError, match=r"train needs about .* MB of memory \(.* MB of activations for a batch "
                                             r"of 2 16x16 patches, .*\) but 0.0 MB is available: lower the patch size"):
        tiny_run(tmp_path / "run.pt", 3)
    assert not (tmp_path / "run.pt").exists()


def test_damaged_checkpoints_raise_one_clear_error(tmp_path):
    tiny_run(tmp_path / "run.pt", 1)
    content = (tmp_path / "run.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(content[:1000])
    with pytest.raises(ArgumentError, match=r"checkpoint '.*cut.pt' cannot be read .* damaged, truncated"):
        training.load_checkpoint(tmp_path / "cut.pt")


def test_each_rank_reads_its_own_samples():
    single = list(training._StepSampler(1000, 4, 0, 3, rank=0, world=1))
    ranks = [list(training._StepSampler(1000, 2, 0, 3, rank=r, world=2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(single)
    assert list(training._StepSampler(1000, 2, 1, 3, rank=1, world=2)) == ranks[1][2:]  # resumed at step 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DISTRIBUTED_SCRIPT = """
import sys
import warnings
import torch, torch.distributed as dist
from flexops.models import cresmd
from flexops.models import train as training
checkpoint, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = cresmd.train(steps=steps, patch_size=16, batch_size=2, nf=4, nb=1, checkpoint=checkpoint, save_every=2,
                     progress=False)
torch.save(model.state_dict(), f"{out}/rank{dist.get_rank()}.pt")
training.say("finished")
"""


def run_distributed(tmp_path, steps):
    script = tmp_path / "ddp.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(script), str(tmp_path / "ddp.pt"), str(steps), str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Rank 0 alone says where it saved and prints results.
    assert result.stdout.count(f"saved step {steps} to") == 1 and result.stdout.count("finished") == 1, result.stdout
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def test_two_gloo_processes_keep_identical_weights_and_resume(tmp_path):
    first = run_distributed(tmp_path, 3)
    assert all(torch.equal(first[0][k], first[1][k]) for k in first[0])
    state = training.load_checkpoint(tmp_path / "ddp.pt")
    assert state["step"] == 3
    assert all(torch.equal(state["model"][k], first[0][k]) for k in first[0])
    second = run_distributed(tmp_path, 5)
    assert training.load_checkpoint(tmp_path / "ddp.pt")["step"] == 5
    assert all(torch.equal(second[0][k], second[1][k]) for k in second[0])
    assert not all(torch.equal(first[0][k], second[0][k]) for k in first[0])


def run_module(*args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_command_lines(tmp_path):
    missing = run_module("flexops.models.cresmd", "train", "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "image folder not found" in missing.stderr
    small = tmp_path / "small"
    small.mkdir()
    data.save_image(torch.rand(3, 20, 20), small / "a.png")
    too_small = run_module("flexops.models.cresmd", "train", "--data", str(small), cwd=tmp_path)
    assert too_small.returncode == 2 and "smaller than the patch size 64x64" in too_small.stderr
    fp16 = run_module("flexops.models.cresmd", "train", "--precision", "fp16", cwd=tmp_path)
    assert fp16.returncode == 2 and "use bf16 for mixed precision on a CPU" in fp16.stderr

    searched = run_module("flexops.models.tasnet", "search", "--steps", "2", "--batch-size", "2", "--patch-size", "16",
                          "--nf", "4", "--nb", "1", "--checkpoint", "s.pt", "--no-progress", cwd=tmp_path)
    assert searched.returncode == 0, searched.stderr
    data.save_image(torch.rand(3, 21, 18), tmp_path / "photo.png")
    restored = run_module("flexops.models.tasnet", "restore", "--checkpoint", "s.pt", "--image", "photo.png",
                          "--out", "out", "--task", "0.5", "0", "0", "--task", "0", "1", "0.2", cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert "photo.png is 18x21 (width x height): restoring its top-left 18x20" in restored.stdout
    outputs = sorted((tmp_path / "out").iterdir())
    assert len(outputs) == 2 and data.load_image(outputs[0]).shape == (3, 20, 18)
