"""DDP on CPU (gloo): two `python -m zoo fit` processes train like one process at the same global batch, and the
ranks read disjoint data.

What is comparable. zoo shards the training stream across ranks *before* packing (``split_dataset_by_node`` on the
interleaved text stream, then one packer per rank with its own shuffle seed), so on a real corpus the two ranks
pack different documents into rows in a different order than one process would: no one-process run sees the
same global batches (only the ranks' disjointness carries over; it is checked here on :class:`Numbered`, which
shards through the same code). Identical global batches
exist when every document is exactly one row and nothing is shuffled: then rank r of 2 gets documents r, r + 2, …
(one-shard streams are split by example), so DDP step s trains on documents 4s … 4s + 3 with 2 rows per rank, as
one process with 4 rows per batch does. :class:`Numbered` is such a source, and it goes through the whole
TextDataModule pipeline (sharding, tokenization, packing, the resumable loader) like any corpus. With it, the
mean of the two ranks' losses equals the one-process loss at every step up to float rounding (the gradient
all-reduce sums in another order): over 6 steps the largest difference measured was 4.8e-7 (one float32 ulp at a
loss of 4), asserted below 2e-6.
"""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import lightning as L
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from zoo.data.base import TextDataModule
from zoo.data.tokenizer import EOS, TokenizerSource

ROOT = Path(__file__).resolve().parents[2]
WORDS = 60
pytestmark = pytest.mark.slow  # two processes training three runs


class Numbered(TextDataModule):
    """``documents`` texts of ``seq_len - 1`` words each (with the end-of-text token: exactly one row per
    document), document i starting with the word ``d{i}``, so every row names its document.

    Args:
        tokenizer: a word-level tokenizer over the words ``d0…`` and ``w0…`` (see :func:`word_tokenizer`).
        seq_len: tokens per row.
        batch_size: rows per batch on each device.
        documents: how many documents the training stream holds.
    """

    def __init__(self, *, tokenizer: TokenizerSource, seq_len: int, batch_size: int, documents: int = 64) -> None:
        super().__init__(tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size, shuffle_buffer=0)
        self.documents = documents

    def sources(self, split: str) -> list[tuple[datasets.IterableDataset, float]]:
        n, length = self.documents, self.seq_len - 1

        def generate():
            for i in range(n):
                yield {"text": " ".join([f"d{i}", *(f"w{(i * 7 + 3 * k) % WORDS}" for k in range(length - 1))])}

        return [(datasets.IterableDataset.from_generator(generate), 1.0)]

    def fingerprint(self) -> str:
        return f"numbered-{self.documents}-{self.seq_len}"


def word_tokenizer(path: Path, documents: int) -> None:
    vocab = {EOS: 0, **{f"w{i}": 1 + i for i in range(WORDS)}, **{f"d{i}": 1 + WORDS + i for i in range(documents)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))


class BatchLog(L.Callback):
    """Writes each training step of this rank to ``{path}.rank{global_rank}`` as a JSON line: the step (from 1),
    the rank's loss and the first token of each row (its document)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        line = {"step": trainer.global_step, "loss": outputs["loss"].item(), "rows": batch["input_ids"][:, 0].tolist()}
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(line) + "\n")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().split("\n") if line]


def run_config(tmp: Path, name: str, *, batch_size: int, documents: int = 64, **trainer) -> dict:
    """The tiny DDP-comparison run: a 2-layer Llama-style model on :class:`Numbered` documents, one process per
    device (``devices``) or node (``num_nodes``) as ``trainer`` says, rows logged by :class:`BatchLog`."""
    processes = trainer.get("devices", 1) * trainer.get("num_nodes", 1)
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "strategy": "ddp" if processes > 1 else "auto",
            # fp32 on every CPU: the trajectories agree to fp32 rounding, and bf16 (chosen where the CPU has bf16
            # units) rounds differently when the batch is split over processes
            "precision": "32-true",
            "max_steps": 6, "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "enable_model_summary": False, "logger": False, "default_root_dir": str(tmp / name),
            "callbacks": [{"class_path": "tests.training.test_ddp.BatchLog", "init_args": {"path": str(tmp / name)}}],
            **trainer,
        },
        "model": {
            "class_path": "zoo.objectives.CausalLM",
            "init_args": {
                "backbone": {
                    "vocab_size": 128, "dim": 32, "n_layers": 2, "max_seq_len": 32,
                    "norm": {"class_path": "zoo.nn.RMSNorm"}, "position": {"class_path": "zoo.nn.Rotary"},
                    "block": {"class_path": "zoo.nn.PreNormBlock", "init_args": {
                        "norm": {"class_path": "zoo.nn.RMSNorm"},
                        "attention": {"class_path": "zoo.nn.GroupedQueryAttention",
                                      "init_args": {"n_heads": 4, "n_kv_heads": 2}},
                        "ffn": {"class_path": "zoo.nn.SwiGLU", "init_args": {"hidden_dim": 64}}}},
                },
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}},
            },
        },
        "data": {
            "class_path": "tests.training.test_ddp.Numbered",
            "init_args": {
                "tokenizer": {"class_path": "zoo.data.PretrainedTokenizer", "init_args": {"path": str(tmp / "t.json")}},
                "seq_len": 32, "batch_size": batch_size, "documents": documents,
            },
        },
        "checkpoint": {"save_last": False, "save_top_k": 0},
    }  # fmt: skip


def fit(tmp: Path, name: str, *, devices: int, batch_size: int, documents: int = 64) -> list[Path]:
    config = run_config(tmp, name, batch_size=batch_size, documents=documents, devices=devices)
    (tmp / f"{name}.yaml").write_text(json.dumps(config))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "ZOO_CACHE": str(tmp), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "zoo", "fit", "--config", str(tmp / f"{name}.yaml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return [tmp / f"{name}.rank{rank}" for rank in range(devices)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    word_tokenizer(tmp / "t.json", documents=64)
    (one,) = fit(tmp, "one", devices=1, batch_size=4)
    ranks = fit(tmp, "two", devices=2, batch_size=2)
    return read(one), [read(rank) for rank in ranks]


def test_the_ranks_read_disjoint_data_and_together_the_single_process_batches(runs):
    one, (rank0, rank1) = runs
    doc = {1 + WORDS + i: i for i in range(64)}  # token id of d{i} -> i
    for step, (single, a, b) in enumerate(zip(one, rank0, rank1), start=1):
        assert single["step"] == a["step"] == b["step"] == step
        assert [doc[t] for t in a["rows"]] == [4 * (step - 1), 4 * (step - 1) + 2]  # rank 0: even documents
        assert [doc[t] for t in b["rows"]] == [4 * (step - 1) + 1, 4 * (step - 1) + 3]  # rank 1: odd ones
        assert sorted(a["rows"] + b["rows"]) == sorted(single["rows"])
    seen0 = {t for line in rank0 for t in line["rows"]}
    seen1 = {t for line in rank1 for t in line["rows"]}
    assert len(rank0) == len(rank1) == len(one) == 6 and not seen0 & seen1


def test_two_processes_follow_the_single_process_loss_trajectory(runs):
    one, (rank0, rank1) = runs
    single = torch.tensor([line["loss"] for line in one], dtype=torch.float64)
    ddp = torch.tensor([(a["loss"] + b["loss"]) / 2 for a, b in zip(rank0, rank1)], dtype=torch.float64)
    assert single[0] - single[-1] > 0.1  # it trains, so later steps test the synchronized updates
    torch.testing.assert_close(ddp, single, rtol=0, atol=2e-6)
