"""``python -m zoo checkpoint convert OLD NEW``: a checkpoint written by an older zoo, rewritten so that it loads
weights-only (the hyperparameters, data position and random state as plain data; see :mod:`zoo.training.convert`).

Converting unpickles OLD in full, which runs any code the file names: it is refused unless you say you trust the
file with ``--i-trust-this-file`` (your own runs' checkpoints from an older zoo). NEW then loads everywhere without
``--trust-checkpoint``; OLD is left as it is. Example::

    python -m zoo checkpoint convert runs/old/lightning_logs/version_0/checkpoints/last.ckpt last-converted.ckpt \
        --i-trust-this-file
"""

from __future__ import annotations

import argparse
import sys

from zoo.commands.errors import command
from zoo.errors import ZooError
from zoo.training.convert import convert_checkpoint


@command("checkpoint")
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m zoo checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="action", required=True)
    convert = sub.add_parser("convert", help="rewrite an older, trusted checkpoint so that it loads weights-only")
    convert.add_argument("old", help="checkpoint to convert (unpickled in full: only a file you trust)")
    convert.add_argument("new", help="where to write the converted checkpoint")
    convert.add_argument("--i-trust-this-file", action="store_true",
                         help="unpickle OLD in full, which imports and calls whatever Python objects it names (runs "
                         "code): required, and only for a file you trust")  # fmt: skip
    args = p.parse_args(argv)
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
