"""The zoo's training loop, shared by every method's train and search entry points.

`train(model, loss_fn, dataset, steps=...)` runs Adam with a step-decay schedule, shows a progress bar
with the loss and the speed, saves a checkpoint every `save_every` steps and at the end, and resumes
from it when it exists. A checkpoint is written to a temporary file and then renamed over the old one,
so a crash or Ctrl-C while saving never leaves a broken or missing checkpoint; Ctrl-C saves the steps
done so far before it stops. The end of a run (and Ctrl-C) says where it saved and what the file
holds. Before its first step a run whose memory need (gradients, optimiser state and the activations
of the batch, measured on one sample) exceeds the memory available is refused with what to lower.

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
import copy
import functools
import math
import os
import pathlib
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from flexops.models import data
from flexops.models.registry import create
from flexops.nn import dense
from flexops.ops import ArgumentError

CHECKPOINT_FORMAT = 1

# Training precisions: the dtype autocast runs the forward in (None: float32, no autocast). The weights,
# the optimiser and the checkpoints stay float32 in every one.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def read_torch_file(path, what="checkpoint"):
    """What torch.save wrote to `path` (tensors and plain containers only: weights_only), on the CPU. A
    missing file is a FileNotFoundError, a damaged one an ArgumentError that says so in one line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    with open(path, "rb") as file:  # a file that cannot be opened keeps its own error
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # torch and pickle raise many kinds for a damaged file: one message for all
            reason = str(error).split(". ")[0].splitlines()[0] if str(error) else type(error).__name__
            raise ArgumentError(f"{what} {str(path)!r} cannot be read ({reason}): it is damaged, truncated or not "
                                "a file of tensors saved by torch.save; save it again or give another file") from None


def load_checkpoint(path, model=None):
    """The state saved by `train` at `path`; with `model`, also loads its weights into it (strict)."""
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ArgumentError(f"{str(path)!r} is not a flexops zoo checkpoint (format {CHECKPOINT_FORMAT})")
    if model is not None:
        model.load_state_dict(state["model"])
    return state


def checkpoint_contents(state):
    """One line on what a saved checkpoint holds: its size, the network's weights and the rest (the
    optimiser's state, which resuming needs: Adam keeps two moments per weight)."""
    def size(value):
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(size(v) for v in value)
        return 0

    weights = size(state["model"])
    rest = size(state) - weights
    return f"{megabytes(weights + rest)}: weights {megabytes(weights)}, optimiser state for resuming {megabytes(rest)}"


def megabytes(size):
    """A size in bytes, in MB (for messages)."""
    return f"{size / 2**20:.1f} MB"


def memory_size(size):
    """A memory size in GB, or in MB below 1 GB."""
    return f"{size / 2**30:.1f} GB" if size >= 2**30 else megabytes(size)


def say(*args):
    """print on the first process only (rank 0 under torchrun), so that a result shows once."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, flush=True)


def run_state(step, config, precision="fp32", **stateful):
    """A run's checkpoint: format, step, settings, the training precision and the state_dict of each
    `name=object` under its name."""
    return {"format": CHECKPOINT_FORMAT, "step": step, "config": config, "precision": precision,
            **{name: obj.state_dict() for name, obj in stateful.items()}}


def resume(checkpoint, config, precision="fp32", **stateful):
    """The state saved at `checkpoint` by a run with `config` at `precision`, loaded into each
    `name=object` (model, optimisers, schedulers, as `run_state` saved them); None when there is no
    checkpoint yet. A checkpoint of other settings or another precision is refused (ValueError);
    checkpoints from before precisions were stored are fp32."""
    if checkpoint is None or not pathlib.Path(checkpoint).is_file():
        return None
    state = load_checkpoint(checkpoint)
    if state["config"] != config:
        raise ValueError(f"checkpoint {str(checkpoint)!r} was made with {state['config']}, not {config}: "
                         "resume with the same settings or save to another path")
    saved = state.get("precision", "fp32")
    if saved != precision:
        raise ArgumentError(f"checkpoint {str(checkpoint)!r} was trained in {saved}, not {precision}: resume with "
                            f"precision {saved} or save to another path")
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    return state


def load_model(path, name=None):
    """The zoo network saved in checkpoint `path` by a zoo entry point, rebuilt from the registry
    name and settings stored with it, its weights loaded, in eval mode. With `name` (a registry
    name), a checkpoint of another network is refused (ArgumentError)."""
    state = load_checkpoint(path)
    config = state["config"]
    if "model" not in config:
        raise ArgumentError(f"checkpoint {str(path)!r} does not say which zoo network it holds")
    if name is not None and config["model"] != name:
        raise ArgumentError(f"checkpoint {str(path)!r} holds a {config['model']!r} network, not a {name!r} one")
    model = create(config["model"], **config.get("network", {}))
    model.load_state_dict(state["model"])
    return model.eval()


# A training step's peak memory (the growth of the process's resident size) over the tensors autograd
# saves for its backward: the backward's gradients of the activations, the kernels' scratch and the
# allocator's slack come on top. Measured on CPU: 5.4 to 5.9 times for the convolutional networks
# (CResMD, TunableNAFNet), 3.6 for FlexIR's transformer; the larger bound, so that a run that starts
# is not killed for memory later (FlexIR's estimate is then 1.7 times its need).
ACTIVATION_PEAK = 6.0


def available_memory(device):
    """Bytes still free for this process: the GPU's free memory, or MemAvailable of /proc/meminfo
    (None where there is no such file: no check)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def saved_bytes(run, parameters=()):
    """Bytes of the tensors autograd saves for the backward of `run()`, each storage once, the storages
    of `parameters` (which exist anyway) left out; counted through saved-tensor hooks, not kept."""
    storages = {}
    kept = {p.untyped_storage().data_ptr() for p in parameters}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in kept:
            storages[storage.data_ptr()] = storage.nbytes()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda packed: None):
        run()
    return sum(storages.values())


