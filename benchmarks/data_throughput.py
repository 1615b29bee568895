"""Data throughput: tokens/s the streamed data pipeline delivers on one DataLoader worker, against the tokens/s the
quickstart model consumes in training, on the same machine in one run. The pipeline must never be the bottleneck.

Pipelines measured (each the real training loader of its data module, one worker process, after a warm-up):

* ``mixture``: ``zoo.data.Mixture`` over the embedded corpus as two ``datasets`` streaming sources (prose and code,
  50/50) — the same path a hub or local-file mixture takes: interleave, tokenize in the worker, shuffle, pack.
* ``sft``: ``zoo.data.SFTDataModule`` on the embedded instruction set, Alpaca format, packed.

Token shards (``python -m zoo data prepare``, :mod:`zoo.data.prepared`), on the embedded corpus's prose and code as
two JSON Lines sources, tokenized with the quickstart's 4,096-token BPE:

* ``prepared`` loader: ``Mixture(prepared=DIR)``'s training loader, one worker, 128 × 512 rows (GPT-S-5M's batch),
  beside a plain memory-mapped read of random 128 × 512 windows of the same shards (one process: the limit);
* ``prepare``: ``zoo.data.prepare.prepare`` (read, tokenize, write, commit) against the tokenizer's own
  ``encode_batch`` on the same texts already in memory, on 1 and on 2 cores (each in a process pinned to them);
* each seed recipe's prepared loader (its own ``seq_len`` × ``batch_size``, one worker) against what one H100 consumes
  at 40% of its 989 TFLOP/s dense bf16, from the backbone's training FLOPs per token (``zoo info``).

The consumer: the quickstart model (``configs/quickstart.yaml``: 3.1M parameters, batch 8 × 256, fp32) running
forward, backward and its AdamW step on random tokens (so data loading plays no part in that figure).

    python benchmarks/data_throughput.py                # about 5 minutes on 2 CPU cores
    python benchmarks/data_throughput.py --batches 200 --train-steps 30
    python benchmarks/data_throughput.py --smoke        # every code path in seconds (CI; figures mean nothing)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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


H100_BF16_DENSE, MFU = 989e12, 0.40
SEEDS = ("gpt-s-5m", "supra-50m", "dhara-70m-diffusion", "smallcoder-303m")


def corpus_files(folder: Path, limit_files: int | None) -> list[Path]:
    """The embedded corpus's prose and code as JSON Lines files (what a local mixture reads)."""
    from zoo.data.corpus import stdlib_documents, stdlib_shards

    paths = []
    for kind in ("prose", "code"):
        path = folder / f"{kind}.jsonl"
        with open(path, "w") as f:
            for doc in stdlib_documents(kind, stdlib_shards(kind, limit_files)):
                f.write(json.dumps({"text": doc["text"]}) + "\n")
        paths.append(path)
    return paths


def shard_mixture(files: list[Path], tokenizer: str, *, seq_len: int, batch_size: int, prepared: str | None = None,
                  num_workers: int = 1):  # fmt: skip
    from zoo.data import Mixture, PretrainedTokenizer, Source

    sources = [Source(data_files=str(f), weight=w, val_documents=2) for f, w in zip(files, (0.5, 0.5))]
    return Mixture(sources=sources, tokenizer=PretrainedTokenizer(path=tokenizer), seq_len=seq_len,
                   batch_size=batch_size, num_workers=num_workers, prepared=prepared)  # fmt: skip


def measure_in_process(args) -> None:
    """``--measure prepare|encode``: one timing in this process, pinned to ``--threads`` cores; prints JSON."""
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before the tokenizer's thread pool starts
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    files, tokenizer = [Path(f) for f in args.files], args.tokenizer
    if args.measure == "encode":  # the same texts, in memory, in the same batches prepare tokenizes
        from tokenizers import Tokenizer

        from zoo.data.prepare import PIECE_DOCUMENTS

        tok = Tokenizer.from_file(tokenizer)
        texts = [json.loads(line)["text"] for f in files for line in f.read_text().splitlines()]
        start, tokens = time.perf_counter(), 0
        for i in range(0, len(texts), PIECE_DOCUMENTS):
            tokens += sum(len(e.ids) + 1 for e in tok.encode_batch(texts[i : i + PIECE_DOCUMENTS],
                                                                   add_special_tokens=False))  # fmt: skip
    else:
        from zoo.data.prepare import prepare

        datamodule = shard_mixture(files, tokenizer, seq_len=512, batch_size=1)
        datamodule.load_tokenizer()
        start = time.perf_counter()
        manifest = prepare(datamodule, args.out, progress=False, threads=args.threads)
        tokens = sum(s[split]["tokens"] for s in manifest["sources"] for split in ("train", "validation"))
    print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - start}))


def measure(kind: str, threads: int, files: list[Path], tokenizer: str, out: Path | None = None) -> float:
    command = [sys.executable, __file__, "--measure", kind, "--threads", str(threads), "--tokenizer", tokenizer,
               "--files", *map(str, files)] + (["--out", str(out)] if out else [])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} on {threads} core(s) failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.splitlines()[-1])
    return result["tokens"] / result["seconds"]


