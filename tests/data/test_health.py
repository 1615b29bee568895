"""Data that never crashes or hangs a run: every kind of bad row skipped and counted by reason, damaged files
read up to the damage, sources too small for their validation slice refused, and a stalled stream stopped."""

import gc
import gzip
import json
import threading
import time
from collections import Counter

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from zoo.data import Mixture, PackedDataset, SFTDataModule, SFTSource, Source, TextDataModule, TrainedBPE
from zoo.data.formats import Alpaca
from zoo.data.health import DataStallError
from zoo.data.rows import REASONS

GOOD = {"text": "a good document with several words in it"}
BAD_LINES = {  # one line of each kind, as raw bytes, and the reason it is skipped for
    b"this line is not json": "malformed",
    b"[1, 2, 3]": "malformed",
    b'{"text": "caf\xff\xfe broken utf-8"}': "undecodable",
    b'{"other": "no text field"}': "missing",
    b'{"text": null}': "none",
    b'{"text": 42}': "wrong_type",  # the number that broke pyarrow's block parsing ("changed from string to number")
    b'{"text": ["a", "list"]}': "wrong_type",
    b'{"text": "   "}': "empty",
}


def write_lines(path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def bad_lines(groups: int) -> list[bytes]:
    lines = []
    for i in range(groups):  # good rows around each bad one: one bad line costs one row, not its block or file
        lines.append(json.dumps({"text": f"document {i} " * 4}).encode())
        lines.extend(BAD_LINES)
    return lines


@pytest.fixture
def bad_file(tmp_path):
    return write_lines(tmp_path / "bad.jsonl", bad_lines(20))


def mixture(tmp_path, *sources, **kwargs) -> Mixture:
    tokenizer = TrainedBPE(vocab_size=300, cache_dir=str(tmp_path / "tok"))
    return Mixture(sources=list(sources), tokenizer=tokenizer, seq_len=16, batch_size=2, **kwargs)


def reasons_of(dm, split="train") -> Counter:
    """How many rows of one pass over each source were skipped for each reason."""
    return Counter(REASONS[row["reason"] - 1] for dataset, _ in dm.sources(split) for row in dataset if row["reason"])


def test_each_kind_of_bad_line_is_one_skipped_row_with_its_reason(bad_file, tmp_path):
    dm = mixture(tmp_path, Source(data_files=bad_file, val_documents=9))  # the first good row and its 8 bad lines
    texts = [row["text"] for row in dm.sources("train")[0][0]]
    assert len(texts) == 20 * 9 - 9 and sum(t is not None for t in texts) == 19  # every good row kept
    expected = Counter(BAD_LINES.values())
    assert reasons_of(dm) == Counter({reason: 19 * n for reason, n in expected.items()})
    assert reasons_of(dm, "validation") == expected


def test_the_packer_counts_every_bad_row_by_reason(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", bad_lines(20) + [json.dumps(GOOD).encode()] * 10)
    dm = mixture(tmp_path, Source(data_files=path, val_documents=180))  # validation: the 180 lines, read once
    dm.setup("validate")
    rows = list(PackedDataset(dm._stream("validation"), seq_len=16, eos_id=dm.eos_id, drop_last=False))
    counts = sum(row["skipped_by"] for row in rows)  # (S, R)
    assert dict(zip(REASONS, counts[0].tolist())) == {
        "malformed": 40, "undecodable": 20, "missing": 20, "none": 20, "wrong_type": 40, "empty": 20, "too_long": 0
    }  # fmt: skip
    assert sum(int(row["skipped"]) for row in rows) == 160


def test_counts_are_kept_per_source(bad_file, tmp_path):
    clean = write_lines(tmp_path / "clean.jsonl", [json.dumps(GOOD).encode()] * 30)
    dm = mixture(tmp_path, Source(data_files=bad_file, val_documents=9), Source(data_files=clean, val_documents=2))
    dm.setup("fit")
    packed = PackedDataset(dm._stream("train"), seq_len=16, eos_id=dm.eos_id, sources=2)
    counts = sum(row["skipped_by"] for _, row in zip(range(60), packed))  # (S, R)
    assert counts.shape == (2, len(REASONS)) and counts[1].sum() == 0
    assert all(counts[0, REASONS.index(reason)] > 0 for reason in BAD_LINES.values())


def test_trained_batches_are_tallied_logged_saved_and_summarized(bad_file, tmp_path, caplog):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from tests.helpers import tiny_backbone
    from zoo.objectives import CausalLM

    dm = mixture(tmp_path, Source(data_files=bad_file, val_documents=9), shuffle_buffer=4)
    model = CausalLM(backbone=tiny_backbone(vocab_size=300, dim=16, n_layers=1, max_seq_len=16))
    logger = CSVLogger(str(tmp_path / "logs"), name="", version="")
    trainer = L.Trainer(max_steps=12, log_every_n_steps=3, logger=logger, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with caplog.at_level("INFO"):
        trainer.fit(model, datamodule=dm)
    per_reason = dict(zip(REASONS, dm.skips.counts[0].tolist()))
    assert sum(per_reason.values()) == int(model.skipped_rows) > 8  # both paths count the same rows
    assert all(per_reason[r] > 0 for r in set(BAD_LINES.values()))
    logged = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    assert "data/skipped/malformed" in logged[0] and "data/skipped_rows" in logged[0]
    assert any("bad rows skipped in training" in m and "malformed" in m and bad_file in m for m in caplog.messages)
    state = dm.state_dict()["skipped"]
    again = mixture(tmp_path, Source(data_files=bad_file, val_documents=9))
    again.load_state_dict({"skipped": state})
    assert torch.equal(again.skips.counts, dm.skips.counts)  # resumed runs go on counting from here


def test_sft_rows_are_counted_by_reason_too(tmp_path):
    rows = [json.dumps({"instruction": f"Say {i}.", "output": f"{i}"}).encode() for i in range(10)]
    bad = [{"instruction": "x"}, {"instruction": "x", "output": 3}, {"instruction": "long " * 400, "output": "y"}]
    rows[3:3] = [b"{broken", *(json.dumps(row).encode() for row in bad)]  # counted on the good row after them
    rows += rows[:3]  # 14 held out, 3 to train on
    path = write_lines(tmp_path / "sft.jsonl", rows)
    tokenizer = TrainedBPE(vocab_size=300, cache_dir=str(tmp_path / "tok"))
    dm = SFTDataModule(sources=[SFTSource(data_files=path, val_documents=14)], format=Alpaca(), tokenizer=tokenizer,
                       seq_len=256, batch_size=2, truncation="drop")  # fmt: skip
    dm.setup("validate")
    counts = sum(row["skipped_by"][0] for row in dm.packer(dm._stream("validation"), train=False, seed=0))
    assert dict(zip(REASONS, counts.tolist())) == {
        "malformed": 1, "undecodable": 0, "missing": 1, "none": 0, "wrong_type": 1, "empty": 0, "too_long": 1
    }  # fmt: skip


def test_a_truncated_gzip_file_gives_its_readable_rows_and_a_warning(tmp_path):
    lines = [json.dumps({"text": f"document number {i} " * 5}).encode() for i in range(3000)]
    data = gzip.compress(b"\n".join(lines))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    dm = mixture(tmp_path, Source(data_files=str(path), val_documents=1))
    with pytest.warns(RuntimeWarning, match=r"cut\.jsonl\.gz is damaged after \d+ lines \(EOFError.*rest of the file"):
        texts = [row["text"] for row in dm.sources("train")[0][0]]
    assert 500 < len(texts) < 3000 and texts[-1] == f"document number {len(texts)} " * 5  # in order, then cut


def test_a_corrupt_parquet_row_group_loses_only_itself(tmp_path):
    path = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " * 20 for i in range(300)]}), path, row_group_size=100,
                   compression="zstd")  # fmt: skip
    column = pq.ParquetFile(path).metadata.row_group(2).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 30 : start + 80] = bytes(b ^ 0xFF for b in data[start + 30 : start + 80])
    path.write_bytes(bytes(data))
    dm = mixture(tmp_path, Source(data_files=str(path), val_documents=1))
    with pytest.warns(RuntimeWarning, match=r"broken\.parquet is damaged after 200 rows"):
        texts = [row["text"] for row in dm.sources("train")[0][0]]
    assert texts == [f"row {i} " * 20 for i in range(1, 200)]


@pytest.mark.parametrize("suffix", ["jsonl", "txt", "parquet"])
def test_a_source_smaller_than_its_validation_slice_is_refused_before_training(tmp_path, suffix):
    path = tmp_path / f"small.{suffix}"
    texts = [f"document {i}" for i in range(350)]
    if suffix == "parquet":
        pq.write_table(pa.table({"text": texts}), path)
    else:
        path.write_text("\n".join(json.dumps({"text": t}) if suffix == "jsonl" else t for t in texts) + "\n")
    dm = mixture(tmp_path, Source(data_files=str(path)))  # val_documents: 1000 by default
    with pytest.raises(ValueError, match=r"small\.\w+ has 350 rows, but val_documents=1000 .* val_documents: 35"):
        dm.prepare_data()  # before the tokenizer is trained on it, and before any step
    fine = mixture(tmp_path, Source(data_files=str(path), val_documents=35))
    assert fine.sources("train")  # the fix the message names is accepted



@pytest.mark.parametrize("suffix", ["jsonl", "txt"])
def test_an_empty_source_file_is_named_as_empty_with_a_fix_that_works(tmp_path, suffix):
    path = tmp_path / f"empty.{suffix}"
    path.write_text("")
    dm = mixture(tmp_path, Source(path="json" if suffix == "jsonl" else "text", data_files=str(path)))
    with pytest.raises(ValueError, match=rf"data_files=\S*empty\.{suffix} is empty .*put documents in it"):
        dm.prepare_data()
    with pytest.raises(ValueError, match="is empty"):  # lowering val_documents is no fix for an empty file
        mixture(tmp_path, Source(data_files=str(path), val_documents=1)).prepare_data()
    texts = [f"document {i} " * 5 for i in range(1200)]  # the fix the message names: documents in the file
    path.write_text("\n".join(json.dumps({"text": t}) if suffix == "jsonl" else t for t in texts) + "\n")
    fine = mixture(tmp_path, Source(data_files=str(path)))
    fine.prepare_data()
    assert next(iter(fine.sources("train")[0][0]))["text"] == texts[1000]

class Streams(TextDataModule):
    """A data module over given training rows (a generator), standing for a hub source of unknown size."""

    def __init__(self, generator, **kwargs):
        super().__init__(tokenizer=TrainedBPE(vocab_size=300), seq_len=8, batch_size=2, **kwargs)
        self.generator = generator

    def sources(self, split):
        return [(datasets.IterableDataset.from_generator(self.generator), 1.0)]

    def source_labels(self):
        return ["hub/unknown-size"]

    def fingerprint(self):
        return "streams-test"

    def load_tokenizer(self):
        if self.tokenizer is None:
            from tokenizers import Tokenizer, models

            self.tokenizer = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1}, unk_token="[UNK]"))
        return self.tokenizer