def check_memory(model, loss_fn, sample, batch_size, step, device, optimizer_slots=2, what="training"):
    """Refuses (ArgumentError) a run whose steps would not fit the memory left: gradients and
    `optimizer_slots` state tensors per weight (Adam 2, SGD with momentum 1), and `batch_size` times
    the activations that one `sample` (a dataset item) takes through `loss_fn` at `step` (through a
    copy of the model, so that running statistics do not move; the random streams are restored).
    Under torchrun the ranks on one machine share its memory (CPU)."""
    available = available_memory(device)
    if available is None:
        return
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    fixed = weights * (1 + optimizer_slots)
    probe = copy.deepcopy(model).train()
    batch = [item[None].to(device) for item in sample]
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        per_sample = ACTIVATION_PEAK * saved_bytes(lambda: loss_fn(probe, batch, step), probe.parameters())
    del probe
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    need = ranks * (fixed + per_sample * batch_size)
    if need <= available:
        return
    fits = int((available / ranks - fixed) // per_sample)
    lower = (f"lower the batch size (at most {fits} fits) or the patch size" if fits >= 1
             else "lower the patch size (a batch of 1 does not fit)")
    raise ArgumentError(
        f"{what} needs about {memory_size(need)} of memory ({memory_size(per_sample * batch_size)} of activations "
        f"for a batch of {batch_size} {'x'.join(map(str, sample[0].shape[-2:]))} patches, {memory_size(fixed)} of "
        f"gradients and optimiser state{f', times {ranks} processes' if ranks > 1 else ''}) but "
        f"{memory_size(available)} is available: {lower}")


def cpu_has_bf16():
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX, as oneDNN sees it)."""
    return dense.NATIVE_ON_CPU[torch.bfloat16]


@functools.cache
def _warn_emulated_bf16():
    """Once per process: a run asks for bf16 where the CPU would emulate it."""
    warnings.warn("this CPU has no bfloat16 arithmetic (AVX-512 BF16 or AMX): flexops' kernels and the zoo's "
                  "Linear and Conv2d layers compute bf16 in float32 here (PyTorch's would emulate it, several "
                  "times slower), so bf16 saves memory but not time; use fp32 for speed")


def autocast(precision, device):
    """The context a forward runs in at `precision` (one of PRECISIONS) on `device`: torch.autocast to
    its dtype, nothing for fp32. fp16 needs CUDA (whose gradient scaler keeps small gradients from
    vanishing in training); on a CPU bf16 is the mixed precision."""
    if precision not in PRECISIONS:
        raise ArgumentError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ArgumentError(f"precision fp16 needs a CUDA device (this run is on {device.type}): "
                            "use bf16 for mixed precision on a CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        _warn_emulated_bf16()
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class Precision:
    """A run's training precision (one of PRECISIONS) on `device`: the autocast its losses run under
    and, for fp16, the gradient scaler, whose loss scale a checkpoint keeps (`stateful`)."""

    def __init__(self, precision, device):
        autocast(precision, device)  # refuses what cannot run here before anything else
        self.name, self.device = precision, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self):
        """The context a forward and its loss run in."""
        return autocast(self.name, self.device)

    def stateful(self):
        """{name: object} of what a checkpoint keeps beside the weights: fp16's scaler."""
        return {"scaler": self.scaler} if self.scaler.is_enabled() else {}

    def descend(self, loss, optimizer):
        """loss.backward() and optimizer.step(), through the scaler for fp16 (which skips a step whose
        gradients overflowed and lowers its scale)."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def train(model, loss_fn, dataset, *, steps, batch_size=16, lr=5e-4, betas=(0.9, 0.99), milestones=None,
          gamma=0.5, checkpoint=None, save_every=1000, config=None, num_workers=0, progress=True,
          description="train", find_unused_parameters=False, companions=None, precision="fp32"):
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
        precision: "fp32", "bf16" or "fp16" (CUDA only): the losses run under autocast to that dtype,
            with a gradient scaler for fp16; weights and checkpoints stay float32. The checkpoint stores
            it, and a run resumes only in the precision it was made in (so it resumes bit-identically).

    Returns the trained model (unwrapped, on its device), in eval mode. Raises ArgumentError before the
    first step when the run would not fit in memory (`check_memory`).

    Example: `train(net, lambda model, batch, step: F.l1_loss(model(batch[0]), batch[1]),
    data.NoisyPairs(data.sample_images()), steps=1000, checkpoint="net.pt")`.
    """
    if steps < 0 or batch_size < 1 or save_every < 1:
        raise ValueError(f"steps >= 0, batch_size >= 1, save_every >= 1 expected; got {steps}, {batch_size}, {save_every}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    rank, world, device = _distributed()
    precision = Precision(precision, device)
    model.to(device).train()
    companions = dict(companions or {})
    for companion in companions.values():
        companion.to(device, distributed=world > 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    if milestones is None:
        milestones = [math.ceil(steps * f) for f in (0.2, 0.4, 0.6, 0.8)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    config = dict(config or {})
    stateful = dict(model=model, optimizer=optimizer, scheduler=scheduler, **companions, **precision.stateful())
    state = resume(checkpoint, config, precision.name, **stateful)
    first = 0 if state is None else state["step"]

    def compute_loss(module, batch, step):
        with precision.autocast():
            return loss_fn(module, batch, step)

    if first < steps:
        # The probe runs the loss, and with it the companions (a discriminator's running statistics):
        # they are put back as they were, so that a resumed run matches an uninterrupted one.
        kept = {name: copy.deepcopy(companion.state_dict()) for name, companion in companions.items()}
        check_memory(model, compute_loss, dataset[0], batch_size, steps - 1, device, what=description)
        for name, companion in companions.items():
            companion.load_state_dict(kept[name])
    if state is not None and rank == 0:
        print(f"{description}: resuming {checkpoint} at step {first} of {steps}", flush=True)
    runner = DistributedDataParallel(model, find_unused_parameters=find_unused_parameters) if world > 1 else model

    def save(step, report=False):
        if checkpoint is not None and rank == 0:
            state = run_state(step, config, precision.name, **stateful)
            save_checkpoint(checkpoint, state)
            if report:
                print(f"{description}: saved step {step} to {checkpoint} ({checkpoint_contents(state)})", flush=True)

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers,
        sampler=_StepSampler(len(dataset), batch_size, first, steps, rank, world),
    )
    bar = progress_bar(progress and rank == 0, first, steps, description)
    step = first
    try:
        for batch in loader:
            batch = [item.to(device, non_blocking=True) for item in batch]
            result = compute_loss(runner, batch, step)
            loss, metrics = result if isinstance(result, tuple) else (result, {})
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss is {loss.item()} at step {step}: stopped without saving (the checkpoint keeps "
                    f"step {_saved_step(checkpoint)}); lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            precision.descend(loss, optimizer)
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
        bar.close()
        save(step, report=True)
        raise
    finally:
        bar.close()
    if step > first:
        save(step, report=True)
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
    parser.add_argument("--steps", type=int, default=steps, help="optimiser steps in all")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    parser.add_argument("--patch-size", type=int, default=patch_size, help="training patch side")
    parser.add_argument("--lr", type=float, default=lr, help=lr_help)
    parser.add_argument("--checkpoint", type=pathlib.Path, help="resume from and save to this file")
    parser.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data stream and the weights")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_precision(parser, "training precision: bf16 or fp16 (CUDA only) run the forward under autocast; weights "
                          "and checkpoints stay fp32")


def add_precision(parser, help):
    """The --precision option (fp32, bf16, fp16) of a training or restoring command."""
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help=help)


def training_options(args):
    """The keyword arguments of `train` given by `add_arguments`' options."""
    return dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, checkpoint=args.checkpoint,
                save_every=args.save_every, num_workers=args.workers, progress=not args.no_progress,
                precision=args.precision)


def images(folder=None):
    """The training images: every PNG/JPEG of `folder`, or the built-in sample photos when None."""
    return data.sample_images() if folder is None else data.load_folder(folder)


def run_command(parser, run):
    """Runs a command-line action; a missing or damaged file, a bad setting, a run that would not fit
    in memory or a diverged loss ends with its one-line message and status 2, Ctrl-C with status 130,
    never a traceback."""
    try:
        run()
    except (OSError, ValueError, FloatingPointError) as error:  # ArgumentError is a ValueError
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default, except where there is none (None, a flag's False) or the
    help says it itself."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser(prog, description):
    """The argument parser of a zoo command line (defaults shown in --help); add its commands with
    `command`."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)


def command(commands, name, help):
    """A subcommand of `commands` (a parser's add_subparsers()) whose --help shows the defaults too."""
    return commands.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
