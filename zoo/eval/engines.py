"""Two engines behind ``python -m zoo eval``: zoo's own tasks (native) and lm-evaluation-harness's registry.

- ``native``: the tasks under ``zoo/eval/tasks/`` and the code tasks, scored by :mod:`zoo.eval.metrics`; no
  lm-eval needed, the fastest path.
- ``harness``: any task, group or tag of the harness's registry (and of ``--include-path`` folders), run by
  ``lm_eval.simple_evaluate`` on :class:`zoo.eval.harness.ZooLM` (``pip install "zoo[eval]"``).
- ``auto``: native where zoo has the task, else the harness.

Both produce ``{task: {"n": documents, metric: {"value", "stderr"}}}`` and land in one report and one table.

Offline, a harness task reads local files through the harness's own mechanism: a task YAML that ``include``-s the
registered one and replaces its dataset by ``dataset_path: json`` with ``dataset_kwargs: {data_files: ...}``.
:func:`local_task_yaml` writes such a file for every task zoo knows the local layout of (``--data-dir``); for any
other task, write it by hand (README, "Evaluating offline") and pass its folder with ``--include-path``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

ENGINES = ("native", "harness", "auto")
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")
_MANAGERS: dict[tuple[str, ...], object] = {}


def harness_installed() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def task_manager(include_paths: Sequence[str] = ()):
    """The harness's ``TaskManager`` over its own tasks and ``include_paths`` (built once per set of paths: it
    indexes some thousands of YAML files)."""
    key = tuple(str(p) for p in include_paths)
    if key not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        for path in key:
            if not os.path.isdir(path):
                raise ValueError(f"--include-path {path}: not a folder (give a folder of task YAML files)")
        _MANAGERS[key] = TaskManager(include_path=list(key) or None)
    return _MANAGERS[key]


def native_names(extra_files: Sequence[str] = ()) -> set[str]:
    """Every task and group name the native engine knows."""
    from zoo.eval.tasks import CODE_TASKS, builtin_tasks, groups, tasks_from_yaml

    registry = builtin_tasks()
    for path in extra_files:
        registry.update({t.name: t for t in tasks_from_yaml(Path(path).read_text(encoding="utf-8"), source=path)})
    return set(registry) | set(groups(registry)) | set(CODE_TASKS)


def split_by_engine(names: Sequence[str], *, engine: str, include_paths: Sequence[str] = (),
                    extra_files: Sequence[str] = ()) -> tuple[list[str], list[str]]:  # fmt: skip
    """``(native names, harness names)`` for the requested names. An unknown name raises a ValueError listing
    the closest names of both engines."""
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "harness" and not harness_installed():
        raise ValueError('--engine harness needs lm-evaluation-harness: pip install "zoo[eval]" (or lm-eval)')
    if include_paths and not harness_installed():
        raise ValueError('--include-path needs lm-evaluation-harness: pip install "zoo[eval]" (or lm-eval)')
    native = native_names(extra_files)
    out_native = [n for n in names if engine != "harness" and n in native]
    rest = [n for n in names if n not in out_native]
    harness: set[str] = set()
    if rest and harness_installed():  # the registry's index takes seconds to build: only when a name needs it
        harness = set(task_manager(include_paths).all_tasks)
    for name in rest:
        if engine == "native" or name not in harness:
            raise ValueError(unknown_task_message(name, engine=engine, native=native, harness=harness))
    return out_native, rest


def unknown_task_message(name: str, *, engine: str, native: set[str], harness: set[str]) -> str:
    parts = [f"unknown task {name!r} (--engine {engine})"]
    close_native = difflib.get_close_matches(name, sorted(native), n=5, cutoff=0.6)
    parts.append(f"closest in zoo's tasks: {', '.join(close_native) or 'none'}")
    if harness:
        close_harness = difflib.get_close_matches(name, sorted(harness), n=5, cutoff=0.6)
        parts.append(f"closest in lm-eval's registry: {', '.join(close_harness) or 'none'}")
    elif harness_installed():
        parts.append("lm-eval's registry was not searched (--engine native)")
    else:
        parts.append('lm-eval is not installed (pip install "zoo[eval]" adds its registry)')
    if name in native and engine == "harness":
        parts.append("zoo has it: use --engine native or auto")
    elif name in harness and engine == "native":
        parts.append("lm-eval has it: use --engine harness or auto")
    return "; ".join(parts)


def local_task_yaml(name: str, *, data_dir: str, work: str | os.PathLike, include_paths: Sequence[str] = ()):
    """A task YAML in ``work`` that runs the harness's task ``name`` on the local file of zoo's ``--data-dir``
    layout (rows in the hub's schema, so the harness's own prompts and processing apply), or ``None`` when zoo
    knows no local file for it or the file is absent. The YAML ``include``-s the registered task and replaces
    its dataset by ``dataset_path: json`` + ``data_files``; the evaluated split is the one the task names."""
    from zoo.eval.datasets import read_local
    from zoo.eval.tasks import builtin_tasks

    task = builtin_tasks().get(name)
    entry = task_manager(include_paths).task_index.get(name)
    if task is None or task.local is None or entry is None or entry.yaml_path is None:
        return None
    path = os.path.join(data_dir, task.local["path"])
    if not os.path.exists(path):
        return None
    rows = read_local(path, reader=task.local.get("reader"))
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"{name}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    cfg = entry.cfg or {}
    split = "test_split" if cfg.get("test_split") else "validation_split"
    config = {
        "include": str(entry.yaml_path), "task": name, "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"eval": str(data)}}, "training_split": None, "validation_split": None,
        "test_split": None, split: "eval",
    }  # fmt: skip
    yaml_path = work / f"{name}.yaml"
    yaml_path.write_text(json.dumps(config))  # JSON is YAML
    return str(yaml_path)


def hub_datasets(names: Sequence[str], include_paths: Sequence[str] = ()) -> dict[str, tuple[str, str | None]]:
    """``{task: (dataset_path, dataset_name)}`` of the requested harness tasks (and of a group's or tag's
    direct members) that load a dataset from the hub rather than from local files."""
    manager = task_manager(include_paths)
    out: dict[str, tuple[str, str | None]] = {}
    for name in names:
        entry = manager.task_index.get(name)
        cfg = (entry.cfg or {}) if entry is not None else {}
        members = [name] if "dataset_path" in cfg else [
            n for n, e in manager.task_index.items() if name in (e.tags or set()) or name == (e.cfg or {}).get("group")
        ]  # fmt: skip
        for member in members:
            mcfg = (manager.task_index[member].cfg or {}) if member in manager.task_index else {}
            path = mcfg.get("dataset_path")
            if isinstance(path, str) and path not in LOCAL_BUILDERS and not os.path.isdir(path):
                out[member] = (path, mcfg.get("dataset_name"))
    return out


def offline_message(tasks: dict[str, tuple[str, str | None]], cause: str) -> str:
    listed = "; ".join(f"{t}: {p}" + (f" ({n})" if n else "") for t, (p, n) in list(tasks.items())[:8])
    more = f" and {len(tasks) - 8} more" if len(tasks) > 8 else ""
    example = next(iter(tasks), "TASK")
    return (
        f"cannot load the harness's datasets from the hub ({cause}): {listed}{more}. Offline, point each task at "
        f"local files: --data-dir DIR for tasks zoo knows the layout of, or a YAML file in a folder given with "
        f"--include-path, e.g. {{include: <lm_eval/tasks/.../{example}.yaml>, task: {example}, dataset_path: json, "
        f"dataset_name: null, dataset_kwargs: {{data_files: {{test: /path/{example}.jsonl}}}}, test_split: test}} "
        f"(rows in the hub dataset's fields)"
    )


def run_harness(lm, names: Sequence[str], *, data_dir: str | None = None, work: str | os.PathLike,
                include_paths: Sequence[str] = (), limit: int | None = None, num_fewshot: int | None = None,
                apply_chat_template: bool = False, bootstrap_iters: int = 100,
                log: Callable[[str], None] = lambda m: None) -> dict:  # fmt: skip
    """Harness tasks on ``lm`` (a :class:`zoo.eval.harness.ZooLM`) in zoo's result format, with the harness's
    own output under ``"harness"`` (task versions, n-shot, higher_is_better)."""
    import lm_eval

    from zoo.data import hub

    specs, remote = [], []
    for name in names:
        local = local_task_yaml(name, data_dir=data_dir, work=work, include_paths=include_paths) if data_dir else None
        specs.append(local or name)
        if local is None:
            remote.append(name)
    needs_hub = hub_datasets(remote, include_paths) if remote else {}
    if needs_hub and hub.hub_unreachable():
        # the hub client retries an unreachable host for a long time per dataset; a 3-second probe says it all
        raise ValueError(offline_message(needs_hub, "huggingface.co is unreachable"))
    log(f"lm-eval: {', '.join(map(str, names))}")
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=specs, task_manager=task_manager(include_paths), limit=limit, num_fewshot=num_fewshot,
            apply_chat_template=apply_chat_template, bootstrap_iters=bootstrap_iters, log_samples=False,
        )  # fmt: skip
    except Exception as err:  # the hub client raises many types offline (ConnectionError, its own errors, ...)
        if not needs_hub:
            raise
        raise ValueError(offline_message(needs_hub, f"{type(err).__name__}: {err}")) from err
    kept = {k: out.get(k) for k in ("versions", "n-shot", "higher_is_better")}
    return {"results": harness_results(out), "harness": kept}


def evaluate_with_harness(model, tokenizer, eos: str, names: Sequence[str], *, batch_size: int = 32,
                          mc_num: int = 128, seed: int = 0, chat_format: str | None = None,
                          data_dir: str | None = None, include_paths: Sequence[str] = (), limit: int | None = None,
                          num_fewshot: int | None = None, apply_chat_template: bool = False,
                          log: Callable[[str], None] = lambda m: None) -> dict:  # fmt: skip
    """Harness tasks on a loaded zoo model (:class:`zoo.eval.harness.ZooLM` around it); see :func:`run_harness`."""
    import tempfile

    from zoo.eval.harness import ZooLM

    lm = ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos, batch_size=batch_size, mc_num=mc_num, seed=seed,
               chat_format=chat_format)  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        return run_harness(lm, names, data_dir=data_dir, work=work, include_paths=include_paths, limit=limit,
                           num_fewshot=num_fewshot, apply_chat_template=apply_chat_template, log=log)  # fmt: skip


def harness_results(out: dict) -> dict:
    """The harness's ``results`` (tasks and groups) as ``{task: {"n", metric: {"value", "stderr"}}}``; a metric
    under a filter other than ``none`` is named ``metric/filter`` (``exact_match/strict-match``)."""
    n_samples = out.get("n-samples", {})
    results: dict = {}
    for task, entries in {**out.get("results", {}), **out.get("groups", {})}.items():
        row: dict = {"n": n_samples.get(task, {}).get("effective")}
        for key, value in entries.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            stderr = entries.get(f"{metric}_stderr,{filt}")
            row[metric if filt == "none" else f"{metric}/{filt}"] = {
                "value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            }  # fmt: skip
        if row["n"] is None:
            row.pop("n")
        results[task] = row
    return results


def format_table(report: dict) -> str:
    """One table for native and harness results: task, engine, metric, value, stderr, n."""
    engines = report.get("engines", {})
    rows = [("task", "engine", "metric", "value", "stderr", "n")]
    for task, metrics in report["results"].items():
        for metric, entry in metrics.items():
            if metric == "n":
                continue
            se = entry["stderr"]
            rows.append((task, engines.get(task, "native"), metric, f"{entry['value']:.4f}",
                         "" if se is None or math.isnan(se) else f"{se:.4f}", str(metrics.get("n", ""))))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if report.get("elbo"):
        lines.insert(0, f"masked-diffusion checkpoint: log-likelihoods are Monte-Carlo ELBO lower bounds "
                        f"(mc_num={report.get('mc_num')}), not exact")  # fmt: skip
    return "\n".join(lines)
