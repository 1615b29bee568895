"""``zoo eval`` against lm-evaluation-harness on the same model and the same local files: scores and wall time.

The zoo checkpoint is exported to a transformers directory (``zoo.interop.export``), which the harness evaluates
with ``model="hf"``; zoo evaluates the checkpoint itself. Both read the task files under ``--data-dir`` (the
layout of ``python -m zoo eval --data-dir``): the harness through its own task YAMLs (``include``-d, so prompts,
choices, targets and metrics are the harness's) with the dataset pointed at JSONL copies of those files in the
hub's schema. Run offline; needs ``pip install -e ".[bench]"``::

    python benchmarks/eval_parity.py --ckpt runs/quickstart/.../last.ckpt --data-dir /data/eval --limit 50

Prints one row per task and metric (zoo, harness, difference in points) and the wall-time ratio (each side end
to end: loading the model and the files, building requests, scoring).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets is imported: local files only, no hub retries
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TASKS = "arc_easy,arc_challenge,piqa,truthfulqa_mc1,truthfulqa_mc2,blimp,wikitext"
# zoo metric name -> the harness's name for the same figure
HARNESS_METRIC = {"mc1": "acc", "mc2": "acc"}


def harness_configs(tasks, data_dir: str, work: Path) -> list[str]:
    """One YAML per task: the harness's own task file ``include``-d, its dataset replaced by a local JSONL."""
    import lm_eval.tasks

    from zoo.eval.tasks import read_local

    harness_dir = Path(lm_eval.tasks.__file__).parent
    paths = []
    for task in tasks:
        local = task.local
        rows = read_local(os.path.join(data_dir, local["path"]), reader=local.get("reader"))
        data = work / f"{task.name}.jsonl"
        with open(data, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        found = [p for p in harness_dir.rglob(f"{task.name}.yaml")]
        if task.group == "blimp":
            found = [harness_dir / "blimp" / f"{task.name.removeprefix('blimp_')}.yaml"]
        assert len(found) == 1, (task.name, found)
        split_key = {"arc": "test_split", "wikitext": "test_split"}.get(task.name.split("_")[0], "validation_split")
        config = {
            "include": str(found[0]),
            "task": f"{task.name}_local",
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"eval": str(data)}},
            "training_split": None,
            "validation_split": None,
            "test_split": None,
            split_key: "eval",
        }
        path = work / f"{task.name}_local.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        paths.append(str(path))
    return paths


def run_harness(hf_dir: str, configs: list[str], *, limit, batch_size: int) -> tuple[dict, float]:
    import lm_eval

    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": hf_dir, "dtype": "float32", "device": "cpu"},
        tasks=configs,
        limit=limit,
        batch_size=batch_size,
        bootstrap_iters=0,
        log_samples=False,
    )
    return out["results"], time.perf_counter() - start


def run_zoo(ckpt: str, tasks, groups, *, data_dir: str, limit, batch_size: int) -> tuple[dict, float]:
    from zoo.eval.checkpoint import load_model, make_scorer
    from zoo.eval.metrics import evaluate

    start = time.perf_counter()
    model, tokenizer, eos, _ = load_model(ckpt, device="cpu")
    scorer = make_scorer(model, tokenizer, eos, batch_size=batch_size)
    report = evaluate(tasks, scorer, groups=groups, data_dir=data_dir, limit=limit)
    return report["results"], time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="zoo checkpoint (default: the newest runs/quickstart/**/last.ckpt)")
    p.add_argument("--data-dir", required=True, help="local task files (zoo eval --data-dir layout)")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated (default: {DEFAULT_TASKS})")
    p.add_argument("--limit", type=int, default=50, help="documents per task (default: 50)")
    p.add_argument("--blimp-limit", type=int, default=None, help="documents per BLiMP paradigm (default: --limit)")
    p.add_argument("--wikitext-limit", type=int, default=None, help="WikiText articles (default: --limit)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of both (default: 32)")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args()

    ckpt = args.ckpt
    if ckpt is None:
        found = sorted(glob.glob(str(ROOT / "runs/quickstart/**/last.ckpt"), recursive=True), key=os.path.getmtime)
        if not found:
            sys.exit("no runs/quickstart/**/last.ckpt: train one (python -m zoo fit --config configs/quickstart.yaml) "
                     "or pass --ckpt")  # fmt: skip
        ckpt = found[-1]

    from zoo.eval.tasks import resolve
    from zoo.interop.export import export

    names = [n for n in args.tasks.split(",") if n]
    limits = {"blimp": args.blimp_limit, "wikitext": args.wikitext_limit}
    rows, zoo_seconds, harness_seconds = [], 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hf_dir = str(export(ckpt, str(work / "hf")))
        for name in names:  # one task (or group) at a time, each with its own limit
            tasks, groups = resolve([name])
            limit = limits.get(name) or args.limit
            zoo_results, seconds = run_zoo(ckpt, tasks, groups, data_dir=args.data_dir, limit=limit,
                                           batch_size=args.batch_size)  # fmt: skip
            zoo_seconds += seconds
            harness_results, seconds = run_harness(hf_dir, harness_configs(tasks, args.data_dir, work), limit=limit,
                                                   batch_size=args.batch_size)  # fmt: skip
            harness_seconds += seconds
            report_name = name if name in groups else tasks[0].name
            zoo_entry = zoo_results[report_name]
            for metric, entry in zoo_entry.items():
                if metric == "n":
                    continue
                key = f"{HARNESS_METRIC.get(metric, metric)},none"
                values = [harness_results[f"{t.name}_local"][key] for t in tasks]
                theirs = sum(values) / len(values)  # a group: the unweighted mean of its tasks, as the harness's
                rows.append({"task": report_name, "metric": metric, "n": zoo_entry["n"], "zoo": entry["value"],
                             "harness": theirs})  # fmt: skip
            print(f"{name}: zoo {zoo_seconds:.1f} s, harness {harness_seconds:.1f} s so far", file=sys.stderr)
    print(f"checkpoint: {ckpt}")
    print("| task | metric | n | zoo | lm-eval | diff (points) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        scale = 100.0 if "perplexity" not in r["metric"] and r["metric"] != "bits_per_byte" else 1.0
        diff = (r["zoo"] - r["harness"]) * scale
        print(f"| {r['task']} | {r['metric']} | {r['n']} | {r['zoo']:.6f} | {r['harness']:.6f} | {diff:+.4f} |")
    print(f"\nwall time: zoo {zoo_seconds:.1f} s, lm-eval {harness_seconds:.1f} s, "
          f"speedup {harness_seconds / zoo_seconds:.2f}x")  # fmt: skip
    if args.json:
        summary = {"rows": rows, "zoo_seconds": zoo_seconds, "harness_seconds": harness_seconds, "ckpt": ckpt}
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
