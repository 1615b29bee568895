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

import time
from pathlib import Path

from zoo.commands.errors import command
from zoo.commands.options import CommandParser
from zoo.errors import ZooError


def prepare(*, config: list[str], out: str, threads: int | None = None, piece_documents: int | None = None,
            quiet: bool = False, overrides: list[str] = ()) -> dict:  # fmt: skip
    """Tokenize a run config's data into token shards; returns the manifest.

    Args:
        config: run config (repeatable, later files override earlier ones), as for zoo fit
        out: folder of the shards (created; continued if interrupted)
        threads: tokenizer threads (default: every core)
        piece_documents: source rows per shard piece (the unit an interrupted prepare continues from)
        quiet: no progress bar
        overrides: ``--data.…`` options of ``zoo fit``
    """
    from zoo.data.prepare import prepare

    datamodule = data_module(config, overrides)
    start = time.perf_counter()
    kwargs = {"piece_documents": piece_documents} if piece_documents else {}
    # an unreachable source, a full disk: named in one line by zoo.commands.errors.run_command
    manifest = prepare(datamodule, Path(out), progress=not quiet, threads=threads, **kwargs)
    seconds = time.perf_counter() - start
    tokens = sum(s["train"]["tokens"] for s in manifest["sources"])
    print(f"{out}: {tokens:,} training tokens from {len(manifest['sources'])} sources, tokenizer sha256 "
          f"{manifest['tokenizer_fingerprint'][:16]} ({manifest['vocab_size']:,} ids), {seconds:.0f} s")  # fmt: skip
    for s in manifest["sources"]:
        skipped = ", ".join(f"{k} {v}" for k, v in s["train"]["skipped"].items()) or "none"
        print(f"  {s['label']}: {s['train']['documents']:,} documents, {s['train']['tokens']:,} tokens "
              f"(validation {s['validation']['tokens']:,}); rows skipped: {skipped}")  # fmt: skip
    if hasattr(datamodule, "prepared"):
        print(f"train from them: python -m zoo fit {' '.join('--config ' + c for c in config)} "
              f"--data.prepared {out}")  # fmt: skip
    else:  # e.g. StdlibCorpus, which streams its text only
        print(f"train from them with a zoo.data.Mixture config (data.prepared: {out}, the same tokenizer): "
              f"data {type(datamodule).__name__} reads text only")  # fmt: skip
    return manifest


def prepare_parser() -> CommandParser:
    p = CommandParser(prog="python -m zoo data prepare", description=prepare.__doc__.split("\n\n")[0],
                      epilog="Any --data.… option is a zoo fit override, e.g. --data.seq_len 512")  # fmt: skip
    p.add_function_arguments(prepare, as_group=False, skip={"overrides"})
    return p


def parser() -> CommandParser:
    p = CommandParser(prog="python -m zoo data", description=__doc__)
    p.add_subcommands(required=True, dest="action").add_subcommand(
        "prepare", prepare_parser(), help="tokenize a run config's data into token shards"
    )
    return p


@command("data prepare")
def main(argv: list[str]) -> None:
    if argv[:1] == ["prepare"]:  # its own options, then the --data.… overrides for zoo fit's parser
        args, overrides = prepare_parser().parse_known(argv[1:])
    else:
        args, overrides = parser().parse_args(argv).prepare, []  # --help, or the missing subcommand's error
    bad = [a for a in overrides if a.startswith("-") and not a.startswith("--data.")]
    if bad:
        raise ZooError(f"unknown option {bad[0]}: see --help; besides --data.… overrides are read")
    prepare(**vars(args), overrides=overrides)


def data_module(configs: list[str], overrides: list[str]):
    """The run's pre-training data module, parsed and built as ``zoo fit`` builds it."""
    from zoo.training.run_config import build_data_module

    datamodule = build_data_module(configs, overrides)
    if not hasattr(datamodule, "sources") or type(datamodule).__name__ == "SFTDataModule":
        raise ZooError(f"data {type(datamodule).__name__} is not prepared (instruction data are formatted and masked "
                       "per example): prepare a pre-training zoo.data.Mixture")  # fmt: skip
    return datamodule
