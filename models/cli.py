"""The zoo's command lines, built one way: `python -m flexops.models.<method> <command> [options]`.

A method's __main__.py names its commands, each a `Command` (its help, the options of its own and
what it runs); `main` builds the parser (defaults shown in --help), adds the training options
(flexops.models.train.add_arguments) to the commands that train, and runs the chosen command so
that a bad file or setting ends with one line and status 2, never a traceback.
"""

from typing import Callable, NamedTuple

from flexops.models import train as training


class Command(NamedTuple):
    """One subcommand: `help` (its --help line), `run(args)` (what it does with the parsed arguments),
    `options(parser)` (adds its own options; None: it has none) and `training` (None: no training
    options; a dict: the defaults flexops.models.train.add_arguments takes, e.g. {"lr": 1e-4})."""

    help: str
    run: Callable
    options: Callable | None = None
    training: dict | None = None


def main(prog, description, commands, argv=None):
    """Parses `argv` (default: sys.argv) for `prog` with the subcommands `commands` ({name: Command})
    and runs the one chosen."""
    parser = training.parser(prog, description)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in commands.items():
        subparser = training.command(subparsers, name, command.help)
        if command.training is not None:
            training.add_arguments(subparser, **command.training)
        if command.options is not None:
            command.options(subparser)
    args = parser.parse_args(argv)
    training.run_command(parser, lambda: commands[args.command].run(args))