def empty():
    yield from ()


RELEASE = threading.Event()


def hangs():
    yield {"text": "one row"}
    RELEASE.wait(600)  # a hub that stopped answering (released at the end of the test, so no thread is left)
    yield {"text": "never"}


def test_an_empty_training_stream_stops_at_once_naming_its_sources():
    loader = Streams(empty).train_dataloader()
    with pytest.raises(DataStallError, match=r"ended without giving one batch.*hub/unknown-size.*no row skipped"):
        next(iter(loader))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_stalled_training_stream_stops_after_stall_timeout(num_workers):
    RELEASE.clear()
    loader = Streams(hangs, stall_timeout=1.5, num_workers=num_workers).train_dataloader()
    start = time.monotonic()
    try:
        with pytest.raises(DataStallError, match=r"no batch for 1.5 s \(data.stall_timeout\).*hub/unknown-size"):
            next(iter(loader))
        assert time.monotonic() - start < 30
    finally:
        RELEASE.set()
        del loader  # its worker (waiting in the hung source) is shut down with it
        gc.collect()


def test_stall_timeout_is_checked():
    with pytest.raises(ValueError, match=r"stall_timeout=0 .* null"):
        Streams(empty, stall_timeout=0)


# ---- rows too long to tokenize -----------------------------------------------------------------------------------


