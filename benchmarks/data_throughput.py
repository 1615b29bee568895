"""Data throughput: tokens/s the streamed data pipeline delivers on one DataLoader worker, against the tokens/s the
quickstart model consumes in training, on the same machine in one run. The pipeline must never be the bottleneck.

Pipelines measured (each the real training loader of its data module, one worker process, after a warm-up):

* ``mixture``: ``zoo.data.Mixture`` over the embedded corpus as two ``datasets`` streaming sources (prose and code,
  50/50) — the same path a hub or local-file mixture takes: interleave, tokenize in the worker, shuffle, pack.
* ``sft``: ``zoo.data.SFTDataModule`` on the embedded instruction set, Alpaca format, packed.

The consumer: the quickstart model (``configs/quickstart.yaml``: 3.1M parameters, batch 8 × 256, fp32) running
forward, backward and its AdamW step on random tokens (so data loading plays no part in that figure).

    python benchmarks/data_throughput.py                # about 2 minutes on 2 CPU cores
    python benchmarks/data_throughput.py --batches 200 --train-steps 30
    python benchmarks/data_throughput.py --smoke        # every code path in seconds (CI; figures mean nothing)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> dict:
    return yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())


def pipelines(cache: str, seq_len: int, batch_size: int) -> dict:
    from zoo.data import (
        Alpaca,
        Mixture,
        PretrainedTokenizer,
        SFTDataModule,
        SFTSource,
        Source,
        StdlibCorpus,
        TrainedBPE,
    )

    # The quickstart's tokenizer, trained on its corpus once (and cached), outside the timings.
    vocab = quickstart()["data"]["init_args"]["tokenizer"]["init_args"]["vocab_size"]
    corpus = StdlibCorpus(tokenizer=TrainedBPE(vocab_size=vocab, cache_dir=cache), seq_len=seq_len, batch_size=1)
    path = Path(cache) / "data-throughput-tokenizer.json"
    corpus.load_tokenizer().save(str(path))
    common = {"tokenizer": PretrainedTokenizer(path=str(path)), "seq_len": seq_len, "batch_size": batch_size,
              "num_workers": 1}  # fmt: skip
    mixture = Mixture(sources=[Source(path="stdlib", name="prose"), Source(path="stdlib", name="code")], **common)
    sft = SFTDataModule(sources=[SFTSource(path="stdlib", name="functions")], format=Alpaca(), pack=True, **common)
    return {"mixture": mixture, "sft": sft}


def pipeline_tokens_per_second(datamodule, batches: int, warmup: int) -> float:
    datamodule.setup("fit")
    iterator = iter(datamodule.train_dataloader())
    for _ in range(warmup):  # worker start, first files parsed, shuffle buffer filled
        next(iterator)
    start = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        tokens += next(iterator)["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def training_tokens_per_second(seq_len: int, batch_size: int, steps: int, warmup: int) -> float:
    from jsonargparse import ArgumentParser

    from zoo.objectives import CausalLM

    parser = ArgumentParser()
    parser.add_argument("--model", type=CausalLM)
    model = parser.instantiate(parser.parse_object({"model": quickstart()["model"]})).model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    vocab = model.backbone.vocab_size
    batch = torch.randint(vocab, (batch_size, seq_len))
    batch = {"input_ids": batch, "labels": batch.clone()}

    def step():
        loss, _ = model.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size * seq_len / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=150, help="pipeline batches timed (after --warmup)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=20, help="training steps timed (after 3 warm-up steps)")
    p.add_argument("--cache", default=None, help="tokenizer cache (default: $ZOO_CACHE or a temporary folder)")
    p.add_argument("--smoke", action="store_true", help="a few batches and one step: seconds (for CI)")
    args = p.parse_args()
    if args.smoke:
        args.batches, args.warmup, args.train_steps = 3, 1, 1
    cache = args.cache or os.environ.get("ZOO_CACHE") or tempfile.mkdtemp()
    data = quickstart()["data"]["init_args"]
    seq_len, batch_size = data["seq_len"], data["batch_size"]
    torch.manual_seed(0)
    train = training_tokens_per_second(seq_len, batch_size, args.train_steps, warmup=1 if args.smoke else 3)
    rows = []
    for name, datamodule in pipelines(cache, seq_len, batch_size).items():
        delivered = pipeline_tokens_per_second(datamodule, args.batches, args.warmup)
        rows.append((name, delivered, delivered / train))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    print(f"# data throughput — {datetime.date.today()}, commit {commit.stdout.strip() or '?'}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; python {sys.version.split()[0]}")  # fmt: skip
    print(f"batch {batch_size} × {seq_len} tokens\n")
    print("| what | tokens/s | × training |\n|---|---:|---:|")
    print(f"| quickstart model training (fwd + bwd + AdamW, fp32) | {train:,.0f} | 1.0 |")
    for name, delivered, ratio in rows:
        print(f"| `{name}` pipeline, 1 worker | {delivered:,.0f} | {ratio:.1f} |")


if __name__ == "__main__":
    main()
