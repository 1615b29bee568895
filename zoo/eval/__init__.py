"""Zero-shot evaluation as lm-evaluation-harness computes it: tasks (YAML), log-likelihood scoring, metrics.

``python -m zoo eval`` (:mod:`zoo.commands.eval`) from the command line; :class:`EvalCallback` during training;
in Python::

    tasks, groups = resolve(["arc_easy", "blimp"])
    scorer = CausalScorer(backbone=model.backbone, tokenizer=tok, prefix_id=tok.token_to_id(eos),
                          max_length=model.backbone.max_seq_len)
    evaluate(tasks, scorer, groups=groups, data_dir="/data/eval")["results"]
"""

from zoo.eval.callback import EvalCallback
from zoo.eval.metrics import evaluate
from zoo.eval.scoring import CausalScorer, ElboScorer, Scorer
from zoo.eval.tasks import Task, builtin_tasks, resolve, tasks_from_yaml

__all__ = [
    "CausalScorer",
    "ElboScorer",
    "EvalCallback",
    "Scorer",
    "Task",
    "builtin_tasks",
    "evaluate",
    "resolve",
    "tasks_from_yaml",
]
