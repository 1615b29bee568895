"""From per-request log-likelihoods to the harness's task metrics, and :func:`evaluate`, which runs tasks end to end.

Per document (multiple choice, ``ll`` the choices' log-likelihoods):

- ``acc``: ``argmax(ll) == gold``; ``acc_norm``: ``argmax(ll / len(choice in characters)) == gold``;
- ``mc1``: ``acc`` where the true answer is the first choice; ``mc2``: ``Σ_true p / Σ_all p`` with ``p = exp(ll)``;

per task (rolling and single-continuation tasks):

- ``perplexity``: ``exp(−mean(ll))``; ``acc`` (loglikelihood tasks): the continuation is the greedy one;
- ``word_perplexity`` / ``byte_perplexity``: ``exp(−Σ ll / Σ words or UTF-8 bytes)``; ``bits_per_byte``:
  ``−Σ ll / Σ bytes / ln 2``.

Means carry the sample standard error ``stdev / √n`` (the harness's ``mean_stderr``); a group (BLiMP) is the
unweighted mean of its tasks, with ``√(Σ se²) / k``. Perplexities carry no standard error here (the harness
bootstraps them).
"""

from __future__ import annotations

import math
import re
import statistics
import time

from zoo.eval.scoring import Scorer
from zoo.eval.tasks import Task


def first_argmax(values: list[float]) -> int:
    """Index of the largest value, the first on ties (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def choice_metrics(task: Task, doc: dict, lls: list[float]) -> dict[str, float]:
    """The per-document metrics of a multiple-choice task."""
    gold = task.gold(doc)
    out: dict[str, float] = {}
    for name in task.metrics:
        if name in ("acc", "mc1"):
            out[name] = float(first_argmax(lls) == gold)
        elif name == "acc_norm":
            lengths = [float(len(c)) for c in task.choices(doc)]
            out[name] = float(first_argmax([ll / n for ll, n in zip(lls, lengths)]) == gold)
        elif name == "mc2":
            labels = task.labels_of(doc)
            top = max(lls)  # shifted before exp: the ratio is unchanged and exp does not underflow to 0/0
            probs = [math.exp(ll - top) for ll in lls]
            out[name] = sum(p for p, label in zip(probs, labels) if label == 1) / sum(probs)
        else:
            raise ValueError(f"task {task.name}: metric {name!r} is not a multiple-choice metric")
    return out


def aggregate(task: Task, docs: list[dict], scores: list) -> dict:
    """Task-level metrics: ``{metric: {"value", "stderr"}, "n": documents}``."""
    out: dict = {"n": len(docs)}
    if task.output_type == "multiple_choice":
        per_doc = [choice_metrics(task, doc, lls) for doc, lls in zip(docs, scores)]
        for name in task.metrics:
            value, se = mean_and_stderr([m[name] for m in per_doc])
            out[name] = {"value": value, "stderr": se}
    elif task.output_type == "loglikelihood":
        lls = [ll for ll, _ in scores]
        for name in task.metrics:
            if name == "perplexity":
                out[name] = {"value": math.exp(-statistics.fmean(lls)), "stderr": None}
            elif name == "acc":
                value, se = mean_and_stderr([float(greedy) for _, greedy in scores])
                out[name] = {"value": value, "stderr": se}
            else:
                raise ValueError(f"task {task.name}: metric {name!r} is not a loglikelihood metric")
    else:
        total = sum(scores)
        texts = [doc[task.count_text] if task.count_text else task.target(doc) for doc in docs]
        words = sum(len(re.split(r"\s+", t)) for t in texts)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        values = {"word_perplexity": math.exp(-total / words), "byte_perplexity": math.exp(-total / n_bytes),
                  "bits_per_byte": -total / n_bytes / math.log(2)}  # fmt: skip
        for name in task.metrics:
            if name not in values:
                raise ValueError(f"task {task.name}: metric {name!r} is not a perplexity metric")
            out[name] = {"value": values[name], "stderr": None}
    return out


def aggregate_group(members: list[dict]) -> dict:
    out: dict = {"n": sum(m["n"] for m in members)}
    names = [k for k in members[0] if k != "n"]
    for name in names:
        values = [m[name]["value"] for m in members]
        ses = [m[name]["stderr"] for m in members]
        se = math.sqrt(sum(s * s for s in ses)) / len(ses) if all(s is not None for s in ses) else None
        out[name] = {"value": statistics.fmean(values), "stderr": se}
    return out


def evaluate(
    tasks: list[Task],
    scorer: Scorer,
    *,
    groups: dict[str, list[str]] | None = None,
    data_dir: str | None = None,
    task_files: dict[str, str] | None = None,
    limit: int | None = None,
    log=None,
    documents: dict[str, list[dict]] | None = None,
) -> dict:
    """Score ``tasks`` with ``scorer``: ``{"results": {task or group: metrics}, "elbo": bool,
    "scoring_seconds": float}``.

    All tasks' requests go to the scorer at once, so requests shared across tasks run once. ``documents``: a
    dict that keeps each task's loaded documents for the next call (a training callback loads them once).
    """
    task_files = task_files or {}
    documents = {} if documents is None else documents
    loaded = []
    for task in tasks:
        docs = documents.get(task.name)
        if docs is None:
            docs = task.load(data_dir=data_dir, task_file=task_files.get(task.name), limit=limit)
            documents[task.name] = docs
        if not docs:
            raise ValueError(f"task {task.name} has no documents (limit={limit})")
        if scorer.elbo and task.output_type == "loglikelihood" and "acc" in task.metrics:
            raise ValueError(
                f"task {task.name}: its acc is whether greedy decoding gives the target, which an ELBO bound of a "
                "masked-diffusion model cannot tell; its perplexity would still be a bound. Evaluate diffusion "
                "checkpoints on multiple-choice tasks"
            )
        loaded.append((task, docs))
    start = time.perf_counter()
    pair_requests: list[tuple[str, str]] = []
    rolling_texts: list[str] = []
    spans = []
    for task, docs in loaded:
        if task.output_type == "loglikelihood_rolling":
            spans.append((len(rolling_texts), [1] * len(docs)))
            rolling_texts += [task.target(doc) for doc in docs]
        else:
            per_doc = [task.requests(doc) for doc in docs]
            spans.append((len(pair_requests), [len(r) for r in per_doc]))
            pair_requests += [r for rs in per_doc for r in rs]
    pair_scores = scorer.loglikelihood(pair_requests) if pair_requests else []
    rolling_scores = scorer.loglikelihood_rolling(rolling_texts) if rolling_texts else []
    results: dict = {}
    for (task, docs), (offset, counts) in zip(loaded, spans):
        flat = rolling_scores if task.output_type == "loglikelihood_rolling" else pair_scores
        scores, i = [], offset
        for n in counts:
            chunk = flat[i : i + n]
            i += n
            if task.output_type == "multiple_choice":
                scores.append([ll for ll, _ in chunk])
            else:
                scores.append(chunk[0])
        results[task.name] = aggregate(task, docs, scores)
    for group, members in (groups or {}).items():
        present = [results[m] for m in members if m in results]
        if present:
            results[group] = aggregate_group(present)
    seconds = time.perf_counter() - start
    if log is not None:
        log(f"scored {len(pair_requests)} requests and {len(rolling_texts)} rolling texts in {seconds:.1f} s")
    return {"results": results, "elbo": scorer.elbo, "scoring_seconds": seconds}
