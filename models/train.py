"""The zoo's training loop, shared by every method's train and search entry points.

`train(model, loss_fn, dataset, steps=...)` runs Adam with a step-decay schedule, shows a progress bar
with the loss and the speed, saves a checkpoint every `save_every` steps and at the end, and resumes
from it when it exists. A checkpoint is written to a temporary file and then renamed over the old one,
so a crash or Ctrl-C while saving never leaves a broken or missing checkpoint; Ctrl-C saves the steps
done so far before it stops.

Under `torchrun` (WORLD_SIZE > 1) the same call trains with DistributedDataParallel: gloo on CPU,
nccl on GPUs, each rank reading its own samples and rank 0 alone writing checkpoints and printing.
Datasets are indexed by sample number and each item is a function of its index (the zoo's
`data.RestorationPairs` is), so which samples a step reads is fixed by the step number: a resumed run
or another number of ranks sees the same data stream.

    python -m flexops.models.cresmd train --steps 1000 --checkpoint cresmd.pt            # one process
    torchrun --nproc_per_node 2 -m flexops.models.cresmd train --steps 1000 --checkpoint cresmd.pt
"""

import argparse
import contextlib
import math
import os
import pathlib

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

CHECKPOINT_FORMAT = 1


class _StepSampler(torch.utils.data.Sampler):
    """Sample numbers for steps [first, last) of this rank: step s, rank r, slot j reads sample
    (s * world + r) * batch + j, wrapped at the dataset length."""

    def __init__(self, length, batch_size, first, last, rank, world):
        self.length, self.batch_size = length, batch_size
        self.first, self.last, self.rank, self.world = first, last, rank, world

    def __iter__(self):
        for step in range(self.first, self.last):
            start = (step * self.world + self.rank) * self.batch_size
            yield from ((start + j) % self.length for j in range(self.batch_size))

    def __len__(self):
        return (self.last - self.first) * self.batch_size


def _distributed():
    """(rank, world size, device), joining the torchrun process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def save_checkpoint(path, state):
    """Writes `state` to `path` atomically: a temporary file first, then a rename over the old one."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path, model=None):
    """The state saved by `train` at `path`; with `model`, also loads its weights into it (strict)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a flexops zoo checkpoint (format {CHECKPOINT_FORMAT})")
    if model is not None:
        model.load_state_dict(state["model"])
    return state


def run_state(step, config, **stateful):
    """A run's checkpoint: format, step, settings and the state_dict of each `name=object` under its name."""
    return {"format": CHECKPOINT_FORMAT, "step": step, "config": config,
            **{name: obj.state_dict() for name, obj in stateful.items()}}


def resume(checkpoint, config, **stateful):
    """The state saved at `checkpoint` by a run with `config`, loaded into each `name=object` (model,
    optimisers, schedulers, as `run_state` saved them); None when there is no checkpoint yet. A
    checkpoint of other settings is refused (ValueError)."""
    if checkpoint is None or not pathlib.Path(checkpoint).is_file():
        return None
    state = load_checkpoint(checkpoint)
    if state["config"] != config:
        raise ValueError(f"checkpoint {str(checkpoint)!r} was made with {state['config']}, not {config}: "
                         "resume with the same settings or save to another path")
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    return state


def load_model(path):
    """The zoo network saved in checkpoint `path` by a zoo entry point, rebuilt from the registry
    name and settings stored with it, its weights loaded, in eval mode."""
    from flexops.models.registry import create

    state = load_checkpoint(path)
    config = state["config"]
    if "model" not in config:
        raise ValueError(f"checkpoint {str(path)!r} does not say which zoo network it holds")
    model = create(config["model"], **config.get("network", {}))
    model.load_state_dict(state["model"])
    return model.eval()


