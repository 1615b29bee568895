"""A checkpoint made ready to evaluate: the trained objective with its tokenizer, and its scorer.

Shared by ``python -m zoo eval`` (:mod:`zoo.commands.eval`), :class:`zoo.eval.EvalCallback` and the benchmarks.
"""

from __future__ import annotations


def load_model(
    ckpt: str, *, device: str, tokenizer_path: str | None = None, eos_token: str | None = None,
    trust: bool | None = None,
):
    """(objective in eval mode, tokenizer, eos token, global step) of a zoo checkpoint, from one weights-only read
    (:func:`zoo.training.loading.load_checkpoint`; ``trust``: see :func:`zoo.training.checkpoints.trust_checkpoints`).
    ``tokenizer_path``/``eos_token``: a ``tokenizer.json`` for a checkpoint that carries no tokenizer."""
    from zoo.training.loading import load_checkpoint

    loaded = load_checkpoint(ckpt, device=device, trust=trust, tokenizer=tokenizer_path, eos_token=eos_token)
    return loaded.model, loaded.tokenizer, loaded.eos, loaded.step


def make_scorer(model, tokenizer, eos: str, *, batch_size: int = 32, mc_num: int = 128, seed: int = 0):
    """The objective's own scorer: exact log-likelihoods for a causal LM, ELBO bounds for a diffusion LM."""
    return model.scorer(tokenizer=tokenizer, eos=eos, batch_size=batch_size, mc_num=mc_num, seed=seed)


def scalars(results: dict) -> dict[str, float]:
    """``{"eval/<task>/<metric>": value}`` of a results dict."""
    return {f"eval/{task}/{metric}": entry["value"] for task, metrics in results.items()
            for metric, entry in metrics.items() if metric != "n"}  # fmt: skip
