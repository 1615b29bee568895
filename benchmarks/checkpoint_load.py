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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="a checkpoint written by `python -m zoo fit`")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
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
