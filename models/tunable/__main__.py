"""python -m flexops.models.tunable train [options]: trains a tunable network (see --help)."""

from flexops.models import cli, data
from flexops.models import train as training
from flexops.models.tunable.train import EXPERIMENTS, NETWORKS, train


def _train_options(command):
    command.add_argument("--experiment", choices=list(EXPERIMENTS), default="denoise",
                         help="denoise: reconstruction vs noise preservation; joint: denoise + deblur; "
                              "sr: x4 reconstruction vs GAN (VGG + RaGAN); style: 3 styles")
    command.add_argument("--network", choices=list(NETWORKS), default="edsr", help="the network to train")
    command.add_argument("--blocks", type=int, help="residual blocks of the ResNet (default 16)")
    command.add_argument("--features", type=int, help="channels of the ResNet (default 64)")
    command.add_argument("--per-step", action="store_true", help="one omega per step instead of one per image")
    command.add_argument("--style", nargs="+", help="the 3 style images of --experiment style")
    command.add_argument("--vgg-weights", help="VGG-19 weights file (default: torch.hub's cache; never downloaded)")


def _train(args):
    kwargs = {}
    if args.network == "edsr":
        kwargs = {k: v for k, v in (("n_resblocks", args.blocks), ("n_feats", args.features)) if v is not None}
    styles = [data.load_image(path) for path in args.style] if args.style else None
    train(args.experiment, args.network, training.images(args.data), network_kwargs=kwargs,
          patch_size=args.patch_size, per_sample=not args.per_step, style_images=styles,
          vgg_weights=args.vgg_weights, seed=args.seed, **training.training_options(args))


def main(argv=None):
    cli.main("python -m flexops.models.tunable",
             "Tunable Convolutions: train a tunable network with the parametric multi-loss",
             {"train": cli.Command("train on folder images or the sample photos", _train, _train_options,
                                   dict(lr=1e-4))}, argv)


if __name__ == "__main__":
    main()
