"""``zoo.training.loading.load_checkpoint``: one memory-mapped weights-only read gives the model Lightning's own load
gives, with its tokenizer, end-of-text token and step; generate's loader, ``zoo eval`` and ``zoo export`` read the
checkpoint file once each."""

import json
from unittest import mock

import pytest
import torch

from tests.helpers import fit
from zoo.training.loading import Loaded, load_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):  # noqa: F811
    tmp = tmp_path_factory.mktemp("loading")
    with pytest.MonkeyPatch.context() as monkeypatch:
        fit(tmp, cache, "--trainer.max_steps", "2", monkeypatch=monkeypatch)
    return tmp / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


class Reads:
    """Counts the reads of checkpoint files (``torch.load`` calls; every reader, Lightning's included, uses it)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __enter__(self):
        real = torch.load

        def counting(f, *args, **kwargs):
            self.calls.append({"file": str(f), **kwargs})
            return real(f, *args, **kwargs)

        self._patch = mock.patch("torch.load", counting)
        self._patch.start()
        return self

    def __exit__(self, *exc) -> None:
        self._patch.stop()


def test_load_checkpoint_gives_lightnings_model_with_tokenizer_and_step(trained):
    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.objectives import LanguageModel

    with Reads() as reads:
        loaded = load_checkpoint(trained)
    assert len(reads.calls) == 1 and reads.calls[0]["mmap"] is True and reads.calls[0]["weights_only"] is True
    assert isinstance(loaded, Loaded) and type(loaded.model).__name__ == "CausalLM" and not loaded.model.training
    reference = LanguageModel.from_checkpoint(str(trained), map_location="cpu").eval()
    ids = torch.randint(0, 300, (2, 12))
    torch.testing.assert_close(loaded.model(ids), reference(ids), rtol=0, atol=0)
    for (name, ours), (_, theirs) in zip(loaded.model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(ours, theirs), name
    tokenizer, eos = tokenizer_from_checkpoint(trained)
    assert loaded.tokenizer.to_str() == tokenizer.to_str() and loaded.eos == eos
    assert loaded.eos_id == tokenizer.token_to_id(eos)
    assert loaded.step == 2 and loaded.tokens == int(reference.tokens_seen) > 0
    assert loaded.objective == "CausalLM" and loaded.hyper_parameters["_class_path"] == "zoo.objectives.CausalLM"
    assert loaded.model.backbone.head.weight is loaded.model.backbone.embed.weight  # tied embeddings stay tied


def test_load_checkpoint_takes_a_runs_link_and_refuses_a_folder(trained):
    link = trained.parents[3] / "last.ckpt"  # the run's stable link (zoo.training.links)
    assert link.is_symlink()
    assert load_checkpoint(link).step == 2
    with pytest.raises(ValueError, match=r"is a directory, not a checkpoint file: give one of the checkpoint files"):
        load_checkpoint(trained.parent)
    with pytest.raises(ValueError, match=r"does not exist: check the path"):
        load_checkpoint(trained.parent / "missing.ckpt")


def test_a_checkpoint_of_another_shape_or_without_tokenizer_is_named(trained, tmp_path):
    from zoo.training.checkpoints import CheckpointMismatchError

    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["backbone"]["init_args"]["n_layers"] = 3
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(CheckpointMismatchError, match=rf"checkpoint {other} does not fit this model"):
        load_checkpoint(other)
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    del checkpoint["StdlibCorpus"]
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    with pytest.raises(ValueError, match=rf"checkpoint {bare} carries no tokenizer .* --tokenizer path/to/tokenizer"):
        load_checkpoint(bare)
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(load_checkpoint(trained).tokenizer.to_str())
    assert load_checkpoint(bare, tokenizer=tokenizer).eos == "<|endoftext|>"
    with pytest.raises(ValueError, match="has no end-of-text token '<nope>': pass --eos-token"):
        load_checkpoint(bare, tokenizer=tokenizer, eos_token="<nope>")


def test_generate_eval_and_export_read_the_checkpoint_once(trained, tmp_path, capsys):
    from zoo.cli import main

    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"id": "q1", "question": "Which is a gas?", "answerKey": "B",
                               "choices": {"text": ["rock", "oxygen"], "label": ["A", "B"]}}) + "\n")  # fmt: skip
    commands = {
        "generate's loader": lambda: load_checkpoint(trained),
        "eval": lambda: main(["eval", "--ckpt", str(trained), "--tasks", "arc_easy", "--task-file", f"arc_easy={arc}",
                              "--output", str(tmp_path / "scores.json")]),
        "export": lambda: main(["export", "--ckpt", str(trained), "--out", str(tmp_path / "hf")]),
    }
    for name, run in commands.items():
        with Reads() as reads:
            run()
        assert [c["file"] for c in reads.calls] == [str(trained)], name
        assert reads.calls[0]["mmap"] is True and reads.calls[0]["weights_only"] is True, name
    assert json.loads((tmp_path / "scores.json").read_text())["global_step"] == 2
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "- steps: 2\n" in card and "- tokens: not recorded" not in card
