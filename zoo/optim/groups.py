"""Optimizer parameter groups: weight decay on matrices only.

Norm weights, biases and embeddings (token and position) get no weight decay, as in GPT-2/nanoGPT,
Llama and most small-LM recipes; every other parameter (the 2-D projection matrices) does.
"""

from __future__ import annotations

from torch import nn


def weight_decay_groups(module: nn.Module) -> list[dict]:
    """Two groups: ``{"params": matrices}`` (the optimizer's own weight decay applies) and
    ``{"params": the rest, "weight_decay": 0.0}``.

    Tied parameters are listed once (a tied head shares the embedding's tensor, so it is not decayed).
    """
    no_decay_ids = set()
    for sub in module.modules():
        if isinstance(sub, nn.Embedding):
            no_decay_ids.add(id(sub.weight))
    seen, decay, no_decay = set(), [], []
    for name, param in module.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        is_matrix = param.ndim >= 2 and id(param) not in no_decay_ids and "position" not in name.split(".")
        (decay if is_matrix else no_decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
