"""``python -m zoo data prepare``: tokenize a run's data once into token shards, then train from them.

::

    python -m zoo data prepare --config configs/recipes/gpt-s-5m.yaml --out data/gpt-s-5m
    python -m zoo fit --config configs/recipes/gpt-s-5m.yaml --data.prepared data/gpt-s-5m

``--config`` (repeatable) and ``--data.…`` overrides are parsed as ``python -m zoo fit`` parses them; the run's
tokenizer is trained first where the config says ``TrainedBPE``. Every source of the mixture and its held-out
validation slice are tokenized on every core into ``--out`` (see :mod:`zoo.data.prepare`); run the same command
again after an interruption to continue, or after it finished to reuse the shards.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from zoo.commands.errors import command
from zoo.errors import ZooError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zoo data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    prepare = sub.add_parser("prepare", help="tokenize a run config's data into token shards")
    prepare.add_argument("--config", action="append", required=True,
                         help="run config (repeatable, later files override earlier ones), as for zoo fit")  # fmt: skip
    prepare.add_argument("--out", required=True, help="folder of the shards (created; continued if interrupted)")
    prepare.add_argument("--threads", type=int, default=None, help="tokenizer threads (default: every core)")
    prepare.add_argument("--piece-documents", type=int, default=None,
                         help="source rows per shard piece (the unit an interrupted prepare continues from)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@command("data prepare")
def main(argv: list[str]) -> None:
    args, overrides = parser().parse_known_args(argv)
    bad = [a for a in overrides if a.startswith("-") and not a.startswith("--data.")]
    if bad:
        raise ZooError(f"unknown option {bad[0]}: see --help; besides --data.… overrides are read")
    datamodule = data_module(args.config, overrides)
    from zoo.data.prepare import prepare

    start = time.perf_counter()
    kwargs = {"piece_documents": args.piece_documents} if args.piece_documents else {}
    # an unreachable source, a full disk: named in one line by zoo.commands.errors.run_command
    manifest = prepare(datamodule, Path(args.out), progress=not args.quiet, threads=args.threads, **kwargs)
    seconds = time.perf_counter() - start
    tokens = sum(s["train"]["tokens"] for s in manifest["sources"])
    print(f"{args.out}: {tokens:,} training tokens from {len(manifest['sources'])} sources, tokenizer sha256 "
          f"{manifest['tokenizer_fingerprint'][:16]} ({manifest['vocab_size']:,} ids), {seconds:.0f} s")  # fmt: skip
    for s in manifest["sources"]:
        skipped = ", ".join(f"{k} {v}" for k, v in s["train"]["skipped"].items()) or "none"
        print(f"  {s['label']}: {s['train']['documents']:,} documents, {s['train']['tokens']:,} tokens "
              f"(validation {s['validation']['tokens']:,}); rows skipped: {skipped}")  # fmt: skip
    print(f"train from them: python -m zoo fit {' '.join('--config ' + c for c in args.config)} "
          f"--data.prepared {args.out}")  # fmt: skip


def data_module(configs: list[str], overrides: list[str]):
    """The run's pre-training data module, parsed and built as ``zoo fit`` builds it."""
    from zoo.commands.fit import build_data_module

    datamodule = build_data_module(configs, overrides)
    if not hasattr(datamodule, "sources") or type(datamodule).__name__ == "SFTDataModule":
        raise ZooError(f"data {type(datamodule).__name__} is not prepared (instruction data are formatted and masked "
                       "per example): prepare a pre-training zoo.data.Mixture")  # fmt: skip
    return datamodule
