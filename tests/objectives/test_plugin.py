"""A new objective is one file: it defines its loss, names its sampler and its scorer, and `zoo fit`, `zoo generate`
and `zoo eval` run it without a change to the commands. The objective here is a plain causal LM whose sampler
recomputes the whole sequence at every step (no KV cache) and always picks the most likely token."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TINY
from zoo.generation import Generation, answer_text
from zoo.objectives import LanguageModel


class RecomputingLM(LanguageModel):
    """Next-token cross-entropy, greedy sampling by full recomputation, exact log-likelihoods."""

    sampler_kind = "autoregressive"
    samples_drawn = 0  # counts calls of its own sampler, so the test can tell that the commands used it

    def loss(self, batch):
        input_ids, labels = batch["input_ids"], batch["labels"]
        logits = self.backbone(input_ids)[:, :-1]
        targets = labels[:, 1:]
        n = (targets != -100).sum()
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100), n

    @torch.no_grad()
    def sample(self, prompts, *, max_new_tokens, eos_id=None, stop=(), tokenizer=None, **ignored):
        type(self).samples_drawn += 1
        tokens = []
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(max_new_tokens):
                ids.append(int(self.backbone(torch.tensor([ids]))[0, -1].argmax()))
                if ids[-1] == eos_id:
                    break
            tokens.append(ids[len(prompt) :])
        answers = [answer_text(tokenizer, t, eos_id=eos_id, stop=stop) for t in tokens]
        return Generation(tokens=tokens, texts=[a for a, _ in answers], finish_reasons=[r for _, r in answers],
                          forward_passes=sum(len(t) for t in tokens))  # fmt: skip

    def scorer(self, *, tokenizer, eos, batch_size=32, mc_num=128, seed=0):
        from zoo.eval.scoring import CausalScorer

        return CausalScorer(backbone=self.backbone, tokenizer=tokenizer, prefix_id=tokenizer.token_to_id(eos),
                            max_length=self.backbone.max_seq_len, batch_size=batch_size)  # fmt: skip


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

    before = RecomputingLM.samples_drawn
    main(["generate", "--ckpt", str(checkpoint), "--prompt", "def f(", "--max-new-tokens", "5"])
    assert RecomputingLM.samples_drawn == before + 1
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
