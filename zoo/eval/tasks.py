"""Task definitions: a YAML file per task (``zoo/eval/tasks/*.yaml``), its documents and its requests.

A task file names where its documents come from and how a document becomes requests, with the same fields and
template language (Jinja2) as lm-evaluation-harness, so a harness task ports by copying its fields::

    task: arc_easy
    output_type: multiple_choice          # or loglikelihood, loglikelihood_rolling
    dataset: {path: allenai/ai2_arc, name: ARC-Easy, split: test}      # datasets.load_dataset(path, name, split)
    local: {path: arc/ARC-Easy-test.jsonl}                              # under --data-dir (reader: optional)
    doc_to_text: "Question: {{question}}\\nAnswer:"
    doc_to_choice: "{{choices.text}}"
    doc_to_target: "{{choices.label.index(answerKey)}}"
    metrics: [acc, acc_norm]

``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` are each a field name of the document (its value is
used), an integer (``doc_to_target: 0``) or a Jinja2 template rendered over the document's fields; a choice
template renders a Python list literal, a target that renders as digits is the gold choice index. Optional keys:
``target_delimiter`` (default ``" "``, put between context and continuation), ``multiple_input: true`` (the
choices are contexts and ``doc_to_target`` the one continuation; ``doc_to_text`` gives the gold index —
Winogrande's partial scoring), ``process_docs`` / ``local.reader`` (``module:function`` import paths), ``count_text``
(rolling tasks: the field whose words and bytes normalise the perplexities), ``labels`` (``mc2``: a template
rendering each choice's 1/0 truth label), ``subtasks`` (one task per value,
``{subtask}`` substituted in every string; the group's score is the unweighted mean, as BLiMP's).

A request is a ``(context, continuation)`` pair of strings; scoring turns it into tokens (:mod:`zoo.eval.scoring`).
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from jinja2 import BaseLoader, StrictUndefined
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from zoo.data import hub
from zoo.eval.datasets import import_function, read_local

OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")
CODE_TASKS = ("humaneval", "mbpp")  # generation tasks: zoo.eval.code


def _regex_replace(text: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, text, count=count)


# The harness's template environment: undefined fields are errors, trailing newlines kept, one extra filter.
# Sandboxed (Jinja's own sandbox): a task file is data, so a template reaches no underscore attribute (no
# `__globals__`, `__class__`, `__subclasses__`), no unsafe callable and cannot mutate what it is given.
JINJA = ImmutableSandboxedEnvironment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)
JINJA.filters["regex_replace"] = _regex_replace


@dataclass
class Task:
    """One evaluation task (see the module docstring for the YAML fields)."""

    name: str
    output_type: str
    dataset: dict
    doc_to_target: str | int
    doc_to_text: str | int = ""
    doc_to_choice: str | list | None = None
    target_delimiter: str = " "
    multiple_input: bool = False
    metrics: list[str] = field(default_factory=lambda: ["acc"])
    local: dict | None = None
    process_docs: str | None = None
    count_text: str | None = None
    labels: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.output_type not in OUTPUT_TYPES:
            raise ValueError(f"task {self.name}: output_type={self.output_type!r}; choose one of {OUTPUT_TYPES}")
        if self.output_type == "multiple_choice" and self.doc_to_choice is None:
            raise ValueError(f"task {self.name}: a multiple_choice task needs doc_to_choice")

    # ---- documents → strings (the harness's rules) ---------------------------------------------------------
    def _render(self, spec: str | int | list, doc: dict):
        if isinstance(spec, (int, list)):
            return spec
        if spec in doc:
            return doc[spec]
        try:
            return JINJA.from_string(spec).render(**doc)
        except SecurityError as err:
            raise ValueError(
                f"task {self.name}: its template {spec[:120]!r} was refused by Jinja's sandbox ({err}): task templates "
                "may read the document's fields and use filters, not reach Python internals"
            ) from None

    def text(self, doc: dict):
        return self._render(self.doc_to_text, doc)

    def choices(self, doc: dict) -> list[str]:
        value = self._render(self.doc_to_choice, doc)
        if isinstance(value, str):
            value = ast.literal_eval(value)  # a template renders the list's repr, as in the harness
        return list(value)

    def labels_of(self, doc: dict) -> list[int]:
        """Per-choice truth labels (1 true, 0 false) for ``mc2``, from the ``labels`` template."""
        if self.labels is None:
            raise ValueError(f"task {self.name}: metric mc2 needs a 'labels' template giving each choice's 0/1 label")
        value = self._render(self.labels, doc)
        return [int(v) for v in (ast.literal_eval(value) if isinstance(value, str) else value)]

    def target(self, doc: dict):
        spec = self.doc_to_target
        value = self._render(spec, doc)
        # As the harness: a template (not a field's own value) that renders digits is a choice index.
        from_template = isinstance(spec, str) and spec not in doc
        if from_template and value.isdigit() and self.doc_to_choice is not None and not self.multiple_input:
            return int(value)
        return value

    def gold(self, doc: dict) -> int:
        """Index of the correct choice."""
        if self.multiple_input:
            gold = self.text(doc)
        else:
            gold = self.target(doc)
            if isinstance(gold, str):
                gold = self.choices(doc).index(gold)
        return int(gold)

    def requests(self, doc: dict) -> list[tuple[str, str]]:
        """The (context, continuation) pairs this document is scored by; rolling tasks have an empty context."""
        if self.output_type == "loglikelihood":
            return [(self.text(doc), self.target(doc))]
        if self.output_type == "loglikelihood_rolling":
            return [("", self.target(doc))]
        if self.multiple_input:
            continuation = f"{self.target_delimiter}{self.target(doc)}"
            return [(context, continuation) for context in self.choices(doc)]
        context = self.text(doc)
        return [(context, f"{self.target_delimiter}{choice}") for choice in self.choices(doc)]

    # ---- where the documents come from ---------------------------------------------------------------------
    def load(self, *, data_dir: str | None = None, task_file: str | None = None, limit: int | None = None) -> list:
        """The task's documents, processed; from ``task_file``, else ``data_dir``/``local.path``, else the hub."""
        tried = []
        path = task_file  # in the format of the task's release file, as under data_dir
        if path is None and data_dir is not None and self.local is not None:
            path = os.path.join(data_dir, self.local["path"])
        if path is not None:
            if not os.path.exists(path):
                raise ValueError(f"task {self.name}: local file {path} does not exist ({self.local_hint()})")
            docs = read_local(path, reader=(self.local or {}).get("reader"))
        else:
            if data_dir is not None:
                tried.append(f"--data-dir {data_dir} (this task has no local layout)")
            docs = self.load_hub(tried)
        if self.process_docs is not None:
            docs = import_function(self.process_docs)(docs)
        return docs[:limit] if limit is not None else docs

    def local_hint(self) -> str:
        where = f"--data-dir DIR with DIR/{self.local['path']}" if self.local else "a local file"
        form = f"the format of {self.local['path']}" if self.local else f"JSONL of {self.dataset['path']}'s fields"
        return f"give {where}, or --task-file {self.name}=PATH ({form})"

    def load_hub(self, tried: list[str]) -> list[dict]:
        import datasets

        spec = self.dataset
        where = f"the hub dataset {spec['path']!r} name={spec.get('name')!r} split={spec['split']!r}"
        if hub.hub_unreachable():
            # datasets retries an unreachable hub for ~25 s per call; a failed 3-second probe says it all.
            raise ValueError(
                f"task {self.name}: cannot reach huggingface.co to load {where}; looked in: "
                f"{'; '.join(tried) or 'no local files given'}. Offline, {self.local_hint()}"
            )
        try:
            rows = datasets.load_dataset(self.dataset["path"], self.dataset.get("name"), split=self.dataset["split"])
        except Exception as err:  # the hub client raises many types (ConnectionError, HfHubHTTPError, …)
            raise ValueError(
                f"task {self.name}: could not load {where} ({type(err).__name__}: {err}); looked in: "
                f"{'; '.join(tried) or 'no local files given'}. {self.local_hint()}"
            ) from err
        return [dict(row) for row in rows]


