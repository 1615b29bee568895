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

Each side loads its model once (timed as ``(load)``), then each task is timed end to end (reading the files,
building the requests, scoring or generating, the metrics); the harness's task index, shared by both harness
sides, is built once before the clock starts. Prints one row per
task and metric, the wall-time ratios ``hf / zoo-harness`` and ``hf / native``, and the time spent inside each
harness side's model calls (the rest of a harness run, reading files and building requests and metrics, is the
same work on both sides).
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

    from zoo.cli import main as zoo

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
        zoo(["fit", *tiny])
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


def load_native(ckpt, *, batch_size):
    from zoo.eval.checkpoint import load_model, make_scorer

    model, tokenizer, eos, _ = load_model(ckpt, device="cpu")
    return make_scorer(model, tokenizer, eos, batch_size=batch_size)


def run_native(scorer, name, *, data_dir, limit, **_):
    from zoo.eval.metrics import evaluate
    from zoo.eval.tasks import resolve

    tasks, groups = resolve([name])
    return evaluate(tasks, scorer, groups=groups, data_dir=data_dir, limit=limit)["results"][name]


def load_zoo_harness(ckpt, *, batch_size):
    from zoo.eval.harness import ZooLM

    return instrument(ZooLM(pretrained=ckpt, batch_size=batch_size))


def load_hf(hf_dir, *, batch_size):
    from lm_eval.api.registry import get_model

    return instrument(get_model("hf").create_from_arg_obj({"pretrained": hf_dir, "dtype": "float32", "device": "cpu",
                                                           "batch_size": batch_size}))  # fmt: skip


def instrument(lm):
    """Time the model's own calls (the three request types) on top of the harness's work around them."""
    lm.model_seconds = 0.0

    def timer(call):
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                lm.model_seconds += time.perf_counter() - start

        return timed_call

    for method in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        setattr(lm, method, timer(getattr(lm, method)))
    return lm


def run_harness_side(lm, name, *, data_dir, work, include_paths, limit):
    """One task through ``simple_evaluate`` on ``lm`` (ZooLM or the harness's HFLM), local files where zoo knows
    them (:func:`zoo.eval.engines.run_harness`)."""
    from zoo.eval.engines import run_harness

    before = lm.model_seconds
    out = run_harness(lm, [name], data_dir=data_dir, work=work, include_paths=include_paths, limit=limit,
                      bootstrap_iters=0)  # fmt: skip
    return {**out["results"][name], "model_seconds": lm.model_seconds - before}


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs), time.perf_counter() - start
    except Exception as err:  # e.g. a task without local files offline: reported, the others go on
        print(f"  skipped: {type(err).__name__}: {err}", file=sys.stderr)
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
        loaders = {"native": (load_native, ckpt), "zoo-harness": (load_zoo_harness, ckpt), "hf": (load_hf, hf_dir)}
        runners = {"native": run_native, "zoo-harness": run_harness_side, "hf": run_harness_side}
        models, seconds, model_seconds = {}, {e: {} for e in engines}, {e: {} for e in engines}
        for engine in engines:  # once per engine, as one `zoo eval` or `lm_eval` run loads its model once
            load, source = loaders[engine]
            models[engine], seconds[engine]["(load)"] = timed(load, source, batch_size=args.batch_size)
        rows = []
        for name in names:
            limit = limits.get(name, args.limit)
            print(f"{name} (limit {limit})", file=sys.stderr)
            got = {}
            for engine in engines:
                if engine == "native" and (name not in native or not data_dir):
                    continue
                got[engine], seconds[engine][name] = timed(runners[engine], models[engine], name, data_dir=data_dir,
                                                           work=work / engine / name, include_paths=include,
                                                           limit=limit)  # fmt: skip
            reference = got.get("hf") or got.get("zoo-harness") or got.get("native")  # the harness's metric names
            if reference is None:
                continue
            for engine, result in got.items():
                if result and "model_seconds" in result:
                    model_seconds[engine][name] = result["model_seconds"]
            for metric in reference:
                if metric in ("n", "model_seconds"):
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
    harness_sides = [e for e in ("zoo-harness", "hf") if e in engines]
    if harness_sides:
        print("\ntime inside the model's calls (loglikelihood, loglikelihood_rolling, generate_until), seconds:")
        print(f"| task | {' | '.join(harness_sides)} | ratio |\n|---|{'---:|' * (len(harness_sides) + 1)}")
        for task in [*model_seconds[harness_sides[0]], "total"]:
            values = [sum(model_seconds[e].values()) if task == "total" else model_seconds[e].get(task)
                      for e in harness_sides]  # fmt: skip
            ratio = f"{values[-1] / values[0]:.2f}x" if len(values) == 2 and all(values) else "—"
            print(f"| {task} | {' | '.join('—' if v is None else f'{v:.1f}' for v in values)} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "seconds": seconds, "model_seconds": model_seconds,
                                               "ckpt": ckpt}, indent=2))  # fmt: skip


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
    for task in ["(load)", *tasks, "total"]:
        chosen = ["(load)", *tasks] if task == "total" else [task]
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
