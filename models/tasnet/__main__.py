"""python -m flexops.models.tasnet {search,restore} [options] (see --help)."""

import pathlib

import torch

from flexops.models import checks, cli, data
from flexops.models import train as training
from flexops.models.cresmd.__main__ import network_options
from flexops.models.tasnet.search import LAMBDA_AGREEMENT, LAMBDA_FLOPS, search


def _search_options(command):
    network_options(command, "supernet ")
    command.add_argument("--lambda-flops", type=float, default=LAMBDA_FLOPS, help="lambda1 of R1")
    command.add_argument("--lambda-agreement", type=float, default=LAMBDA_AGREEMENT,
                         help="lambda2 of R2")
    command.add_argument("--tsnet", action="store_true", help="no forced sharing (TSNet)")


def _restore_options(command):
    command.add_argument("--checkpoint", type=pathlib.Path, required=True, help="a search checkpoint")
    command.add_argument("--image", type=pathlib.Path, required=True, help="PNG/JPEG to restore")
    command.add_argument("--out", type=pathlib.Path, required=True, help="folder for the restored PNGs")
    command.add_argument("--task", type=checks.unit_interval, nargs=3, action="append",
                         metavar=("BLUR", "NOISE", "JPEG"),
                         help="a task vector in [0, 1]^3 (repeatable; default: CResMD's 27-task grid)")
    training.add_precision(command, "bf16 or fp16 (CUDA only): restore under autocast (fp32 weights)")


def _search(args):
    model = search(training.images(args.data), patch_size=args.patch_size, nf=args.nf, nb=args.nb,
                   lambda_flops=args.lambda_flops, lambda_agreement=args.lambda_agreement, share=not args.tsnet,
                   seed=args.seed, **training.training_options(args))
    shared = int(model.shared.long().cumprod(0).sum())
    training.say(f"searched: {shared} of {model.num_maps} maps shared")


def _restore(args):
    model = training.load_model(args.checkpoint, "tasnet")
    deploy = model.deploy()
    image = data.load_image(args.image)
    height, width = image.shape[1] - image.shape[1] % 2, image.shape[2] - image.shape[2] % 2
    if (height, width) != tuple(image.shape[1:]):
        training.say(f"{args.image} is {image.shape[2]}x{image.shape[1]} (width x height): restoring its top-left "
                     f"{width}x{height} (the network needs even sides)")
    tasks = torch.tensor(args.task) if args.task else data.CRESMD_27_TASKS
    with torch.inference_mode(), training.autocast(args.precision, image.device):
        restored = deploy(image[None, :, :height, :width], tasks).float()
    args.out.mkdir(parents=True, exist_ok=True)
    for task, output in zip(tasks.tolist(), restored):
        name = "_".join(f"{v:.3f}" for v in task)
        data.save_image(output, args.out / f"{args.image.stem}_t{name}.png")
    ratio = deploy.macs(height, width, tasks) / (len(tasks) * model.supernet.macs(height, width))
    training.say(f"{len(tasks)} outputs in {args.out}; {100 * ratio:.2f} % of CResMD's MACs per inference")


def main(argv=None):
    cli.main("python -m flexops.models.tasnet", "TASNet: search, and restore with the searched net", {
        "search": cli.Command("search TASNet (supernet + controller, relative ground truth)", _search,
                              _search_options, {}),
        "restore": cli.Command("restore an image at the 27 tasks of CResMD's grid, or given ones", _restore,
                               _restore_options),
    }, argv)


if __name__ == "__main__":
    main()
