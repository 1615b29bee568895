import pytest
import torch

from zoo.data import PackedDataset, StdlibCorpus, TrainedBPE
from zoo.data.corpus import is_validation, stdlib_documents, stdlib_shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    dm = StdlibCorpus(
        tokenizer=TrainedBPE(vocab_size=512, cache_dir=str(tmp_path_factory.mktemp("cache"))),
        seq_len=64, batch_size=4, limit_files=40, val_fraction=0.2,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_corpus_has_prose_and_code_without_tests():
    prose = list(stdlib_documents("prose", stdlib_shards("prose", limit=30)))
    code = list(stdlib_documents("code", stdlib_shards("code", limit=30)))
    assert any(d["id"].startswith("topic:") for d in prose)  # the pydoc topic pages
    assert any(d["id"].startswith("doc:") for d in prose)  # docstrings
    assert all(d["id"].endswith(".py") for d in code) and len(code) > 10
    assert all("/test" not in d["id"] and not d["id"].startswith("test") for d in code)
    assert "def " in code[0]["text"] or "class " in code[0]["text"]


def test_validation_split_is_deterministic_and_disjoint():
    ids = [f"file{i}.py" for i in range(2000)]
    held = [i for i in ids if is_validation(i, 0.1)]
    assert held == [i for i in ids if is_validation(i, 0.1)]
    assert 150 < len(held) < 250


def test_packing_puts_eos_between_documents():
    docs = [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}, {"input_ids": [6, 7, 8, 9]}]
    rows = list(PackedDataset(docs, seq_len=4, eos_id=0))
    assert [r["input_ids"].tolist() for r in rows] == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert all(torch.equal(r["input_ids"], r["labels"]) for r in rows)


def test_batches_and_tokenizer(corpus):
    assert corpus.vocab_size == 512 and corpus.eos_id == 0
    batch = next(iter(corpus.train_dataloader()))
    assert batch["input_ids"].shape == (4, 64) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].max() < 512
    text = "def f(x):\n\treturn  x  # ünïcode 🐍"
    ids = corpus.tokenizer.encode(text).ids
    assert corpus.tokenizer.decode(ids) == text


def test_train_and_validation_documents_are_disjoint(corpus):
    train = {row["id"] for ds, _ in corpus.sources("train") for row in ds}
    val = {row["id"] for ds, _ in corpus.sources("validation") for row in ds}
    assert train and val and not train & val


def test_validation_stream_is_finite_and_identical_each_time(corpus):
    first = [b["input_ids"] for b in corpus.val_dataloader()]
    second = [b["input_ids"] for b in corpus.val_dataloader()]
    assert len(first) > 0 and all(torch.equal(a, b) for a, b in zip(first, second)) and len(first) == len(second)


@pytest.mark.parametrize("prose_weight", [0.25, 0.7])
def test_realized_mixture_matches_weights(tmp_path, prose_weight):
    dm = StdlibCorpus(
        tokenizer=TrainedBPE(vocab_size=300, cache_dir=str(tmp_path)), seq_len=32, batch_size=1,
        limit_files=60, prose_weight=prose_weight, code_weight=1 - prose_weight, shuffle_buffer=16,
    )
    n = 2000
    sources = [row["source"] for _, row in zip(range(n), dm.mixed_text("train"))]
    share = sources.count(0) / n  # source 0 is prose
    assert abs(share - prose_weight) < 0.04  # binomial std at n=2000 is ≤ 0.011


def test_bad_values(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100 is below"):
        TrainedBPE(vocab_size=100)
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        StdlibCorpus(tokenizer=TrainedBPE(vocab_size=300), seq_len=8, batch_size=1, val_fraction=1.5)
    with pytest.raises(ValueError, match="both 0"):
        StdlibCorpus(tokenizer=TrainedBPE(vocab_size=300), seq_len=8, batch_size=1, prose_weight=0, code_weight=0)
