"""Three ways to evaluate one zoo checkpoint on the same local files: scores and wall time, in one run.

- ``native``: ``python -m zoo eval``'s engine (zoo's task definitions and metrics), for tasks zoo has;
- ``zoo-harness``: lm-evaluation-harness's ``simple_evaluate`` on :class:`zoo.eval.harness.ZooLM` (the checkpoint
  itself, zoo's scorer and decoding), for any task of the harness's registry;
- ``hf``: the same ``simple_evaluate`` with ``model="hf"`` on the checkpoint exported to a transformers directory
  (``zoo.interop.export``), the harness's reference path.

Tasks are found by their registered name (``winogrande`` lives in ``winogrande/default.yaml``); a task zoo knows the
``--data-dir`` layout of reads its local file through the harness's own ``dataset_path: json`` + ``data_files``,
any other through ``--include-path`` folders. ``gsm8k_fixture`` is a GSM8K-format task written here (seeded
arithmetic word problems, the harness's ``gsm8k`` prompt, stop sequences, filters and exact match, 3-shot,
``max_gen_toks`` 64): a generation task every side can run offline. Run offline; needs ``pip install -e ".[bench]"``::

    python benchmarks/eval_parity.py --ckpt runs/quickstart/.../last.ckpt --data-dir /data/eval --limit 200
    python benchmarks/eval_parity.py --smoke        # seconds: a 2-step tiny model, tiny files, every engine

Each side is timed end to end per task (loading the model, building the requests, scoring or generating); the
harness's task index, shared by both harness sides, is built once before the clock starts. Prints one row per
task and metric and the wall-time ratios ``hf / zoo-harness`` and ``hf / native``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets is imported: local files only, no hub retries
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TASKS = "arc_easy,hellaswag,winogrande,lambada_openai,wikitext,gsm8k_fixture"
HARNESS_METRIC = {"mc1": "acc", "mc2": "acc"}  # zoo metric name -> the harness's name for the same figure


def gsm8k_fixture(folder: Path, *, n_test: int, seed: int = 0) -> Path:
    """A task folder with ``gsm8k_fixture``: the harness's gsm8k YAML ``include``-d, its dataset replaced by
    seeded GSM8K-format problems (``question``, ``answer`` ending in ``#### N``)."""
    import lm_eval.tasks

    rng = random.Random(seed)
    templates = [
        ("{a} birds sit on a tree and {b} more arrive. How many birds are on the tree?", "+"),
        ("Sam has {a} coins and spends {b}. How many coins are left?", "-"),
        ("A box holds {a} pens. How many pens do {b} boxes hold?", "*"),
    ]

    def problem() -> dict:
        text, op = rng.choice(templates)
        a, b = rng.randint(2, 60), rng.randint(2, 9)
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return {"question": text.format(a=a, b=b), "answer": f"{a} {op} {b} = {value}\n#### {value}"}

    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 8), ("test", n_test)):
        with open(folder / f"gsm8k_fixture_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(problem()) + "\n" for _ in range(n))
    config = {
        "include": str(Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml"), "task": "gsm8k_fixture",
        "tag": [], "dataset_path": "json", "dataset_name": None, "num_fewshot": 3,
        "dataset_kwargs": {"data_files": {s: str(folder / f"gsm8k_fixture_{s}.jsonl") for s in ("train", "test")}},
        "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False, "temperature": 0.0,
                              "max_gen_toks": 64},
    }  # fmt: skip
    (folder / "gsm8k_fixture.yaml").write_text(json.dumps(config))
    return folder


def smoke_setup(work: Path) -> tuple[str, str]:
    """A 2-step tiny checkpoint and a --data-dir with two ARC questions and a two-article WikiText file."""
    from unittest.mock import patch

    from zoo.cli import ZooCLI

    tiny = ["--config", str(ROOT / "configs/quickstart.yaml"), "--trainer.max_steps", "2",
            "--model.schedule.init_args.warmup_steps", "1", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.enable_model_summary",
            "false", "--model.backbone.dim", "32", "--model.backbone.n_layers", "2", "--model.backbone.vocab_size",
            "300", "--model.backbone.block.init_args.ffn.init_args.hidden_dim", "64",
            "--model.backbone.block.init_args.attention.init_args.n_heads", "4",
            "--data.tokenizer.init_args.vocab_size", "300", "--data.tokenizer.init_args.cache_dir", str(work / "tok"),
            "--data.seq_len", "32", "--data.batch_size", "2",
            "--trainer.default_root_dir", str(work / "run")]  # fmt: skip
    with patch.object(sys, "argv", ["zoo"]):
        ZooCLI(args=["fit", *tiny])
    data = work / "data"
    (data / "arc").mkdir(parents=True)
    (data / "wikitext").mkdir()
    rows = [{"id": "a", "question": "Which is a gas?", "answerKey": "C",
             "choices": {"text": ["rock", "iron", "oxygen"], "label": ["A", "B", "C"]}},
            {"id": "b", "question": "What do plants need?", "answerKey": "1",
             "choices": {"text": ["light", "noise"], "label": ["1", "2"]}}]  # fmt: skip
    (data / "arc" / "ARC-Easy-test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "wikitext" / "wiki.test.raw").write_text(" = A = \n\n Alpha is a letter . \n = B = \n\n Beta follows . \n")
    return str(next((work / "run").rglob("last.ckpt"))), str(data)


def run_native(ckpt, name, *, data_dir, limit, batch_size):
    from zoo.eval.cli import load_model, make_scorer
    from zoo.eval.metrics import evaluate
    from zoo.eval.tasks import resolve

    tasks, groups = resolve([name])
    model, tokenizer, eos, _ = load_model(ckpt, device="cpu")
    report = evaluate(tasks, make_scorer(model, tokenizer, eos, batch_size=batch_size), groups=groups,
                      data_dir=data_dir, limit=limit)  # fmt: skip
    return report["results"][name]


def harness_spec(name, *, data_dir, work, include_paths):
    from zoo.eval.engines import local_task_yaml

    local = local_task_yaml(name, data_dir=data_dir, work=work, include_paths=include_paths) if data_dir else None
    return local or name


def run_zoo_harness(ckpt, name, *, data_dir, work, include_paths, limit, batch_size):
    from zoo.eval.engines import run_harness
    from zoo.eval.harness import ZooLM

    lm = ZooLM(pretrained=ckpt, batch_size=batch_size)
    out = run_harness(lm, [name], data_dir=data_dir, work=work, include_paths=include_paths, limit=limit,
                      bootstrap_iters=0)  # fmt: skip
    return out["results"][name]


def run_hf(hf_dir, name, *, data_dir, work, include_paths, limit, batch_size):
    import lm_eval

    from zoo.eval.engines import harness_results, task_manager

    spec = harness_spec(name, data_dir=data_dir, work=work, include_paths=include_paths)
    out = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": hf_dir, "dtype": "float32", "device": "cpu"},
                                  tasks=[spec], task_manager=task_manager(include_paths), limit=limit,
                                  batch_size=batch_size, bootstrap_iters=0, log_samples=False)  # fmt: skip
    return harness_results(out)[name]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs), time.perf_counter() - start
    except ValueError as err:  # a task without local files offline: reported, the others go on
        print(f"  skipped: {err}", file=sys.stderr)
        return None, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="zoo checkpoint (default: the newest runs/quickstart/**/last.ckpt)")
    p.add_argument("--data-dir", help="local task files (zoo eval --data-dir layout)")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"registered names (default: {DEFAULT_TASKS})")
    p.add_argument("--include-path", action="append", default=[], help="extra harness task folders")
    p.add_argument("--limit", type=int, default=200, help="documents per task (default: 200)")
    p.add_argument("--task-limit", action="append", default=[], metavar="TASK=N", help="limit for one task")
    p.add_argument("--engines", default="native,zoo-harness,hf", help="which sides to run (default: all three)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of every side (default: 32)")
    p.add_argument("--gsm8k-problems", type=int, default=50, help="problems in gsm8k_fixture (default: 50)")
    p.add_argument("--smoke", action="store_true", help="seconds: tiny model and files, arc_easy+wikitext+gsm8k")
    p.add_argument("--json", help="also write the rows and times as JSON here")
    args = p.parse_args()

    from zoo.eval.engines import native_names, task_manager
    from zoo.interop.export import export

    engines = [e for e in args.engines.split(",") if e]
    limits = {k: int(v) for k, _, v in (item.partition("=") for item in args.task_limit)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, data_dir, names = args.ckpt, args.data_dir, [n for n in args.tasks.split(",") if n]
        if args.smoke:
            ckpt, data_dir = smoke_setup(work)
            names, args.limit, args.gsm8k_problems = ["arc_easy", "wikitext", "gsm8k_fixture"], 2, 2
        if ckpt is None:
            found = sorted(glob.glob(str(ROOT / "runs/quickstart/**/last.ckpt"), recursive=True), key=os.path.getmtime)
            if not found:
                sys.exit("no runs/quickstart/**/last.ckpt: train one (python -m zoo fit --config "
                         "configs/quickstart.yaml) or pass --ckpt")  # fmt: skip
            ckpt = found[-1]
        include = [*args.include_path, str(gsm8k_fixture(work / "gsm8k", n_test=args.gsm8k_problems))]
        task_manager(include)  # the index both harness sides share, built before the clock
        hf_dir = str(export(ckpt, str(work / "hf"))) if "hf" in engines else None
        native = native_names()
        rows, seconds = [], {e: {} for e in engines}
        for name in names:
            limit = limits.get(name, args.limit)
            print(f"{name} (limit {limit})", file=sys.stderr)
            common = {"data_dir": data_dir, "work": work / name, "include_paths": include, "limit": limit,
                      "batch_size": args.batch_size}  # fmt: skip
            got = {}
            if "native" in engines and name in native and data_dir:
                got["native"], seconds["native"][name] = timed(run_native, ckpt, name, data_dir=data_dir, limit=limit,
                                                               batch_size=args.batch_size)  # fmt: skip
            if "zoo-harness" in engines:
                got["zoo-harness"], seconds["zoo-harness"][name] = timed(run_zoo_harness, ckpt, name, **common)
            if "hf" in engines:
                got["hf"], seconds["hf"][name] = timed(run_hf, hf_dir, name, **common)
            reference = got.get("hf") or got.get("zoo-harness") or got.get("native")  # the harness's metric names
            if reference is None:
                continue
            for metric in reference:
                if metric == "n":
                    continue
                row = {"task": name, "metric": metric, "n": reference.get("n")}
                for engine, result in got.items():
                    key = metric if engine != "native" else next(
                        (m for m in result or {} if HARNESS_METRIC.get(m, m) == metric), metric)  # fmt: skip
                    row[engine] = (result or {}).get(key, {}).get("value")
                rows.append(row)
            print(f"  {', '.join(f'{e} {s:.1f} s' for e, s in ((e, seconds[e].get(name)) for e in engines) if s)}",
                  file=sys.stderr)  # fmt: skip
    print_report(rows, seconds, engines, ckpt)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "seconds": seconds, "ckpt": ckpt}, indent=2))


