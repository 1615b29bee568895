"""The streamed mixture: local files through the same ``datasets`` path as the hub, weights, bad rows, hold-out."""

import json
from collections import Counter

import datasets
import huggingface_hub.constants
import pytest
import yaml

from zoo.data import Mixture, Source, TrainedBPE


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with a.open("w") as f:
        for i in range(200):
            f.write(json.dumps({"text": f"alpha document {i} " * 3}) + "\n")
            if i % 50 == 0:  # bad rows: None, missing field, empty, not a string
                for bad in ({"text": None}, {"other": "x"}, {"text": "  "}, {"text": 7}):
                    f.write(json.dumps(bad) + "\n")
    with b.open("w") as f:
        for i in range(200):
            f.write(json.dumps({"q": f"question {i}", "a": f"beta answer {i}"}) + "\n")
    return str(a), str(b)


def mixture(files, tmp_path, **kwargs):
    a, b = files
    sources = [
        Source(data_files=a, weight=0.7, val_documents=10),
        Source(data_files=b, template="{q}\n{a}", weight=0.3, val_documents=10),
    ]
    tokenizer = TrainedBPE(vocab_size=300, cache_dir=str(tmp_path / "tok"))
    return Mixture(sources=sources, tokenizer=tokenizer, seq_len=16, batch_size=2, **kwargs)


def test_realized_proportions_follow_weights(files, tmp_path):
    counts = Counter(row["source"] for _, row in zip(range(2000), mixture(files, tmp_path).mixed_text("train")))
    assert counts[0] / 2000 == pytest.approx(0.7, abs=0.04)


def test_bad_rows_are_skipped_and_templates_fill_fields(files, tmp_path):
    texts = [row["text"] for row in mixture(files, tmp_path).sources("train")[0][0]]
    # 216 rows: the first 10 (6 good, 4 bad) are held out; of the other 206, the 12 bad ones come out as None
    assert len(texts) == 206 and sum(t is None for t in texts) == 12
    assert all(isinstance(t, str) and t.strip() for t in texts if t is not None)
    second = next(iter(mixture(files, tmp_path).sources("validation")[1][0]))
    assert second["text"] == "question 0\nbeta answer 0"


def test_validation_is_a_fixed_slice_never_trained_on(files, tmp_path):
    dm = mixture(files, tmp_path)
    held_out = {row["text"] for dataset, _ in dm.sources("validation") for row in dataset} - {None}
    trained = {row["text"] for dataset, _ in dm.sources("train") for row in dataset} - {None}
    assert len(held_out) == 16 and not held_out & trained
    again = {row["text"] for dataset, _ in mixture(files, tmp_path).sources("validation") for row in dataset} - {None}
    assert again == held_out


def test_batches_are_packed_rows(files, tmp_path):
    dm = mixture(files, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].max() < dm.vocab_size


def test_unreachable_hub_source_says_how_to_go_offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"fineweb-edu.*data_files"):
        Source(path="HuggingFaceFW/fineweb-edu", name="sample-100BT").load("train")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_files": "x.jsonl", "weight": -1.0}, "weight=-1.0"),
        # NaN used to drop its source silently (NaN > 0 is false), inf to make every probability NaN
        ({"data_files": "x.jsonl", "weight": float("nan")}, r"data source x.jsonl weight=nan must be a finite number"),
        ({"data_files": "x.jsonl", "weight": float("inf")}, r"data source x.jsonl weight=inf must be a finite number"),
        ({"data_files": "x.jsonl", "weight": float("-inf")}, r"weight=-inf must be a finite number ≥ 0"),
        ({}, "neither path nor data_files"),
        ({"data_files": "x.jsonl", "template": "no fields"}, "names no field"),
    ],
)
def test_bad_source_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Source(**kwargs)


def test_unknown_extension_asks_for_a_builder():
    with pytest.raises(ValueError, match="set path to one of"):
        Source(data_files="/data/corpus.xyz").builder()


