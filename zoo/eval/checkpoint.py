"""A checkpoint made ready to evaluate: the trained objective with its tokenizer, and its scorer.

Shared by ``python -m zoo eval`` (:mod:`zoo.commands.eval`), :class:`zoo.eval.EvalCallback` and the benchmarks.
"""

from __future__ import annotations


def load_model(
    ckpt: str, *, device: str, tokenizer_path: str | None = None, eos_token: str | None = None,
    trust: bool | None = None,
):
    """(objective in eval mode, tokenizer, eos token, global step) of a zoo checkpoint, read weights-only
    (``trust``: see :func:`zoo.training.checkpoints.trust_checkpoints`)."""
    from tokenizers import Tokenizer

    from zoo.data.tokenizer import EOS, tokenizer_from_checkpoint
    from zoo.objectives.base import LanguageModel
    from zoo.training.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(ckpt, mmap=True, trust=trust)  # a missing, foreign or untrusted file is named
    if tokenizer_path is not None:
        tokenizer, eos = Tokenizer.from_file(tokenizer_path), eos_token or EOS
    else:
        tokenizer, eos = tokenizer_from_checkpoint(checkpoint)
    model = LanguageModel.from_checkpoint(ckpt, map_location=device, trust=trust).eval()
    if tokenizer.token_to_id(eos) is None:
        raise ValueError(f"the tokenizer has no end-of-text token {eos!r}: pass --eos-token")
    return model, tokenizer, eos, int(checkpoint.get("global_step", 0))


def make_scorer(model, tokenizer, eos: str, *, batch_size: int = 32, mc_num: int = 128, seed: int = 0):
    """The objective's own scorer: exact log-likelihoods for a causal LM, ELBO bounds for a diffusion LM."""
    return model.scorer(tokenizer=tokenizer, eos=eos, batch_size=batch_size, mc_num=mc_num, seed=seed)


def scalars(results: dict) -> dict[str, float]:
    """``{"eval/<task>/<metric>": value}`` of a results dict."""
    return {f"eval/{task}/{metric}": entry["value"] for task, metrics in results.items()
            for metric, entry in metrics.items() if metric != "n"}  # fmt: skip