# ---- the registry ------------------------------------------------------------------------------------------
def _substitute(value, subtask: str):
    if isinstance(value, str):
        return value.replace("{subtask}", subtask)
    if isinstance(value, dict):
        return {k: _substitute(v, subtask) for k, v in value.items()}
    return value


def tasks_from_yaml(text: str, *, source: str = "<yaml>") -> list[Task]:
    """The task(s) a YAML document defines (several when it lists ``subtasks``)."""
    spec = yaml.safe_load(text)
    if not isinstance(spec, dict) or "task" not in spec:
        raise ValueError(f"task file {source} must be a mapping with a 'task' name")
    spec = dict(spec)
    name = spec.pop("task")
    subtasks = spec.pop("subtasks", None)
    known = set(Task.__dataclass_fields__) - {"name", "group"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"task file {source}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if subtasks is None:
        return [Task(name=name, **spec)]
    return [Task(name=f"{name}_{s}", group=name, **{k: _substitute(v, s) for k, v in spec.items()}) for s in subtasks]


def builtin_tasks() -> dict[str, Task]:
    """Every task under ``zoo/eval/tasks/``, by name."""
    found: dict[str, Task] = {}
    for entry in sorted(resources.files("zoo.eval").joinpath("tasks").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            for task in tasks_from_yaml(entry.read_text(encoding="utf-8"), source=entry.name):
                found[task.name] = task
    return found


def groups(tasks: dict[str, Task]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for task in tasks.values():
        if task.group is not None:
            out.setdefault(task.group, []).append(task.name)
    return out


def resolve(names: list[str], *, extra_files: list[str] = ()) -> tuple[list[Task], dict[str, list[str]]]:
    """Tasks for the requested names (a group name brings its members) and the requested groups; ``extra_files``
    are YAML task files of the user's. Unknown names raise a ValueError listing the known ones."""
    registry = builtin_tasks()
    for path in extra_files:
        for task in tasks_from_yaml(Path(path).read_text(encoding="utf-8"), source=path):
            registry[task.name] = task
    grouped = groups(registry)
    selected: list[Task] = []
    wanted_groups: dict[str, list[str]] = {}
    for name in names:
        if name in grouped:
            wanted_groups[name] = grouped[name]
            selected += [registry[n] for n in grouped[name]]
        elif name in registry:
            selected.append(registry[name])
        else:
            top = sorted({t.group or t.name for t in registry.values()} | set(CODE_TASKS))
            raise ValueError(
                f"unknown task {name!r}; known tasks: {', '.join(top)} (and each blimp paradigm as blimp_<paradigm>)"
            )
    unique = list({t.name: t for t in selected}.values())
    return unique, wanted_groups