def test_a_row_over_max_row_chars_is_counted_too_long_and_training_goes_on(tmp_path, caplog):
    """One 200 kB row among short ones, with a 10 kB limit: the tokenizer's training text and the training stream
    both drop it before the tokenizer sees it, counted as too_long; training goes on."""
    import lightning as L

    from tests.helpers import tiny_backbone
    from zoo.objectives import CausalLM

    rows = [json.dumps({"text": f"document {i} with a few words " * 2}).encode() for i in range(40)]
    rows[20] = json.dumps({"text": "x" * 200_000}).encode()  # in the training part (the first 5 are held out)
    path = write_lines(tmp_path / "huge.jsonl", rows)
    dm = mixture(tmp_path, Source(data_files=path, val_documents=5), max_row_chars=10_000, shuffle_buffer=4)

    feed = dm.tokenizer_training_texts()
    texts = list(feed)
    assert (len(texts), feed.too_long) == (34, 1) and max(map(len, texts)) < 10_000
    with caplog.at_level("INFO"):
        dm.load_tokenizer()  # trained on the same feed
    assert any("tokenizer: learned from 34 documents" in m and "1 skipped as too_long (over data.max_row_chars=10000)"
               in m for m in caplog.messages)  # fmt: skip

    model = CausalLM(backbone=tiny_backbone(vocab_size=300, dim=16, n_layers=1, max_seq_len=16))
    trainer = L.Trainer(max_steps=40, enable_checkpointing=False, logger=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)  # 40 steps of 2 rows of 16 tokens: more than one pass over the 34 rows
    assert trainer.global_step == 40
    per_reason = dict(zip(REASONS, dm.skips.counts[0].tolist()))
    assert per_reason["too_long"] >= 1 and sum(per_reason.values()) == per_reason["too_long"]


