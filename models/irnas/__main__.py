"""python -m flexops.models.irnas {search,train} [options] (see --help)."""

from flexops.models import cli
from flexops.models import train as training
from flexops.models.irnas.network import ILLUSTRATIVE_GENOTYPE, ILLUSTRATIVE_PATH
from flexops.models.irnas.search import SIGMAS, search, train


def _search_options(command):
    command.add_argument("--layers", type=int, default=4, help="supernet layers L")
    command.add_argument("--nodes", type=int, default=5, help="nodes per cell N")
    command.add_argument("--width", type=int, default=10, help="channels per node at the lowest width W")
    command.add_argument("--sigma", type=float, nargs="+", default=list(SIGMAS), help="noise levels")
    command.add_argument("--warmup", type=int, help="weights-only steps (default 20 %% of --steps)")
    command.add_argument("--arch-lr", type=float, default=1e-3, help="Adam learning rate of alpha, beta")
    command.add_argument("--eval-every", type=int, default=1000, help="steps between evaluations")


def _train_options(command):
    command.add_argument("--search", help="a search checkpoint whose best genotype and path to train "
                         "(default: the illustrative genotype, path 0 1 2 2, W 10, N 5)")
    command.add_argument("--sigma", type=float, nargs="+", default=[30.0], help="noise level(s)")


def _search(args):
    if args.workers:
        raise ValueError("--workers: the search reads its patches in the main process; leave it at 0")
    result = search(training.images(args.data), steps=args.steps, warmup=args.warmup, patch_size=args.patch_size,
                    batch_size=args.batch_size, sigma=args.sigma, layers=args.layers, nodes=args.nodes,
                    width=args.width, lr=args.lr, arch_lr=args.arch_lr, eval_every=args.eval_every, seed=args.seed,
                    checkpoint=args.checkpoint, save_every=args.save_every, progress=not args.no_progress,
                    precision=args.precision)
    training.say(f"best at step {result.step}: PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}")
    training.say(f"genotype: {result.genotype}")
    training.say(f"path: {result.path}")


def _train(args):
    network = dict(genotype=ILLUSTRATIVE_GENOTYPE, path=ILLUSTRATIVE_PATH, width=10, nodes=5)
    if args.search is not None:
        state = training.load_checkpoint(args.search)
        if state["config"].get("model") != "irnas_supernet" or state.get("best") is None:
            raise ValueError(f"{args.search!r} is not an IR-NAS search checkpoint with an evaluated genotype")
        best, supernet = state["best"], state["config"]["network"]
        network = dict(genotype=best["genotype"], path=best["path"], width=supernet["width"], nodes=supernet["nodes"])
    train(training.images(args.data), sigma=args.sigma, patch_size=args.patch_size, seed=args.seed, **network,
          **training.training_options(args))


def main(argv=None):
    cli.main("python -m flexops.models.irnas", "IR-NAS: search a cell and width path, train the result", {
        "search": cli.Command("search the supernet (gray denoising)", _search, _search_options,
                              dict(batch_size=12, lr=0.025, lr_help="SGD learning rate of the weights (cosine)")),
        "train": cli.Command("train the derived network (gray denoising)", _train, _train_options,
                             dict(batch_size=12, lr=1e-3)),
    }, argv)


if __name__ == "__main__":
    main()
