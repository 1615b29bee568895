"""``python -m zoo checkpoint convert OLD NEW``: a checkpoint written by an older zoo, rewritten so that it loads
weights-only (the hyperparameters, data position and random state as plain data; see :mod:`zoo.training.convert`).

Converting unpickles OLD in full, which runs any code the file names: it is refused unless you say you trust the
file with ``--i-trust-this-file`` (your own runs' checkpoints from an older zoo). NEW then loads everywhere without
``--trust-checkpoint``; OLD is left as it is. Example::

    python -m zoo checkpoint convert runs/old/lightning_logs/version_0/checkpoints/last.ckpt last-converted.ckpt \
        --i-trust-this-file
"""

from __future__ import annotations

import sys

from zoo.commands.errors import command
from zoo.commands.options import CommandParser, command_parser
from zoo.errors import ZooError
from zoo.training.convert import convert_checkpoint


def parser() -> CommandParser:
    p = command_parser("python -m zoo checkpoint", __doc__)
    convert = CommandParser(description=convert_checkpoint.__doc__)
    convert.add_function_arguments(convert_checkpoint, as_group=False, as_positional=True)
    convert.add_argument("--i_trust_this_file", type=bool, default=False,
                         help="unpickle OLD in full, which imports and calls whatever Python objects it names (runs "
                         "code): required, and only for a file you trust")  # fmt: skip
    p.add_subcommands(required=True, dest="action").add_subcommand(
        "convert", convert, help="rewrite an older, trusted checkpoint so that it loads weights-only"
    )
    return p


@command("checkpoint")
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv).convert
    if not args.i_trust_this_file:
        raise ZooError(f"converting {args.old} unpickles it in full, which imports and calls every Python object the "
                       "file names and so can run any code; nothing was read. If the file is yours (a checkpoint of "
                       "an older zoo), pass --i-trust-this-file")  # fmt: skip
    print(f"unpickling {args.old} in full (--i-trust-this-file: the objects it names are imported and called)",
          file=sys.stderr)  # fmt: skip
    changes = convert_checkpoint(args.old, args.new)  # errors: one line, by zoo.commands.errors.run_command
    for change in changes:
        print(f"  {change}")
    print(f"wrote {args.new} ({len(changes)} entries made plain); it loads weights-only")
