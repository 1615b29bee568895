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

or one file per task with ``--task-file arc_easy=path.jsonl``. With lm-evaluation-harness installed
(``pip install "zoo[eval]"``) any task, group or tag of its registry runs too, through :class:`zoo.eval.harness.ZooLM`
(``--engine auto``: zoo's own task where it has one, else the harness's; ``--include-path DIR`` adds task folders in
the harness's format; ``--data-dir`` points the harness's copies of zoo's tasks at the same local files).
A new multiple-choice task is a YAML file
(``--include my_task.yaml``; fields in :mod:`zoo.eval.tasks`). ``humaneval`` and ``mbpp`` generate code and run
its tests (:mod:`zoo.eval.code`) in bubblewrap's namespaces; without a usable bubblewrap they are refused unless
``--unsafe-no-sandbox``. Masked-diffusion checkpoints are scored with Monte-Carlo ELBO lower bounds
(``--mc-num``). Examples::

    python -m zoo eval --ckpt runs/quickstart/.../last.ckpt --tasks arc_easy,piqa,blimp --data-dir /data/eval
    python -m zoo eval --ckpt last.ckpt --tasks wikitext --limit 10 --output results.json --tensorboard runs/eval
    python -m zoo eval --ckpt last.ckpt --tasks arc_easy,gsm8k --engine harness --include-path my_tasks/
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from zoo.commands.errors import command
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
    p.add_argument("--engine", default="auto", choices=("native", "harness", "auto"),
                   help="native: zoo's tasks; harness: lm-eval's registry; auto (default): native where zoo has it")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="folder of task YAMLs in lm-eval's format (repeatable; harness engine)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (harness engine; default: the task's)")
    p.add_argument("--apply-chat-template", action="store_true",
                   help="render prompts in the model's SFT format (--chat-format; harness engine)")
    p.add_argument("--chat-format", help="SFT format of the model for --apply-chat-template: alpaca, user_assistant, "
                   "chat, none")
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
    code.add_argument("--unsafe-no-sandbox", action="store_true",
                      help="run generated programs even where bubblewrap cannot isolate them (not installed, user "
                      "namespaces disabled): they then run with resource limits only and can read your files, write "
                      "anywhere you can, reach the network and signal your processes. Default: refuse")  # fmt: skip
    return p


@command("eval")
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    report = run(args)  # a ValueError/OSError is printed as one line by zoo.commands.errors.run_command
    from zoo.eval.engines import format_table

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
    from zoo.eval.engines import evaluate_with_harness, split_by_engine
    from zoo.eval.metrics import evaluate
    from zoo.eval.tasks import resolve

    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    names, harness_names = split_by_engine(names, engine=args.engine, include_paths=args.include_path,
                                           extra_files=args.include)  # fmt: skip
    code_names = [n for n in names if n in CODE_TASKS]
    ks = parse_k(args.k)
    if code_names and args.n_samples > 1 and args.temperature == 0:
        raise ValueError(
            f"--n-samples {args.n_samples} with --temperature 0: greedy samples are all the same, so pass@k would "
            "equal pass@1; sample with --temperature > 0 (e.g. 0.8) or use --n-samples 1"
        )
    if code_names:  # no sandbox, no run: refused before the model is loaded
        from zoo.eval.sandbox import require_sandbox

        require_sandbox(unsafe_no_sandbox=args.unsafe_no_sandbox)
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
                               unsafe_no_sandbox=args.unsafe_no_sandbox,
                               log=lambda m: print(m, file=sys.stderr))  # fmt: skip
        n = scores.pop("n")
        report["results"][name] = {"n": n, **{m: {"value": v, "stderr": None} for m, v in scores.items()}}
    report["engines"] = {name: "native" for name in report["results"]}
    if harness_names:
        out = evaluate_with_harness(model, tokenizer, eos, harness_names, batch_size=args.batch_size,
                                    mc_num=args.mc_num, seed=args.seed, chat_format=args.chat_format,
                                    data_dir=args.data_dir, include_paths=args.include_path, limit=args.limit,
                                    num_fewshot=args.num_fewshot, apply_chat_template=args.apply_chat_template,
                                    log=lambda m: print(m, file=sys.stderr))  # fmt: skip
        report["results"].update(out["results"])
        report["engines"].update({name: "harness" for name in out["results"]})
        report["harness"] = out["harness"]
    report.update({"checkpoint": args.ckpt, "global_step": step, "limit": args.limit,
                   "mc_num": args.mc_num if scorer.elbo else None})  # fmt: skip
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2, default=str)
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(args.tensorboard) as writer:
            for name, value in scalars(report["results"]).items():
                writer.add_scalar(name, value, step)
    return report