def train(model, loss_fn, dataset, *, steps, batch_size=16, lr=5e-4, betas=(0.9, 0.99), milestones=None,
          gamma=0.5, checkpoint=None, save_every=1000, config=None, num_workers=0, progress=True,
          description="train", find_unused_parameters=False, companions=None):
    """Trains `model` for `steps` optimiser steps (in all, counting steps of a resumed run).

    Args:
        model: the nn.Module to train (moved to the rank's device).
        loss_fn: `loss_fn(model, batch, step) -> loss` or `(loss, {name: float})`, where model is the module
            to call (the DDP wrapper under torchrun), batch the collated dataset items on the device and
            step the number of optimiser steps done before this one (for schedules inside the loss).
        dataset: a map-style dataset; sample i of step s is a function of i (see the module docstring).
        steps, batch_size (per rank), lr, betas: Adam's settings (CResMD's: 5e-4, (0.9, 0.99), batch 16).
        milestones: steps at which the learning rate is multiplied by `gamma`; default at 20, 40, 60 and
            80 % of `steps`, as CResMD's schedule (200k ... 800k of 1M).
        checkpoint: path of the checkpoint to resume from and save to (None: no checkpoints).
        save_every: steps between checkpoints.
        config: a dict describing the run (network settings); a resumed checkpoint must have been made
            with the same, else a ValueError says what differs.
        num_workers: DataLoader worker processes. progress: show the progress bar (rank 0 only).
        find_unused_parameters: for a model whose steps leave some parameters out (FlexIR's pointer
            schedule runs only the first blocks): DDP then reduces their gradients as zeros.
        companions: {name: companion} trained beside the model, e.g. a GAN's discriminator
            (`tunable.adversarial.RelativisticAdversary`): each has `to(device, distributed)`,
            `after_step() -> {name: float}` (run after every step of the model; its numbers join the
            progress bar) and `state_dict` / `load_state_dict` (saved in the checkpoint under `name`).

    Returns the trained model (unwrapped, on its device), in eval mode.

    Example: `train(net, lambda model, batch, step: F.l1_loss(model(batch[0]), batch[1]),
    data.NoisyPairs(data.sample_images()), steps=1000, checkpoint="net.pt")`.
    """
    if steps < 0 or batch_size < 1 or save_every < 1:
        raise ValueError(f"steps >= 0, batch_size >= 1, save_every >= 1 expected; got {steps}, {batch_size}, {save_every}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    rank, world, device = _distributed()
    model.to(device).train()
    companions = dict(companions or {})
    for companion in companions.values():
        companion.to(device, distributed=world > 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    if milestones is None:
        milestones = [math.ceil(steps * f) for f in (0.2, 0.4, 0.6, 0.8)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    config = dict(config or {})
    state = resume(checkpoint, config, model=model, optimizer=optimizer, scheduler=scheduler, **companions)
    first = 0 if state is None else state["step"]
    runner = DistributedDataParallel(model, find_unused_parameters=find_unused_parameters) if world > 1 else model

    def save(step):
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, run_state(step, config, model=model, optimizer=optimizer, scheduler=scheduler,
                                                  **companions))

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers,
        sampler=_StepSampler(len(dataset), batch_size, first, steps, rank, world),
    )
    bar = progress_bar(progress and rank == 0, first, steps, description)
    step = first
    try:
        for batch in loader:
            batch = [item.to(device, non_blocking=True) for item in batch]
            result = loss_fn(runner, batch, step)
            loss, metrics = result if isinstance(result, tuple) else (result, {})
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss is {loss.item()} at step {step}: stopped without saving (the checkpoint keeps "
                    f"step {_saved_step(checkpoint)}); lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for companion in companions.values():
                metrics.update(companion.after_step())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}",
                            **{k: f"{v:.4g}" for k, v in metrics.items()})
            if step % save_every == 0 and step < steps:
                save(step)
    except KeyboardInterrupt:
        save(step)
        raise
    finally:
        bar.close()
    if step > first:
        save(step)
    if world > 1:
        dist.barrier()
    return model.eval()


def _saved_step(checkpoint):
    if checkpoint is None or not pathlib.Path(checkpoint).is_file():
        return "none"
    return load_checkpoint(checkpoint)["step"]


def progress_bar(enabled, first, steps, description):
    """The zoo's progress bar (tqdm) over `steps` steps, starting at `first`; a no-op one when not
    `enabled`. Use `update(1)`, `set_postfix(...)` and `close()`."""
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=first, desc=description, unit="step", dynamic_ncols=True)


class _NoProgress(contextlib.nullcontext):
    def update(self, n):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def add_arguments(parser, steps=1000, patch_size=64, batch_size=16, lr=5e-4, lr_help="Adam learning rate"):
    """The command-line options every zoo training and search command shares (`lr_help` describes
    --lr, for a command whose optimiser is not Adam)."""
    parser.add_argument("--data", type=pathlib.Path,
                        help="folder of PNG/JPEG training images (default: the built-in sample photos)")
    parser.add_argument("--steps", type=int, default=steps, help="optimiser steps in all (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="per process (default %(default)s)")
    parser.add_argument("--patch-size", type=int, default=patch_size, help="training patch side (default %(default)s)")
    parser.add_argument("--lr", type=float, default=lr, help=f"{lr_help} (default %(default)s)")
    parser.add_argument("--checkpoint", type=pathlib.Path, help="resume from and save to this file")
    parser.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data stream and the weights (default %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def training_options(args):
    """The keyword arguments of `train` given by `add_arguments`' options."""
    return dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, checkpoint=args.checkpoint,
                save_every=args.save_every, num_workers=args.workers, progress=not args.no_progress)


def images(folder=None):
    """The training images: every PNG/JPEG of `folder`, or the built-in sample photos when None."""
    from flexops.models import data

    return data.sample_images() if folder is None else data.load_folder(folder)


def run_command(parser, run):
    """Runs a command-line action; a missing file or a bad setting ends with its message, not a traceback."""
    try:
        run()
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def parser(prog, description):
    """The argument parser of a zoo command line (defaults shown in --help)."""
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
