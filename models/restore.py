"""restore: images through a zoo network or any checkpoint `flexops.models.load` understands, at the
method's control, and a contact sheet across the control's range (`--sweep`).

    python -m flexops.models restore 001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth --input photos/ --output out/
    python -m flexops.models restore run.pt --input noisy.png --output out/ --omega 0.7,0.3 --tile 256
    python -m flexops.models restore cresmd.pt --input photo.png --output out/ --level 1,15,none --sweep

The control of each kind of network: tunable networks `--omega` (p weights, default the first
objective), FlexIR `--pointer` (the exit, default the last) or `--threshold` (adaptive early exit),
CResMD and TASNet `--tasks` (a task vector in [0, 1]) or `--level` (blur radius, noise sigma, JPEG
quality or none). `--sweep` restores each image at five settings across the range (tunable: from the
first objective to the last; FlexIR: every exit; CResMD / TASNet: from no restoration to the given
task) and writes them side by side, each labelled with its setting. `--tile` restores in overlapping
tiles whose overlaps are averaged (the official SwinIR test script's way: no seams).
"""

import pathlib
import sys

import torch

from flexops.models import data, registry, train
from flexops.models.cresmd.network import CResMD
from flexops.models.flexir.network import FlexIR
from flexops.models.load import detect, load
from flexops.models.swinir import run_tiled
from flexops.models.tasnet.network import TASNet
from flexops.models.tunable.core import TunableNetwork
from flexops.ops import ArgumentError

SWEEP_STEPS = 5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_HEIGHT = 14  # pixels above each image of a contact sheet for its label


def numbers(text, name):
    """'0.7,0.3' -> [0.7, 0.3]; a clear error naming the option otherwise."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ArgumentError(f"{name} must be comma-separated numbers, got {text!r}") from None


def level_task(text):
    """'--level radius,sigma,quality' (quality an int or 'none') -> the task vector."""
    parts = text.split(",")
    if len(parts) != 3:
        raise ArgumentError(f"--level must be radius,sigma,quality (e.g. 1,15,none), got {text!r}")
    quality = None if parts[2].strip().lower() == "none" else int(numbers(parts[2], "--level")[0])
    return data.level_to_task(data.Level(*numbers(",".join(parts[:2]), "--level"), quality))


class Control:
    """How to call a network at the settings its options give: `settings` (label, setting) to run,
    one without --sweep, SWEEP_STEPS across the range with it; `call(x, setting)` -> the output."""

    def __init__(self, model, args):
        self._check_options(model, args)
        self.settings, self.call = self._settings(model, args)

    @staticmethod
    def _check_options(model, args):
        """A control option the network does not have is an error, not silently ignored."""
        kinds = ((TunableNetwork, ("omega",)), (FlexIR, ("pointer", "threshold")),
                 ((CResMD, TASNet), ("tasks", "level")))
        allowed = next((options for kind, options in kinds if isinstance(model, kind)), ())
        for option in ("omega", "pointer", "threshold", "tasks", "level"):
            if getattr(args, option) is not None and option not in allowed:
                raise ArgumentError(f"--{option} does not apply to {type(model).__name__} (its control: "
                                    f"{', '.join('--' + o for o in allowed) or 'none'})")
        if args.threshold is not None and (args.sweep or args.pointer is not None):
            raise ArgumentError("--threshold chooses FlexIR's exits itself: it takes neither --pointer nor --sweep")

    @staticmethod
    def _settings(model, args):
        sweep = torch.linspace(0, 1, SWEEP_STEPS).tolist()
        if isinstance(model, TunableNetwork):
            p = model.num_params
            first, last = torch.eye(p)[0], torch.eye(p)[-1]
            chosen = torch.tensor(numbers(args.omega, "--omega")) if args.omega else first
            omegas = [(1 - t) * first + t * last for t in sweep] if args.sweep else [chosen]
            return [("omega=" + ",".join(f"{v:.2f}" for v in o.tolist()), o) for o in omegas], model
        if isinstance(model, FlexIR):
            if args.threshold is not None:
                return [(f"threshold={args.threshold}", args.threshold)], lambda x, t: model.adaptive(x, t)[0]
            pointers = range(1, model.num_blocks + 1) if args.sweep else [args.pointer or model.num_blocks]
            return [(f"pointer={p}", p) for p in pointers], model
        if isinstance(model, (CResMD, TASNet)):
            if args.tasks is None and args.level is None:
                raise ArgumentError(f"{type(model).__name__} restores at a task vector: pass --tasks (e.g. 0,0.3,0) "
                                    "or --level (e.g. 0,15,none)")
            task = level_task(args.level) if args.level else torch.tensor(numbers(args.tasks, "--tasks"))
            tasks = [t * task for t in sweep] if args.sweep else [task]
            run = model if isinstance(model, CResMD) else (lambda x, t: model(x, t).image)
            return [("tasks=" + ",".join(f"{v:.2f}" for v in t.tolist()), t) for t in tasks], run
        if args.sweep:
            raise ArgumentError(f"{type(model).__name__} has no control to sweep")
        return [("", None)], lambda x, setting: model(x)


def build(model_or_checkpoint):
    """A zoo network by registry name (its default settings and initial weights), or `load`'s network
    for a checkpoint path; with a line on what it is."""
    if model_or_checkpoint in registry.list_models() and not pathlib.Path(model_or_checkpoint).exists():
        return registry.create(model_or_checkpoint).eval(), f"{model_or_checkpoint}: untrained weights"
    if not pathlib.Path(model_or_checkpoint).is_file():
        raise FileNotFoundError(f"{model_or_checkpoint!r} is neither a checkpoint file nor a zoo network "
                                f"({', '.join(registry.list_models())})")
    state = train.read_torch_file(model_or_checkpoint, "checkpoint")  # read once, for load and the line
    return load(state), str(detect(state))


def image_files(path):
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no PNG or JPEG files in {str(path)!r}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"input {str(path)!r} does not exist")
    return [path]


def as_input(image, channels):
    """A [3, H, W] RGB image as the network's [1, channels, H, W] input (luma for one channel)."""
    if channels == 1:
        image = (torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1) * image).sum(0, keepdim=True)
    return image.unsqueeze(0)


