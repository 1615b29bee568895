"""Checkpoint load time: what each command reads before it works, and weights-only loading against full unpickling
(its peer, and what zoo did before), on one checkpoint file in one run.

Rows (median of ``--repeats`` runs each, the file in the page cache after a first read; "reads" counts the calls of
``torch.load`` on the file during one load):

* ``torch.load``: the file alone, ``weights_only=False`` (peer) vs ``weights_only=True``.
* each command's load of model + tokenizer + EOS + step: ``generate`` (``LanguageModel.from_checkpoint``, then
  ``tokenizer_from_checkpoint``: three reads), ``eval`` (``zoo.eval.checkpoint.load_model``), ``export`` (the model,
  then ``read_checkpoint`` in full for the card's step count, then the tokenizer), and
  ``zoo.training.loading.load_checkpoint``: one memory-mapped weights-only read, the model built from the
  hyper-parameters and the state dict loaded into it (the commands use it where it exists).

    python -m zoo fit --config configs/quickstart.yaml --trainer.max_steps 4 --model.schedule.init_args.warmup_steps 1
    python benchmarks/checkpoint_load.py runs/quickstart/lightning_logs/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time
import warnings
from collections.abc import Callable
from unittest import mock

import torch


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: the file in the page cache, imports done
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_reads(fn: Callable[[], object]) -> int:
    """How many times ``fn`` calls ``torch.load`` (every reader of a checkpoint, Lightning's included, goes
    through it)."""
    real = torch.load
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    with mock.patch("torch.load", counting):
        fn()
    return len(calls)


def tiny_checkpoint() -> str:
    """The checkpoint of a 2-step fit of a width-32 quickstart model, in a temporary folder."""
    import tempfile
    from pathlib import Path

    from zoo.commands.fit import ZooCLI

    root = Path(tempfile.mkdtemp())
    tiny = ["--model.backbone.dim", "32", "--model.backbone.n_layers", "2", "--model.backbone.vocab_size", "300",
            "--model.backbone.block.init_args.ffn.init_args.hidden_dim", "64",
            "--model.backbone.block.init_args.attention.init_args.n_heads", "4",
            "--model.schedule.init_args.warmup_steps", "1", "--data.tokenizer.init_args.vocab_size", "300",
            "--data.seq_len", "32", "--data.batch_size", "2", "--data.limit_files", "30"]  # fmt: skip
    ZooCLI(args=["fit", "--config", str(Path(__file__).parents[1] / "configs" / "quickstart.yaml"), *tiny,
                 "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar",
                 "false", "--trainer.default_root_dir", str(root)])  # fmt: skip
    return str(next(root.rglob("last.ckpt")))


def command_loads(ckpt: str) -> list[tuple[str, Callable[[], object]]]:
    """(name, load) of what each command reads before it works, as the tree at hand does it."""
    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.eval.checkpoint import load_model
    from zoo.objectives.base import LanguageModel
    from zoo.training.checkpoints import read_checkpoint

    def generate_three_reads() -> None:  # zoo generate before the one-read loader
        LanguageModel.from_checkpoint(ckpt, map_location="cpu").eval()
        tokenizer_from_checkpoint(ckpt)

    def export_before() -> None:  # zoo export before the one-read loader: the model, then the file in full
        LanguageModel.from_checkpoint(ckpt, map_location="cpu").eval()
        tokenizer_from_checkpoint(read_checkpoint(ckpt))

    rows = [("generate, before (objective + tokenizer: 3 reads)", generate_three_reads),
            ("export, before (objective + full read for the card)", export_before),
            ("eval's load_model (as the tree has it)", lambda: load_model(ckpt, device="cpu"))]  # fmt: skip
    try:
        loading = importlib.import_module("zoo.training.loading")
    except ImportError:
        return rows
    return [*rows, ("load_checkpoint (one mmap weights-only read)", lambda: loading.load_checkpoint(ckpt))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", nargs="?", help="a checkpoint written by `python -m zoo fit`")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--smoke", action="store_true", help="a 2-step tiny run's checkpoint, one repeat: the code paths")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.smoke:
        args.ckpt, args.repeats = tiny_checkpoint(), 1
    elif args.ckpt is None:
        p.error("give a checkpoint (or --smoke)")
    size = os.path.getsize(args.ckpt) / 2**20
    print(f"{args.ckpt}: {size:.1f} MiB, torch {torch.__version__}, {torch.get_num_threads()} threads")
    full = median_seconds(lambda: torch.load(args.ckpt, map_location="cpu", weights_only=False), args.repeats)
    safe = median_seconds(lambda: torch.load(args.ckpt, map_location="cpu", weights_only=True), args.repeats)
    mapped = median_seconds(lambda: torch.load(args.ckpt, map_location="cpu", weights_only=True, mmap=True),
                            args.repeats)  # fmt: skip
    print("| torch.load | full unpickling (s) | weights-only (s) | weights-only, mmap (s) |")
    print("|---|---:|---:|---:|")
    print(f"| the file | {full:.3f} | {safe:.3f} | {mapped:.3f} |")
    print()
    print("| a command's load (model + tokenizer + EOS + step) | reads | seconds |")
    print("|---|---:|---:|")
    for name, load in command_loads(args.ckpt):
        reads = count_reads(load)
        print(f"| {name} | {reads} | {median_seconds(load, args.repeats):.3f} |", flush=True)


if __name__ == "__main__":
    main()
