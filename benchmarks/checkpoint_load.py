"""Checkpoint load time: weights-only loading (what zoo does now) against full unpickling (its peer, and what zoo
did before), on one checkpoint file in one run. Weights-only loading must not make loading slow.

Rows (median of ``--repeats`` runs each, the file in the page cache after a first read):

* ``torch.load``: the file alone, ``weights_only=False`` (peer) vs ``weights_only=True``.
* ``generate's load``: what ``python -m zoo generate`` reads before sampling — the objective (class from the file,
  then Lightning's ``load_from_checkpoint``) and the tokenizer. Before: three full unpicklings (the class read, the
  model read, the tokenizer read). Now: the class read and the tokenizer read weights-only with tensors mapped
  (``mmap``), the model read weights-only.

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

import torch


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: the file in the page cache, imports done
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.objectives.base import LanguageModel

    def generate_before() -> None:  # zoo before weights-only loading, step by step
        checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=False)  # the objective's class
        module, _, name = checkpoint["hyper_parameters"]["_class_path"].rpartition(".")
        target = getattr(importlib.import_module(module), name)
        target.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=False)
        tokenizer_from_checkpoint(torch.load(args.ckpt, map_location="cpu", weights_only=False))

    def generate_now() -> None:
        LanguageModel.from_checkpoint(args.ckpt, map_location="cpu")
        tokenizer_from_checkpoint(args.ckpt)

    rows = [
        ("torch.load", lambda: torch.load(args.ckpt, map_location="cpu", weights_only=False),
         lambda: torch.load(args.ckpt, map_location="cpu", weights_only=True)),
        ("generate's load (objective + tokenizer)", generate_before, generate_now),
    ]  # fmt: skip
    size = os.path.getsize(args.ckpt) / 2**20
    print(f"{args.ckpt}: {size:.1f} MiB, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| what | full unpickling (s) | weights-only (s) | full / weights-only |")
    print("|---|---:|---:|---:|")
    for name, before, now in rows:
        a, b = median_seconds(before, args.repeats), median_seconds(now, args.repeats)
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