@pytest.mark.parametrize("preset", ["fineweb-edu-100bt", "gpt-s-mixture", "dhara-mixture"])
def test_presets_are_valid_sources_with_weights_summing_to_one(preset):
    rows = yaml.safe_load(open(f"configs/data/{preset}.yaml"))
    sources = [Source(**row) for row in rows]
    assert sum(s.weight for s in sources) == pytest.approx(1.0)


def rank_streams(sources, tmp_path):
    """The tokenized document stream each of 2 ranks reads through a DataLoader with 2 workers, decoded."""
    import types

    import torch

    tokenizer = TrainedBPE(vocab_size=300, cache_dir=str(tmp_path / "tok"))
    seen = []
    for rank in range(2):
        dm = Mixture(sources=sources, tokenizer=tokenizer, seq_len=16, batch_size=2, num_workers=2)
        dm.trainer = types.SimpleNamespace(world_size=2, global_rank=rank)
        dm.setup("validate")
        loader = torch.utils.data.DataLoader(dm._stream("validation"), batch_size=None, num_workers=2)
        seen.append([dm.load_tokenizer().decode(row["input_ids"]) for row in loader])
    return seen


def shards(tmp_path, name, n_files):
    paths = []
    for f in range(n_files):
        path = tmp_path / f"{name}{f}.jsonl"
        path.write_text("\n".join(json.dumps({"text": f"{name} doc {f} {i} end"}) for i in range(25)))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("n_files", [4, 1])
def test_two_ranks_with_two_workers_read_disjoint_documents_covering_the_source(tmp_path, n_files):
    # validation_split="train": the held-out stream is the whole (finite) file set, read once
    seen = rank_streams([Source(data_files=shards(tmp_path, "a", n_files), validation_split="train")], tmp_path)
    everything = [f"a doc {f} {i} end" for f in range(n_files) for i in range(25)]
    assert not set(seen[0]) & set(seen[1])  # the ranks are disjoint
    assert sorted(seen[0] + seen[1]) == sorted(everything)  # together they cover it, each document once
    assert seen[0] and seen[1]


def test_two_ranks_with_two_workers_read_disjoint_mixtures(tmp_path):
    sources = [Source(data_files=shards(tmp_path, n, 4), weight=0.5, validation_split="train") for n in "ab"]
    seen = rank_streams(sources, tmp_path)
    assert len(seen[0] + seen[1]) == len(set(seen[0] + seen[1]))  # no document read twice
    for stream in seen:  # each rank gets both sources
        assert {text[0] for text in stream} == {"a", "b"}


def test_a_hub_source_on_a_machine_without_the_hub_is_refused_at_once(monkeypatch):
    """No connection to huggingface.co: the source is named with the offline alternative before the hub client
    is asked (which would retry for about 50 s); its size is not looked up either."""
    import datasets

    from zoo.data import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: asked.append(a))
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda *a, **k: asked.append(a))
    source = Source(path="HuggingFaceFW/fineweb-edu", name="sample-10BT")
    assert source.known_rows() is None
    with pytest.raises(ValueError, match=r"path='HuggingFaceFW/fineweb-edu'.*cannot reach.*data_files"):
        source.load("train")
    assert asked == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_stdlib_weights_are_refused_by_name(bad):
    from zoo.data import StdlibCorpus, TrainedBPE

    with pytest.raises(ValueError, match=f"data prose_weight={bad} must be a finite number"):
        StdlibCorpus(tokenizer=TrainedBPE(vocab_size=300), seq_len=8, batch_size=1, prose_weight=bad)


def test_a_mixture_whose_weights_sum_to_zero_is_refused(tmp_path):
    with pytest.raises(ValueError, match="all have weight 0"):
        Mixture(sources=[Source(data_files="x.jsonl", weight=0.0)], tokenizer=None, seq_len=8, batch_size=1)
