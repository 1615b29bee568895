"""``python -m zoo eval --ckpt CKPT --tasks arc_easy,piqa``: zero-shot scores of a checkpoint, as
lm-evaluation-harness computes them (same prompts, splits, token handling and metrics), without converting it.

Documents load from the hub (``datasets.load_dataset``, the harness's dataset, name and split) or from local
files in their release formats: ``--data-dir DIR`` with this layout (the harness's tasks and their files)::

    DIR/arc/ARC-Easy-test.jsonl, DIR/arc/ARC-Challenge-test.jsonl   (the hub's rows as JSONL)
    DIR/piqa/valid.jsonl + DIR/piqa/valid-labels.lst                (PIQA's dev release)
    DIR/blimp/<paradigm>.jsonl                                      (BLiMP's release, 67 files)
    DIR/truthfulqa/v0_mc_task.json                                  (TruthfulQA's original mc_task.json)
    DIR/wikitext/wiki.test.raw                                      (WikiText-2 raw test file)
    DIR/hellaswag/hellaswag_val.jsonl, DIR/sciq/test.json, DIR/winogrande/dev.jsonl,
    DIR/lambada/lambada_test.jsonl                                  (release files with the hub's fields)

or one file per task with ``--task-file arc_easy=path.jsonl``. A new multiple-choice task is a YAML file
(``--include my_task.yaml``; fields in :mod:`zoo.eval.tasks`). ``humaneval`` and ``mbpp`` generate code and run
its tests (:mod:`zoo.eval.code`). Masked-diffusion checkpoints are scored with Monte-Carlo ELBO lower bounds
(``--mc-num``). Examples::

    python -m zoo eval --ckpt runs/quickstart/.../last.ckpt --tasks arc_easy,piqa,blimp --data-dir /data/eval
    python -m zoo eval --ckpt last.ckpt --tasks wikitext --limit 10 --output results.json --tensorboard runs/eval
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from zoo.eval.checkpoint import load_model, make_scorer, scalars
from zoo.eval.tasks import CODE_TASKS
from zoo.training.checkpoints import TRUST_HELP


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--ckpt", required=True, help="checkpoint written by `python -m zoo fit`")
    p.add_argument("--trust-checkpoint", action="store_true", default=None, help=TRUST_HELP)
    p.add_argument("--tasks", required=True, help="comma-separated task or group names (e.g. arc_easy,piqa,blimp)")
    p.add_argument("--limit", type=int, help="first N documents of each task (default: all)")
    p.add_argument("--data-dir", help="folder of local task files (layout above); default: the hub")
    p.add_argument("--task-file", action="append", default=[], metavar="TASK=PATH",
                   help="local file for one task (repeatable)")  # fmt: skip
    p.add_argument("--include", action="append", default=[], metavar="YAML", help="extra task YAML file(s)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass (default: 32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when available)")  # fmt: skip
    p.add_argument("--tokenizer", help="tokenizer.json, for a checkpoint that carries no tokenizer")
    p.add_argument("--eos-token", default=None, help="end-of-text token of --tokenizer (default: <|endoftext|>)")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--tensorboard", help="also log eval/<task>/<metric> scalars to this TensorBoard folder")
    dm = p.add_argument_group("masked-diffusion checkpoints")
    dm.add_argument("--mc-num", type=int, default=128, help="Monte-Carlo samples per ELBO (default: 128)")
    dm.add_argument("--seed", type=int, default=0, help="seed of the ELBO masks and of code-task sampling")
    code = p.add_argument_group("code tasks (humaneval, mbpp)")
    code.add_argument("--n-samples", type=int, default=1, help="completions per problem")
    code.add_argument("--k", default="1", help="comma-separated k of pass@k (default: 1)")
    code.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    code.add_argument("--max-new-tokens", type=int, default=1024,
                      help="tokens per completion at most, as the harness (lowered to fit the context)")  # fmt: skip
    code.add_argument("--format", default="none", help="prompt format (see zoo generate --format)")
    code.add_argument("--timeout", type=float, default=10.0, help="seconds per program run")
    code.add_argument("--workers", type=int, default=None, help="programs run at once (default: the CPU count)")
    code.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per program, MiB")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, OSError) as err:
        print(f"zoo eval: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_table(report))


def parse_k(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise ValueError(f"--k {text!r}: give positive integers separated by commas, e.g. --k 1,10")
    return ks


def parse_task_files(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--task-file {item!r}: write it as TASK=PATH, e.g. --task-file arc_easy=arc.jsonl")
        out[name] = path
    return out


def run(args: argparse.Namespace) -> dict:
    from zoo.eval.metrics import evaluate
    from zoo.eval.tasks import resolve

    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    code_names = [n for n in names if n in CODE_TASKS]
    ks = parse_k(args.k)
    if code_names and args.n_samples > 1 and args.temperature == 0:
        raise ValueError(
            f"--n-samples {args.n_samples} with --temperature 0: greedy samples are all the same, so pass@k would "
            "equal pass@1; sample with --temperature > 0 (e.g. 0.8) or use --n-samples 1"
        )
    tasks, groups = resolve([n for n in names if n not in CODE_TASKS], extra_files=args.include)
    task_files = parse_task_files(args.task_file)
    model, tokenizer, eos, step = load_model(args.ckpt, device=args.device, tokenizer_path=args.tokenizer,
                                             eos_token=args.eos_token, trust=args.trust_checkpoint)  # fmt: skip
    scorer = make_scorer(model, tokenizer, eos, batch_size=args.batch_size, mc_num=args.mc_num, seed=args.seed)
    report = {"results": {}, "elbo": scorer.elbo}
    if tasks:
        report = evaluate(tasks, scorer, groups=groups, data_dir=args.data_dir, task_files=task_files,
                          limit=args.limit, log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    for name in code_names:
        from zoo.eval.code import evaluate_code

        scores = evaluate_code(model=model, tokenizer=tokenizer, eos_token=eos, task=name, data_dir=args.data_dir,
                               limit=args.limit, n_samples=args.n_samples, k=ks, temperature=args.temperature,
                               max_new_tokens=args.max_new_tokens, prompt_format=args.format, timeout=args.timeout,
                               seed=args.seed, workers=args.workers, memory_bytes=args.memory_mb * 2**20,
                               log=lambda m: print(m, file=sys.stderr))  # fmt: skip
        n = scores.pop("n")
        report["results"][name] = {"n": n, **{m: {"value": v, "stderr": None} for m, v in scores.items()}}
    report.update({"checkpoint": args.ckpt, "global_step": step, "limit": args.limit,
                   "mc_num": args.mc_num if scorer.elbo else None})  # fmt: skip
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(args.tensorboard) as writer:
            for name, value in scalars(report["results"]).items():
                writer.add_scalar(name, value, step)
    return report


def format_table(report: dict) -> str:
    rows = [("task", "metric", "value", "stderr", "n")]
    for task, metrics in report["results"].items():
        for metric, entry in metrics.items():
            if metric == "n":
                continue
            se = entry["stderr"]
            rows.append((task, metric, f"{entry['value']:.4f}", "" if se is None or math.isnan(se) else f"{se:.4f}",
                         str(metrics.get("n", ""))))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if report.get("elbo"):
        lines.insert(0, f"masked-diffusion checkpoint: log-likelihoods are Monte-Carlo ELBO lower bounds "
                        f"(mc_num={report.get('mc_num')}), not exact")  # fmt: skip
    return "\n".join(lines)
