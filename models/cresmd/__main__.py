"""python -m flexops.models.cresmd train [options]: trains CResMD (see --help)."""

from flexops.models import cli
from flexops.models import train as training
from flexops.models.cresmd.train import train


def network_options(command, of=""):
    """CResMD's size: --nf and --nb (`of` names the network in their help, e.g. "supernet ")."""
    command.add_argument("--nf", type=int, default=64, help=f"{of}feature channels")
    command.add_argument("--nb", type=int, default=32, help=f"{of}residual blocks")


def _train(args):
    train(training.images(args.data), patch_size=args.patch_size, nf=args.nf, nb=args.nb, seed=args.seed,
          **training.training_options(args))


def main(argv=None):
    cli.main("python -m flexops.models.cresmd", "CResMD: train on folder images or the sample photos",
             {"train": cli.Command("train CResMD (l1, absolute ground truth)", _train, network_options, {})}, argv)


if __name__ == "__main__":
    main()
