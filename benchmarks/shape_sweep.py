"""Train a list of model shapes for the same token budget and compare them: the depth-vs-width study.

Every model config (a backbone file under ``configs/models/``) is trained by ``python -m zoo fit`` in its own
process with the same data, optimizer, schedule, batch and number of tokens, then scored on the same held-out
batches. The script writes a markdown table (parameters, tokens, validation loss, training throughput, wall
time) and a plot to ``--out``.

    python benchmarks/shape_sweep.py                                  # the depth-vs-width shapes, stdlib corpus
    python benchmarks/shape_sweep.py --models configs/models/arch/*.yaml --name arch-sweep   # architectures
    python benchmarks/shape_sweep.py --tokens 2e6 --trainer.accelerator gpu ...             # extra flags go to fit
    python benchmarks/shape_sweep.py --smoke                          # every code path in seconds (CI)

Defaults are scaled for a 2-core CPU (about an hour for the seven depth-vs-width shapes): the embedded corpus
with its 4096-token tokenizer, so every model's vocabulary is set to 4096 (non-embedding parameters are those
of the study; the embedding shrinks), sequences of 256 tokens, and ``--tokens`` per model.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHAPES = sorted(glob.glob(str(ROOT / "configs/models/shape/*.yaml")))

# Everything but the backbone: the same for every model of the sweep.
BASE = {
    "seed_everything": 0,
    "trainer": {
        "precision": "32-true",
        "gradient_clip_val": 1.0,
        "log_every_n_steps": 10,
        "check_val_every_n_epoch": None,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
    "model": {
        "class_path": "zoo.objectives.CausalLM",
        "init_args": {
            "optimizer": {
                "class_path": "torch.optim.AdamW",
                "init_args": {"lr": 1.0e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
            },
            "schedule": {
                "class_path": "zoo.optim.WarmupStableDecay",
                "init_args": {"warmup_steps": 50, "decay_start": 0.7, "min_lr": 0.0},
            },
        },
    },
    "data": {
        "class_path": "zoo.data.StdlibCorpus",
        "init_args": {"tokenizer": {"class_path": "zoo.data.TrainedBPE", "init_args": {"vocab_size": 4096}}},
    },
    "checkpoint": {"save_last": False, "save_top_k": 0},
}


def count_parameters(model_file: str, vocab_size: int, max_seq_len: int) -> tuple[int, int]:
    """(total, non-embedding) parameters of a backbone file, built on the meta device (no memory)."""
    import torch
    from jsonargparse import ArgumentParser

    from zoo.nn import Transformer

    parser = ArgumentParser()
    parser.add_argument("--backbone", type=Transformer, sub_configs=True)
    cfg = parser.parse_args(
        ["--backbone", model_file, "--backbone.vocab_size", str(vocab_size), "--backbone.max_seq_len", str(max_seq_len)]
    )
    with torch.device("meta"):
        backbone = parser.instantiate(cfg).backbone
    return backbone.num_parameters(), backbone.num_parameters(embeddings=False)


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def train(model_file: str, args, extra: list[str], run_dir: Path) -> dict:
    steps = max(1, round(args.tokens / (args.batch_size * args.seq_len)))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(BASE, f)
    command = [
        sys.executable, "-m", "zoo", "fit", "--config", f.name,
        "--model.backbone", model_file,
        "--model.backbone.vocab_size", str(args.vocab_size),
        "--model.backbone.max_seq_len", str(args.seq_len),
        "--model.optimizer.init_args.lr", str(args.lr),
        "--model.schedule.init_args.warmup_steps", str(min(args.warmup, steps // 10)),
        "--data.seq_len", str(args.seq_len), "--data.batch_size", str(args.batch_size),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
        "--trainer.limit_val_batches", str(args.val_batches),
        "--trainer.default_root_dir", str(run_dir),
        *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"training {model_file} failed:\n{result.stderr[-4000:]}")
    scalars = read_scalars(run_dir)
    speeds = [v for _, v in scalars.get("train/device/tokens_per_sec", [])]
    speeds = speeds[len(speeds) // 4 :] or speeds  # leave out the first quarter (warm-up)
    if not speeds and scalars.get("train/time"):  # a run shorter than the monitor's window: the plain average
        speeds = [scalars["train/tokens"][-1][1] / scalars["train/time"][-1][1]]
    return {
        "steps": steps,
        "tokens": steps * args.batch_size * args.seq_len,
        "val_loss": scalars["val/loss"][-1][1],
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else float("nan"),
        "wall_s": wall,
    }


def describe_machine() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores (torch {torch.__version__})"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        left.scatter(row["non_embedding"] / 1e6, row["val_loss"])
        left.annotate(row["name"], (row["non_embedding"] / 1e6, row["val_loss"]), fontsize=8)
    left.set_xlabel("non-embedding parameters (M)")
    left.set_ylabel("validation loss (nats/token)")
    names = [row["name"] for row in rows]
    right.barh(names, [row["tokens_per_s"] for row in rows])
    right.set_xlabel("training tokens/s")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=SHAPES, help="backbone config files (default: configs/models/shape)")
    p.add_argument("--tokens", type=float, default=150_000, help="training tokens per model")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vocab-size", type=int, default=4096, help="every model's vocabulary (the tokenizer's size)")
    p.add_argument("--lr", type=float, default=1.0e-3, help="peak learning rate (WSD schedule, same for all)")
    p.add_argument("--warmup", type=int, default=50, help="warmup steps (at most a tenth of the run)")
    p.add_argument("--val-batches", type=int, default=40, help="held-out batches scored at the end")
    p.add_argument("--name", default="shape-sweep", help="result file stem")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    p.add_argument("--smoke", action="store_true",
                   help="two shapes, two steps of 2 × 32 tokens, results to a temporary folder: seconds (for CI)")
    args, extra = p.parse_known_args()  # anything else is passed to `python -m zoo fit`
    if args.smoke:
        args.models, args.tokens, args.seq_len, args.batch_size = SHAPES[:2], 128, 32, 2
        args.warmup, args.val_batches, args.out = 1, 1, tempfile.mkdtemp()
    if not args.models:
        raise SystemExit("no model configs: give --models FILE [FILE ...]")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for model_file in args.models:
            name = Path(model_file).stem
            total, non_embedding = count_parameters(model_file, args.vocab_size, args.seq_len)
            row = {"name": name, "params": total, "non_embedding": non_embedding}
            row.update(train(model_file, args, extra, Path(runs) / name))
            rows.append(row)
            print(json.dumps(row), flush=True)

    date = datetime.date.today().isoformat()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    machine = describe_machine()
    lines = [
        f"# {args.name}: {len(rows)} models, {rows[0]['tokens']:,} training tokens each",
        "",
        f"- date: {date}; commit: {commit.stdout.strip() or 'unknown'}; machine: {machine}, "
        f"python {platform.python_version()}",
        f"- command: `python benchmarks/shape_sweep.py {' '.join(sys.argv[1:])}`",
        f"- data: embedded stdlib corpus unless overridden; seq {args.seq_len}, batch {args.batch_size}, "
        f"vocab {args.vocab_size}, AdamW lr {args.lr} with warmup-stable-decay; {args.val_batches} validation batches",
        "",
        "| model | parameters | non-embedding | tokens | val loss | train tokens/s | wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["val_loss"]):
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['non_embedding']:,} | {r['tokens']:,} | {r['val_loss']:.3f} | "
            f"{r['tokens_per_s']:,.0f} | {r['wall_s']:.0f} |"
        )
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / f"{args.name}.png", f"{args.name}: {rows[0]['tokens']:,} tokens per model")
    print(f"wrote {out / (args.name + '.md')} and {out / (args.name + '.png')}")


if __name__ == "__main__":
    main()
