"""Exact resumption of the data position: the packer's state, the loader's lag, and a resumed `fit`."""

import datasets
import lightning as L
import pytest
import torch

from zoo.data import PackedDataset, StdlibCorpus, TrainedBPE
from zoo.data.loader import ResumableDataLoader


def documents(n_shards=4, per_shard=30):
    def generate(shards):
        for shard in shards:
            for i in range(per_shard):
                length = 3 + (shard * 7 + i) % 11
                yield {"input_ids": None if i % 13 == 5 else [shard * 1000 + i] * length}

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64"))})
    return datasets.IterableDataset.from_generator(
        generate, gen_kwargs={"shards": list(range(n_shards))}, features=features
    )


def rows(dataset, n):
    out = []
    for row in dataset:
        out.append(row["input_ids"].tolist())
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("shuffle_buffer", [0, 8])
def test_packer_resumes_with_the_next_row(shuffle_buffer):
    kwargs = {"seq_len": 16, "eos_id": 0, "shuffle_buffer": shuffle_buffer, "seed": 3}
    expected = rows(PackedDataset(documents(), **kwargs), 40)

    first = PackedDataset(documents(), **kwargs)
    head = rows(first, 17)
    state = first.state_dict()
    resumed = PackedDataset(documents(), **kwargs)
    resumed.load_state_dict(state)
    assert head + rows(resumed, 23) == expected


def test_shuffle_buffer_permutes_documents_and_keeps_every_token():
    plain = sum(rows(PackedDataset(documents(), seq_len=8, eos_id=0, drop_last=False), 10_000), [])
    mixed = sum(rows(PackedDataset(documents(), seq_len=8, eos_id=0, drop_last=False, shuffle_buffer=16), 10_000), [])
    assert plain != mixed and sorted(plain) == sorted(mixed)


def test_bad_rows_are_counted_once():
    packed = PackedDataset(documents(), seq_len=8, eos_id=0)
    skipped = sum(int(row["skipped"]) for row in packed)
    bad = sum(doc["input_ids"] is None for doc in documents())
    assert skipped == bad > 0


def test_loader_reports_the_position_before_the_prefetched_batch():
    loader = ResumableDataLoader(PackedDataset(documents(), seq_len=8, eos_id=0), batch_size=2)
    iterator = iter(loader)
    first, second = next(iterator), next(iterator)  # the trainer runs `first` while `second` waits
    state = loader.state_dict()
    resumed = ResumableDataLoader(PackedDataset(documents(), seq_len=8, eos_id=0), batch_size=2)
    resumed.load_state_dict(state)
    torch.testing.assert_close(next(iter(resumed))["input_ids"], second["input_ids"])
    assert not torch.equal(first["input_ids"], second["input_ids"])


def test_a_changed_world_size_is_refused():
    loader = ResumableDataLoader(PackedDataset(documents(), seq_len=8, eos_id=0), batch_size=2, world_size=2)
    state = loader.state_dict()
    other = ResumableDataLoader(PackedDataset(documents(), seq_len=8, eos_id=0), batch_size=2, world_size=4)
    with pytest.raises(ValueError, match="world_size.*same number of devices"):
        other.load_state_dict(state)


class Recorder(L.LightningModule):
    """Records the batches it trains on; a learning rate of 0 keeps the run cheap and deterministic."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        return self.weight * batch["input_ids"].float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_fit_resumed_from_a_checkpoint_sees_the_uninterrupted_batches(tmp_path, num_workers):
    def data():
        return StdlibCorpus(
            tokenizer=TrainedBPE(vocab_size=300, cache_dir=str(tmp_path / "tok")),
            seq_len=32, batch_size=2, limit_files=12, num_workers=num_workers, shuffle_buffer=16,
        )  # fmt: skip

    def fit(steps, root, ckpt_path=None):
        model = Recorder()
        trainer = L.Trainer(
            max_steps=steps, default_root_dir=root, logger=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
            callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)],
        )  # fmt: skip
        trainer.fit(model, datamodule=data(), ckpt_path=ckpt_path)
        return model.seen

    uninterrupted = fit(8, tmp_path / "a")
    before = fit(3, tmp_path / "b")
    after = fit(8, tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert len(before) == 3 and len(after) == 5
    for expected, got in zip(uninterrupted, before + after):
        torch.testing.assert_close(got, expected)
