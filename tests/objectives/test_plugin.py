"""A new objective is one file: it defines its loss and describes itself (its kind, its scoring and a sampler family
of its own: an options class and a sample function), and `zoo fit`, `zoo generate` and `zoo eval` run it without a
change to the commands. The objective here is a plain causal LM whose sampler recomputes the whole sequence (or its
last `window` tokens) at every step, without a KV cache, and always picks the most likely token."""

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TINY
from zoo.generation import Generation, answer_text
from zoo.objectives import LanguageModel, ModelDescription, ModelKind, SamplerFamily, Scoring


@dataclass(frozen=True)
class RecomputingOptions:
    """Recomputing checkpoints: greedy decoding without a KV cache

    Args:
        max_new_tokens: tokens to generate at most
        window: each step reads only the last this many tokens (0 = the whole sequence)
    """

    max_new_tokens: int = 16
    window: int = 0


@torch.no_grad()
def recompute(backbone, prompts, options: RecomputingOptions, *, description, temperature, eos_id, stop, tokenizer,
              generator, on_token):  # fmt: skip
    """The family's sampler: one full forward pass per new token, the most likely token each time."""
    if options.window < 0:
        raise ValueError(f"window={options.window} must be ≥ 0 (0 = the whole sequence)")
    RecomputingLM.calls.append(options)
    tokens = []
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(options.max_new_tokens):
            ids.append(int(backbone(torch.tensor([ids[-options.window :]]))[0, -1].argmax()))
            if ids[-1] == eos_id:
                break
        tokens.append(ids[len(prompt) :])
    answers = [answer_text(tokenizer, t, eos_id=eos_id, stop=stop) for t in tokens]
    return Generation(tokens=tokens, texts=[a for a, _ in answers], finish_reasons=[r for _, r in answers],
                      forward_passes=sum(len(t) for t in tokens))  # fmt: skip


RECOMPUTING = SamplerFamily(name="recomputing", options=RecomputingOptions, sample=recompute, length="max_new_tokens")


class RecomputingLM(LanguageModel):
    """Next-token cross-entropy, greedy sampling by full recomputation, exact log-likelihoods."""

    calls: list[RecomputingOptions] = []  # the options of each call of its own sampler, for the test to read

    @property
    def description(self) -> ModelDescription:
        return ModelDescription(kind=ModelKind.AUTOREGRESSIVE, sampler=RECOMPUTING, scoring=Scoring.LOG_LIKELIHOOD,
                                shift=True)  # fmt: skip

    def loss(self, batch):
        input_ids, labels = batch["input_ids"], batch["labels"]
        logits = self.backbone(input_ids)[:, :-1]
        targets = labels[:, 1:]
        n = (targets != -100).sum()
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100), n


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from zoo.commands.fit import ZooCLI

    root = tmp_path_factory.mktemp("plugin")
    ZooCLI(args=["fit", *TINY, "--model.class_path", f"{__name__}.RecomputingLM", "--trainer.max_steps", "2",
                 "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2",
                 "--data.tokenizer.init_args.cache_dir", str(root / "tok"),
                 "--trainer.default_root_dir", str(root)])  # fmt: skip
    return next(root.rglob("last.ckpt"))


def test_the_commands_run_a_new_objective_through_its_own_sampler_and_scorer(checkpoint, tmp_path, capsys,
                                                                          monkeypatch):
    from zoo.cli import main
    from zoo.objectives.base import LanguageModel as Base
    from zoo.training.class_paths import TRUSTED_MODULES_ENV, ForeignClassPathError

    # a checkpoint naming a class outside zoo loads only once the user vouches for that class's package
    monkeypatch.delenv(TRUSTED_MODULES_ENV, raising=False)
    with pytest.raises(ForeignClassPathError, match=f"{TRUSTED_MODULES_ENV}=tests"):
        Base.from_checkpoint(str(checkpoint))
    monkeypatch.setenv(TRUSTED_MODULES_ENV, __name__)
    model = Base.from_checkpoint(str(checkpoint))
    assert type(model).__name__ == "RecomputingLM"

    RecomputingLM.calls.clear()
    main(["generate", "--ckpt", str(checkpoint), "--prompt", "def f(", "--max-new-tokens", "5"])
    assert RecomputingLM.calls == [RecomputingOptions(max_new_tokens=5, window=0)]
    assert capsys.readouterr().out.startswith("def f(")

    arc = [{"id": "q", "question": "Which is a gas?", "answerKey": "B",
            "choices": {"text": ["rock", "oxygen"], "label": ["A", "B"]}}]  # fmt: skip
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc" / "ARC-Easy-test.jsonl").write_text(json.dumps(arc[0]) + "\n")
    out = tmp_path / "scores.json"
    main(["eval", "--ckpt", str(checkpoint), "--tasks", "arc_easy", "--data-dir", str(tmp_path),
          "--output", str(out)])  # fmt: skip
    results = json.loads(out.read_text())
    assert results["results"]["arc_easy"]["n"] == 1 and results["elbo"] is False


def test_zoo_generate_takes_the_new_sampler_familys_own_options(checkpoint, capsys, monkeypatch):
    """The family's own option (--window) is listed by --help for its checkpoint, parsed, type-checked and handed to
    its sample function; the samplers of zoo's objectives never see it, and their options are refused by name."""
    from zoo.cli import main
    from zoo.training.class_paths import TRUSTED_MODULES_ENV

    monkeypatch.setenv(TRUSTED_MODULES_ENV, __name__)
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--ckpt", str(checkpoint), "--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "Recomputing checkpoints: greedy decoding without a KV cache" in help_text
    assert "--window WINDOW" in help_text and "each step reads only the last this many tokens" in help_text
    listed = help_text.split("\noptions:", 1)[1]  # after the description's examples
    assert "--top-p" not in listed and "--gen-length" not in listed  # other families' options are not listed

    RecomputingLM.calls.clear()
    main(["generate", "--ckpt", str(checkpoint), "--prompt", "def f(", "--prompt", "import os", "--window", "3",
          "--max-new-tokens", "4", "--stop", "\\n"])  # fmt: skip
    assert RecomputingLM.calls == [RecomputingOptions(max_new_tokens=4, window=3)]
    out = capsys.readouterr().out
    assert out.startswith("def f(") and "\nimport os" in out

    for args, message in [(["--window", "-1"], "window=-1 must be ≥ 0"),
                          (["--window", "two"], "window=two: expected a value of type int"),
                          (["--steps", "8"], "--steps: options of masked-diffusion checkpoints"),
                          (["--top-p", "0.5"], "--top-p: options of autoregressive checkpoints")]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "--ckpt", str(checkpoint), "--prompt", "x", *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "its options are --max-new-tokens, --window" in err


def test_export_refuses_a_family_the_exported_files_cannot_run(checkpoint, tmp_path, capsys, monkeypatch):
    """The exports decode with zoo's shipped families only: a plugin family is refused, and nothing is written."""
    from zoo.cli import main
    from zoo.training.class_paths import TRUSTED_MODULES_ENV

    monkeypatch.setenv(TRUSTED_MODULES_ENV, __name__)
    for fmt in ("auto", "remote-code"):
        out = tmp_path / fmt
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--ckpt", str(checkpoint), "--out", str(out), "--format", fmt])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "samples with a family of its own (recomputing)" in err, err
        assert not out.exists() and not list(tmp_path.glob(f".{fmt}.partial-*"))
