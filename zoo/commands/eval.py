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

import json
import sys
from typing import Literal

import torch

from zoo.commands.errors import command
from zoo.commands.options import add_trust_flag, command_parser
from zoo.eval.checkpoint import load_model, make_scorer, scalars
from zoo.eval.tasks import CODE_TASKS


def parser():
    p = command_parser("zoo eval", __doc__, run, skip={"trust_checkpoint"})
    add_trust_flag(p)
    return p


@command("eval")
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.pop("config", None)
    report = run(**vars(args))  # a ValueError/OSError is printed as one line by zoo.commands.errors.run_command
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


def run(
    *,
    ckpt: str,
    tasks: str,
    trust_checkpoint: bool | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
    task_file: list[str] = [],  # noqa: B006  (read only; jsonargparse shows it as the default)
    include: list[str] = [],  # noqa: B006
    batch_size: int = 32,
    device: str | None = None,
    tokenizer: str | None = None,
    eos_token: str | None = None,
    engine: Literal["native", "harness", "auto"] = "auto",
    include_path: list[str] = [],  # noqa: B006
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    chat_format: str | None = None,
    output: str | None = None,
    tensorboard: str | None = None,
    mc_num: int = 128,
    seed: int = 0,
    n_samples: int = 1,
    k: str = "1",
    temperature: float = 0.0,
    max_new_tokens: int = 1024,
    format: str = "none",
    timeout: float = 10.0,
    workers: int | None = None,
    memory_mb: int = 1024,
    unsafe_no_sandbox: bool = False,
) -> dict:
    """Score a checkpoint on tasks; returns the report ``--output`` writes.

    Args:
        ckpt: checkpoint written by `python -m zoo fit`
        tasks: comma-separated task or group names (e.g. arc_easy,piqa,blimp)
        trust_checkpoint: unpickle the checkpoint in full (see --help of --trust-checkpoint)
        limit: first N documents of each task (default: all)
        data_dir: folder of local task files (layout above); default: the hub
        task_file: local file for one task, TASK=PATH (repeatable)
        include: extra task YAML file (repeatable)
        batch_size: sequences per forward pass
        device: cpu or cuda (default: cuda when available)
        tokenizer: tokenizer.json, for a checkpoint that carries no tokenizer
        eos_token: end-of-text token of --tokenizer (default: <|endoftext|>)
        engine: native: zoo's tasks; harness: lm-eval's registry; auto: native where zoo has it
        include_path: folder of task YAMLs in lm-eval's format (repeatable; harness engine)
        num_fewshot: few-shot examples per prompt (harness engine; default: the task's)
        apply_chat_template: render prompts in the model's SFT format (--chat-format; harness engine)
        chat_format: SFT format of the model for --apply-chat-template: alpaca, user_assistant, chat, none
        output: write the results as JSON here
        tensorboard: also log eval/<task>/<metric> scalars to this TensorBoard folder
        mc_num: masked-diffusion checkpoints: Monte-Carlo samples per ELBO
        seed: seed of the ELBO masks and of code-task sampling
        n_samples: code tasks (humaneval, mbpp): completions per problem
        k: code tasks: comma-separated k of pass@k
        temperature: code tasks: sampling temperature (0 = greedy)
        max_new_tokens: code tasks: tokens per completion at most, as the harness (lowered to fit the context)
        format: code tasks: prompt format (see zoo generate --format)
        timeout: code tasks: seconds per program run
        workers: code tasks: programs run at once (default: the CPU count)
        memory_mb: code tasks: address-space limit per program, MiB
        unsafe_no_sandbox: code tasks: run generated programs even where bubblewrap cannot isolate them (not
            installed, user namespaces disabled): they then run with resource limits only and can read your files,
            write anywhere you can, reach the network and signal your processes. Default: refuse
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from zoo.eval.engines import evaluate_with_harness, split_by_engine
    from zoo.eval.metrics import evaluate
    from zoo.eval.tasks import resolve

    names = [n.strip() for n in tasks.split(",") if n.strip()]
    names, harness_names = split_by_engine(names, engine=engine, include_paths=include_path,
                                           extra_files=include)  # fmt: skip
    code_names = [n for n in names if n in CODE_TASKS]
    ks = parse_k(k)
    if code_names and n_samples > 1 and temperature == 0:
        raise ValueError(
            f"--n-samples {n_samples} with --temperature 0: greedy samples are all the same, so pass@k would "
            "equal pass@1; sample with --temperature > 0 (e.g. 0.8) or use --n-samples 1"
        )
    if code_names:  # no sandbox, no run: refused before the model is loaded
        from zoo.eval.sandbox import require_sandbox

        require_sandbox(unsafe_no_sandbox=unsafe_no_sandbox)
    tasks, groups = resolve([n for n in names if n not in CODE_TASKS], extra_files=include)
    task_files = parse_task_files(task_file)
    model, tokenizer, eos, step = load_model(ckpt, device=device, tokenizer_path=tokenizer,
                                             eos_token=eos_token, trust=trust_checkpoint)  # fmt: skip
    scorer = make_scorer(model, tokenizer, eos, batch_size=batch_size, mc_num=mc_num, seed=seed)
    report = {"results": {}, "elbo": scorer.elbo}
    if tasks:
        report = evaluate(tasks, scorer, groups=groups, data_dir=data_dir, task_files=task_files,
                          limit=limit, log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    for name in code_names:
        from zoo.eval.code import evaluate_code

        scores = evaluate_code(model=model, tokenizer=tokenizer, eos_token=eos, task=name, data_dir=data_dir,
                               limit=limit, n_samples=n_samples, k=ks, temperature=temperature,
                               max_new_tokens=max_new_tokens, prompt_format=format, timeout=timeout,
                               seed=seed, workers=workers, memory_bytes=memory_mb * 2**20,
                               unsafe_no_sandbox=unsafe_no_sandbox,
                               log=lambda m: print(m, file=sys.stderr))  # fmt: skip
        n = scores.pop("n")
        report["results"][name] = {"n": n, **{m: {"value": v, "stderr": None} for m, v in scores.items()}}
    report["engines"] = {name: "native" for name in report["results"]}
    if harness_names:
        out = evaluate_with_harness(model, tokenizer, eos, harness_names, batch_size=batch_size,
                                    mc_num=mc_num, seed=seed, chat_format=chat_format,
                                    data_dir=data_dir, include_paths=include_path, limit=limit,
                                    num_fewshot=num_fewshot, apply_chat_template=apply_chat_template,
                                    log=lambda m: print(m, file=sys.stderr))  # fmt: skip
        report["results"].update(out["results"])
        report["engines"].update({name: "harness" for name in out["results"]})
        report["harness"] = out["harness"]
    report.update({"checkpoint": ckpt, "global_step": step, "limit": limit,
                   "mc_num": mc_num if scorer.elbo else None})  # fmt: skip
    if output:
        with open(output, "w") as f:
            json.dump(report, f, indent=2, default=str)
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(tensorboard) as writer:
            for name, value in scalars(report["results"]).items():
                writer.add_scalar(name, value, step)
    return report