def tile_multiple(model):
    """The side a tile must be a multiple of: the window (SwinIR, FlexIR), 2 (CResMD, TASNet halve
    and double), else 1."""
    if hasattr(model, "window_size"):
        return model.window_size
    return 2 if isinstance(model, (CResMD, TASNet)) else 1


def contact_sheet(images, labels):
    """Images [C, H, W] side by side, each under its label, as one PIL image."""
    from PIL import Image, ImageDraw

    height, width = images[0].shape[-2:]
    sheet = Image.new("RGB", (width * len(images), height + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(zip(images, labels)):
        array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).expand(3, -1, -1).permute(1, 2, 0).numpy()
        sheet.paste(Image.fromarray(array.copy()), (i * width, LABEL_HEIGHT))
        draw.text((i * width + 2, 1), label, fill="black")
    return sheet


def restore(args):
    """The `restore` command: every input image through the network, written to --output."""
    from tqdm import tqdm

    files = image_files(args.input)
    model, what = build(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    control = Control(model, args)
    channels = getattr(model, "in_chans", getattr(model, "in_nc", 3))
    scale = getattr(model, "scale", 1)
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    print(f"restoring with {what}", file=sys.stderr)
    for path in tqdm(files, desc="restoring", unit="image", disable=args.no_progress):
        x = as_input(data.load_image(path), channels).to(device)
        outputs = []
        with torch.inference_mode(), train.autocast(args.precision, device):
            for _, setting in control.settings:
                setting = setting.to(device) if isinstance(setting, torch.Tensor) else setting

                def run(crop, setting=setting):
                    return control.call(crop, setting)

                if args.tile:
                    y = run_tiled(run, x, args.tile, args.tile_overlap, tile_multiple(model), scale)
                else:
                    y = run(x)
                outputs.append(y[0].float().cpu())
        if args.sweep:
            contact_sheet(outputs, [label for label, _ in control.settings]).save(output / f"{path.stem}_sweep.png")
        else:
            data.save_image(outputs[0], output / f"{path.stem}.png")


def add_options(parser):
    parser.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                        help="a checkpoint file (official, spandrel-style or the zoo's) or a zoo network name")
    parser.add_argument("--input", required=True, help="an image (PNG/JPEG) or a folder of them")
    parser.add_argument("--output", required=True, help="folder for the restored PNGs")
    parser.add_argument("--tile", type=int, help="restore in overlapping tiles of this side (bounded memory)")
    parser.add_argument("--tile-overlap", type=int, default=32, help="pixels tiles overlap (averaged)")
    train.add_precision(parser, "bf16 or fp16 (CUDA only): restore under autocast (fp32 weights)")
    parser.add_argument("--omega", help="tunable networks: the setting, p comma-separated weights")
    parser.add_argument("--pointer", type=int, help="FlexIR: the exit (default: the last block)")
    parser.add_argument("--threshold", type=float, help="FlexIR: adaptive early exit at this threshold")
    parser.add_argument("--tasks", help="CResMD / TASNet: the task vector, comma-separated values in [0, 1]")
    parser.add_argument("--level", help="CResMD / TASNet: blur radius,noise sigma,JPEG quality (or none)")
    parser.add_argument("--sweep", action="store_true",
                        help="write one labelled contact sheet per image across the control's range")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
