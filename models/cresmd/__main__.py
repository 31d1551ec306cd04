"""python -m flexops.models.cresmd train [options]: trains CResMD (see --help)."""

from flexops.models import train as training
from flexops.models.cresmd import train


def main(argv=None):
    parser = training.parser("python -m flexops.models.cresmd", "CResMD: train on folder images or the sample photos")
    commands = parser.add_subparsers(dest="command", required=True)
    command = training.command(commands, "train", "train CResMD (l1, absolute ground truth)")
    training.add_arguments(command)
    command.add_argument("--nf", type=int, default=64, help="feature channels")
    command.add_argument("--nb", type=int, default=32, help="residual blocks")
    args = parser.parse_args(argv)
    training.run_command(parser, lambda: train(training.images(args.data), patch_size=args.patch_size, nf=args.nf,
                                               nb=args.nb, seed=args.seed, **training.training_options(args)))


if __name__ == "__main__":
    main()