def loader_tokens_per_second(loader, batches: int, warmup: int) -> float:
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start, tokens = time.perf_counter(), 0
    for _ in range(batches):
        tokens += next(iterator)["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def memmap_tokens_per_second(shards: Path, seq_len: int, batch_size: int, batches: int) -> float:
    """Random ``batch_size`` × ``seq_len`` windows of the shards' chunk files, memory-mapped, stacked into an int64
    tensor: what reading the shards costs with nothing else (one process)."""
    from zoo.data.prepare import read_manifest

    manifest = read_manifest(shards)
    chunks = [np.memmap(shards / s["train"]["folder"] / name, dtype=manifest["dtype"], mode="r")
              for s in manifest["sources"] for name, n in s["train"]["chunks"] if n > seq_len]  # fmt: skip
    rng = np.random.default_rng(0)
    start, tokens = time.perf_counter(), 0
    for _ in range(batches):
        rows = []
        for _ in range(batch_size):
            chunk = chunks[rng.integers(len(chunks))]
            offset = rng.integers(len(chunk) - seq_len)
            rows.append(chunk[offset : offset + seq_len])
        tokens += torch.from_numpy(np.stack(rows).astype(np.int64)).numel()
    return tokens / (time.perf_counter() - start)


def h100_demand(recipe: Path) -> float:
    """Tokens/s one H100 consumes training ``recipe``'s backbone at 40% of its dense bf16 peak."""
    from zoo.commands.info import build

    backbone = build([recipe])
    return MFU * H100_BF16_DENSE / backbone.flops_per_token(backbone.max_seq_len)


def prepared_rows(args, cache: str, tokenizer_path: str, pipeline_rate: float) -> list[str]:
    """The token-shard rows of the results table (see the module docstring)."""
    work = Path(tempfile.mkdtemp(dir=cache))
    files = corpus_files(work, 12 if args.smoke else None)
    lines = []
    prepare_rates = {}
    for threads in (1, 2)[: max(1, min(2, len(os.sched_getaffinity(0))))]:
        # alternated, best of 2 each: on a shared host one lone timing may land on a busy moment
        encode, prepared = [], []
        for attempt in range(1 if args.smoke else 2):
            encode.append(measure("encode", threads, files, tokenizer_path))
            out = work / f"shards-{threads}-{attempt}"
            prepared.append(measure("prepare", threads, files, tokenizer_path, out=out))
        prepare_rates[threads] = (max(prepared), max(encode))
    shards = work / "shards-1-0"
    batches, warmup = (3, 1) if args.smoke else (args.batches * 4, args.warmup)
    gpt = shard_mixture(files, tokenizer_path, seq_len=512, batch_size=128, prepared=str(shards))
    gpt.setup("fit")
    loader = loader_tokens_per_second(gpt.train_dataloader(), batches, warmup)
    plain = memmap_tokens_per_second(shards, 512, 128, batches)
    lines.append(f"| `prepared` loader (token shards), 1 worker, 128 × 512 | {loader:,.0f} | "
                 f"{loader / pipeline_rate:,.0f} × the `mixture` pipeline |")  # fmt: skip
    lines.append(f"| plain memmap read of the same shards, 1 process, 128 × 512 | {plain:,.0f} | the limit |")
    for threads, (prepared, encode) in prepare_rates.items():
        lines.append(f"| `zoo data prepare`, {threads} core(s) | {prepared:,.0f} | {prepared / encode:.0%} of "
                     f"`encode_batch` ({encode:,.0f}) on the same text |")  # fmt: skip
    for seed in SEEDS:
        recipe = ROOT / "configs" / "recipes" / f"{seed}.yaml"
        data = yaml.safe_load(recipe.read_text())["data"]["init_args"]
        module = shard_mixture(files, tokenizer_path, seq_len=data["seq_len"], batch_size=data["batch_size"],
                               prepared=str(shards))  # fmt: skip
        module.setup("fit")
        rate = loader_tokens_per_second(module.train_dataloader(), max(batches // 4, 2), warmup)
        need = h100_demand(recipe)
        lines.append(f"| {seed}: prepared loader, 1 worker, {data['batch_size']} × {data['seq_len']} | {rate:,.0f} | "
                     f"{rate / need:.1f} × one H100's {need:,.0f} |")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=150, help="pipeline batches timed (after --warmup)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=20, help="training steps timed (after 3 warm-up steps)")
    p.add_argument("--cache", default=None, help="tokenizer cache (default: $ZOO_CACHE or a temporary folder)")
    p.add_argument("--smoke", action="store_true", help="a few batches and one step: seconds (for CI)")
    p.add_argument("--measure", choices=("prepare", "encode"), help=argparse.SUPPRESS)  # one timing, in a subprocess
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--files", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        return measure_in_process(args)
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
    tokenizer_path = str(Path(cache) / "data-throughput-tokenizer.json")  # written by pipelines()
    shard_lines = prepared_rows(args, cache, tokenizer_path, pipeline_rate=rows[0][1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    print(f"# data throughput — {datetime.date.today()}, commit {commit.stdout.strip() or '?'}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; python {sys.version.split()[0]}")  # fmt: skip
    print(f"batch {batch_size} × {seq_len} tokens\n")
    print("| what | tokens/s | × training |\n|---|---:|---:|")
    print(f"| quickstart model training (fwd + bwd + AdamW, fp32) | {train:,.0f} | 1.0 |")
    for name, delivered, ratio in rows:
        print(f"| `{name}` pipeline, 1 worker | {delivered:,.0f} | {ratio:.1f} |")
    print("\n| token shards | tokens/s | against |\n|---|---:|---|")
    print("\n".join(shard_lines))


if __name__ == "__main__":
    main()
