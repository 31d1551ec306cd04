"""python -m flexops.models.flexir train [options]: trains FlexIR by progressive self-distillation
from a SwinIR teacher (an official checkpoint, or random weights for a smoke run); see --help."""

from flexops.models import cli
from flexops.models import train as training
from flexops.models.flexir.distill import train
from flexops.models.swinir import SwinIR, load_official


def _train_options(command):
    command.add_argument("--teacher", help="official SwinIR checkpoint (.pth) of the configuration below")
    command.add_argument("--sigma", type=float, default=25.0, help="Gaussian noise level, 0-255 scale")
    command.add_argument("--embed-dim", type=int, default=180, help="SwinIR width")
    command.add_argument("--blocks", type=int, default=6, help="B-RSTBs")
    command.add_argument("--depth", type=int, default=6, help="Swin blocks per B-RSTB")
    command.add_argument("--heads", type=int, default=6, help="attention heads")
    command.add_argument("--window-size", type=int, default=8, help="attention window")
    command.add_argument("--shared-tail", action="store_true", help="one exit tail shared by all blocks")


def _train(args):
    network = dict(img_size=128, window_size=args.window_size, depths=[args.depth] * args.blocks,
                   embed_dim=args.embed_dim, num_heads=[args.heads] * args.blocks, mlp_ratio=2, upsampler="",
                   upscale=1, resi_connection="1conv")
    teacher = load_official(SwinIR(**network), args.teacher) if args.teacher else None
    train(teacher, training.images(args.data), network=network, sigma=args.sigma, shared_tail=args.shared_tail,
          patch_size=args.patch_size, seed=args.seed, **training.training_options(args))


def main(argv=None):
    cli.main("python -m flexops.models.flexir", "FlexIR: distil a SwinIR into exits",
             {"train": cli.Command("progressive self-distillation (Algorithm 1)", _train, _train_options,
                                   dict(patch_size=128, batch_size=8, lr=1e-5))}, argv)


if __name__ == "__main__":
    main()