def test_sft_examples_over_max_row_chars_are_too_long(tmp_path):
    rows = [json.dumps({"instruction": f"Say {i}.", "output": f"{i}"}).encode() for i in range(10)]
    rows[2] = json.dumps({"instruction": "Repeat.", "output": "y" * 5000}).encode()
    path = write_lines(tmp_path / "sft.jsonl", rows)
    tokenizer = TrainedBPE(vocab_size=300, cache_dir=str(tmp_path / "tok"))
    dm = SFTDataModule(sources=[SFTSource(data_files=path, val_documents=6, weight=1.0)], format=Alpaca(),
                       tokenizer=tokenizer, seq_len=256, batch_size=2, max_row_chars=1000)  # fmt: skip
    dm.setup("validate")
    counts = sum(row["skipped_by"][0] for row in dm.packer(dm._stream("validation"), train=False, seed=0))
    assert dict(zip(REASONS, counts.tolist()))["too_long"] == 1 and int(counts.sum()) == 1


def test_max_row_chars_is_checked():
    with pytest.raises(ValueError, match="data max_row_chars=0 must be ≥ 1"):
        Mixture(sources=[Source(data_files="x.jsonl")], tokenizer=None, seq_len=8, batch_size=1, max_row_chars=0)


def test_tokenizer_training_reports_progress_and_stops_on_a_stalled_source(monkeypatch, caplog):
    from zoo.data.health import TextFeed
    from zoo.data.tokenizer import train_bpe

    def stalling():
        for i in range(3):
            yield f"text number {i} " * 20
        time.sleep(30)  # a hub that stopped answering
        yield "never"

    monkeypatch.setattr(TextFeed, "every", 0.0)  # a progress line after every document
    feed = TextFeed(stalling(), max_chars=None, stall_timeout=1.0, describe=lambda: "sources slow.jsonl")
    start = time.monotonic()
    with caplog.at_level("INFO"), pytest.raises(DataStallError) as err:
        train_bpe(feed, vocab_size=300)
    assert time.monotonic() - start < 10
    assert str(err.value) == (
        "the tokenizer's training text gave no document for 1 s (data.stall_timeout) after 3 documents: sources "
        "slow.jsonl. Check that the source is reachable, or raise data.stall_timeout for a slow one"
    )
    assert any(m.startswith("tokenizer: 3 documents (0.0M characters) read in") for m in caplog.messages)