def print_report(rows, seconds, engines, ckpt) -> None:
    def cell(v):
        return "—" if v is None else f"{v:.6f}"

    print(f"checkpoint: {ckpt}")
    print(f"| task | metric | n | {' | '.join(engines)} |")
    print(f"|---|---|---:|{'---:|' * len(engines)}")
    for r in rows:
        print(f"| {r['task']} | {r['metric']} | {r['n']} | {' | '.join(cell(r.get(e)) for e in engines)} |")
    print()
    print(f"| task | {' | '.join(f'{e} (s)' for e in engines)} | hf / zoo-harness | hf / native |")
    print(f"|---|{'---:|' * (len(engines) + 2)}")
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for task in [*tasks, "total"]:
        chosen = tasks if task == "total" else [task]
        times = {e: sum(seconds[e].get(t) or 0 for t in chosen) for e in engines}
        ratios = []
        for e in ("zoo-harness", "native"):  # over the tasks both sides ran
            both = [t for t in chosen if seconds.get("hf", {}).get(t) and seconds.get(e, {}).get(t)]
            mine = sum(seconds[e][t] for t in both) if both else 0
            ratios.append(f"{sum(seconds['hf'][t] for t in both) / mine:.2f}x" if mine else "—")
        print(f"| {task} | {' | '.join('—' if not times[e] else f'{times[e]:.1f}' for e in engines)} | "
              f"{' | '.join(ratios)} |")  # fmt: skip


if __name__ == "__main__":
    main()
