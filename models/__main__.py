"""python -m flexops.models restore MODEL_OR_CHECKPOINT --input IMAGE_OR_FOLDER --output DIR [options]:
restores images with a zoo network or a checkpoint (see flexops.models.restore and --help)."""

from flexops.models import restore
from flexops.models import train as training


def main(argv=None):
    parser = training.parser("python -m flexops.models", "the model zoo's commands that are not one method's")
    commands = parser.add_subparsers(dest="command", required=True)
    restore.add_options(training.command(commands, "restore", "restore images with a network or a checkpoint, "
                                                              "at the method's control"))
    args = parser.parse_args(argv)
    training.run_command(parser, lambda: restore.restore(args))


if __name__ == "__main__":
    main()
