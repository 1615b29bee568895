"""Tokenizers: `zoo tokenizer train` on a data config, exact round trips, transformers loading, vocab checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import tiny_backbone
from zoo.cli import main
from zoo.data import Mixture, PretrainedTokenizer, Source, train_bpe
from zoo.objectives import CausalLM

TRICKY = [
    "\tindented\twith tabs",
    "two  spaces   three",
    "naïve café — Zürich, 東京, Москва",
    "emoji 🙂🚀 and a family 👨‍👩‍👧",
    "trailing space ",
    "",
    "\n\nnewlines\r\n",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rows = [{"body": f"def f{i}(x):\n\treturn x * {i}  # twice  spaced\nnaïve 🙂 text number {i}"} for i in range(300)]
    (folder / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = {
        "data": {
            "class_path": "zoo.data.Mixture",
            "init_args": {
                "sources": [{"data_files": str(folder / "docs.jsonl"), "text_field": "body", "val_documents": 20}],
                "tokenizer": {"class_path": "zoo.data.TrainedBPE", "init_args": {"vocab_size": 300}},
                "seq_len": 32,
                "batch_size": 2,
            },
        }
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    special = "<|endoftext|>,<|pad|>,<|im_start|>,<|im_end|>,<|unk|>"
    main(["tokenizer", "train", "--config", str(corpus / "run.yaml"), "--vocab-size", "320",
          "--special-tokens", special, "--output", str(out)])  # fmt: skip
    return out


def test_cli_writes_a_tokenizer_with_the_special_tokens_first(trained):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(trained / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 320
    for i, token in enumerate(["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]):
        assert tokenizer.token_to_id(token) == i
    assert len(tokenizer.encode("twice  spaced").ids) < len("twice  spaced")  # merges were learned


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_is_exact(trained, text):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(trained / "tokenizer.json"))
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids) == text


def test_transformers_loads_it(trained):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(trained))
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0
    for text in TRICKY:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_a_run_uses_the_trained_tokenizer_and_a_too_small_model_is_refused(trained, corpus, tmp_path):
    source = Source(data_files=str(corpus / "docs.jsonl"), text_field="body", val_documents=20)
    data = Mixture(sources=[source], tokenizer=PretrainedTokenizer(path=str(trained)), seq_len=16, batch_size=2)
    data.setup("fit")
    assert data.vocab_size == 320
    import lightning as L

    model = CausalLM(backbone=tiny_backbone(vocab_size=256, max_seq_len=16))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"320 tokens but model backbone.vocab_size=256"):
        trainer.fit(model, datamodule=data)


def test_bad_arguments_say_what_to_do(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit, match="^2$"):  # one line on stderr, exit status 2
        main(["tokenizer", "train", "--config", str(corpus / "run.yaml"), "--vocab-size", "100",
              "--output", str(tmp_path)])  # fmt: skip
    assert re.search("below the 256 byte symbols", capsys.readouterr().err)
    with pytest.raises(SystemExit, match="^2$"):  # one line on stderr, exit status 2
        main(["tokenizer", "train", "--config", str(tmp_path / "nope.yaml"), "--vocab-size", "300",
              "--output", str(tmp_path)])  # fmt: skip
    assert re.search("does not exist", capsys.readouterr().err)


def test_the_config_is_read_by_the_parser_of_fit(corpus, tmp_path, capsys):
    """A data-module config (class_path at the top) and a full run config (model section parsed, not built) both
    work; a config fit would refuse is refused with the key named, and one without data says what is missing."""
    run = yaml.safe_load((corpus / "run.yaml").read_text())
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(run["data"]))
    main(["tokenizer", "train", "--config", str(tmp_path / "data.yaml"), "--vocab-size", "300",
          "--documents", "50", "--output", str(tmp_path / "a")])  # fmt: skip
    assert (tmp_path / "a" / "tokenizer.json").is_file()
    quickstart = yaml.safe_load((Path(__file__).parents[2] / "configs" / "quickstart.yaml").read_text())
    full = {**run, "trainer": quickstart["trainer"], "model": quickstart["model"]}
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(full))
    main(["tokenizer", "train", "--config", str(tmp_path / "full.yaml"), "--vocab-size", "300",
          "--documents", "50", "--output", str(tmp_path / "b")])  # fmt: skip
    assert (tmp_path / "b" / "tokenizer.json").read_text() == (tmp_path / "a" / "tokenizer.json").read_text()
    bad = {**run, "data": {**run["data"], "init_args": {**run["data"]["init_args"], "seq_lenn": 3}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit, match="^2$"):  # one line on stderr, exit status 2
        main(["tokenizer", "train", "--config", str(tmp_path / "bad.yaml"), "--vocab-size", "300",
              "--output", str(tmp_path / "c")])  # fmt: skip
    assert re.search("seq_lenn", capsys.readouterr().err)
    (tmp_path / "nodata.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": 1}}))
    with pytest.raises(SystemExit, match="^2$"):  # one line on stderr, exit status 2
        main(["tokenizer", "train", "--config", str(tmp_path / "nodata.yaml"), "--vocab-size", "300",
              "--output", str(tmp_path / "d")])  # fmt: skip
    assert re.search("data", capsys.readouterr().err)


def test_train_bpe_round_trips_without_the_cli():
    tokenizer = train_bpe(TRICKY * 5, vocab_size=280)
    for text in TRICKY:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids) == text


def test_an_unreadable_source_is_named_without_a_traceback(corpus, tmp_path, capsys):
    run = yaml.safe_load((corpus / "run.yaml").read_text())
    run["data"]["init_args"]["sources"][0]["data_files"] = str(tmp_path / "missing" / "*.jsonl")
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(run))
    with pytest.raises(SystemExit, match="^2$"):  # one line on stderr, exit status 2
        main(["tokenizer", "train", "--config", str(tmp_path / "missing.yaml"), "--vocab-size", "300",
              "--output", str(tmp_path / "out")])  # fmt: skip
    assert re.search(r"(?m)^zoo tokenizer: .*missing/\*\.jsonl matches no file", capsys.readouterr().err)


def test_training_a_bpe_says_so_with_its_size_and_the_documents_read(capsys, monkeypatch):
    from zoo.data import tokenizer as module

    monkeypatch.setattr(module, "PROGRESS_EVERY", 10)
    train_bpe(TRICKY * 5, vocab_size=280)
    err = capsys.readouterr().err
    assert "tokenizer: training a byte-level BPE of 280 tokens" in err
    assert f"on {len(TRICKY) * 5:,} documents" in err and "tokenizer: 10 documents read" in err
