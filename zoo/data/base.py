"""``TextDataModule``: the shared path from text sources to packed token batches.

::

    sources (datasets.IterableDataset of {"text": ...}) ── weighted interleave ── tokenize (in workers)
        ── pack (EOS between documents) ── DataLoader ── {"input_ids": (B, T), "labels": (B, T)}

Subclasses only say which sources exist (:meth:`sources`); hub, local and embedded text all go through the
same ``datasets`` streaming code. Batches know nothing of the model: labels are unshifted copies of the
inputs, ``-100`` where no loss is wanted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import datasets
import lightning as L
import torch
from datasets.distributed import split_dataset_by_node
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from zoo.data.loader import ResumableDataLoader
from zoo.data.packing import PackedDataset
from zoo.data.tokenizer import TokenizerSource


class TextDataModule(L.LightningDataModule):
    """Weighted text sources → tokenizer → packed fixed-length rows.

    Args:
        tokenizer: where the tokenizer comes from, e.g. :class:`zoo.data.TrainedBPE` or
            :class:`zoo.data.PretrainedTokenizer`.
        seq_len: tokens per row.
        batch_size: rows per batch on each device.
        num_workers: DataLoader worker processes (tokenization runs inside them).
        seed: shuffling and interleaving seed.
        shuffle_buffer: tokenized documents held in the training stream's shuffle buffer (saved in checkpoints,
            so resuming is exact).
        document_mask: keep attention inside each packed document: batches carry ``document_ids`` and the
            objective masks attention across documents (see :class:`zoo.data.PackedDataset`). Off by default,
            as in GPT-2/Llama pre-training; a dense mask also costs attention speed on GPUs.
    """

    columns: tuple[str, ...] = ("text",)  # what each source row carries into the pipeline

    def __init__(
        self,
        *,
        tokenizer: TokenizerSource,
        seq_len: int,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 256,
        document_mask: bool = False,
    ) -> None:
        super().__init__()
        if seq_len < 2:
            raise ValueError(f"data seq_len={seq_len} must be ≥ 2")
        if batch_size < 1:
            raise ValueError(f"data batch_size={batch_size} must be ≥ 1")
        if num_workers < 0:
            raise ValueError(f"data num_workers={num_workers} must be ≥ 0")
        self.tokenizer_source = tokenizer
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.seed, self.shuffle_buffer, self.document_mask = seed, shuffle_buffer, document_mask
        self.tokenizer: Tokenizer | None = None

    # ---- what subclasses provide -------------------------------------------------------------------------
    def sources(self, split: str) -> list[tuple[datasets.IterableDataset, float]]:
        """``(dataset, weight)`` pairs for ``split`` ("train" or "validation"); rows have a ``text`` column."""
        raise NotImplementedError

    def tokenizer_texts(self) -> Iterable[str]:
        """Text a trained tokenizer learns from (default: one pass over the unweighted training sources)."""
        for dataset, _ in self.sources("train"):
            for row in dataset:
                if row["text"]:
                    yield row["text"]

    def fingerprint(self) -> str:
        """Identifies the training text, so a trained tokenizer is cached per corpus."""
        raise NotImplementedError

    # ---- tokenizer ---------------------------------------------------------------------------------------
    def prepare_data(self) -> None:  # rank 0 only: trains (and caches) the tokenizer once
        self.load_tokenizer()

    def load_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            self.tokenizer = self.tokenizer_source.load(self.tokenizer_texts, self.fingerprint())
        return self.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.load_tokenizer().get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self.load_tokenizer().token_to_id(self.tokenizer_source.eos_token)

    def setup(self, stage: str) -> None:
        self.load_tokenizer()

    # ---- the pipeline ------------------------------------------------------------------------------------
    def mixed_text(self, split: str) -> datasets.IterableDataset:
        """The weighted interleaving of :meth:`sources`: rows ``{"text", "source"}`` (``source`` = index of the
        source the row came from), sharded across DDP ranks. Training sources repeat forever."""
        pairs = self.sources(split)
        train = split == "train"
        streams = []
        for i, (dataset, _) in enumerate(pairs):
            dataset = dataset.select_columns(list(self.columns)).map(lambda row, i=i: {"source": i})
            if train:  # shard order reshuffled, repeated forever: the trainer's max_steps ends the run. Documents
                # are shuffled later, by the packer, whose buffer is saved in checkpoints (datasets' is not).
                dataset = dataset.shuffle(seed=self.seed + i, buffer_size=1).repeat(None)
            streams.append(dataset)
        weights = [w for _, w in pairs]
        stream = (
            streams[0]
            if len(streams) == 1
            else datasets.interleave_datasets(
                streams,
                probabilities=[w / sum(weights) for w in weights],
                seed=self.seed,
                stopping_strategy="all_exhausted" if train else "first_exhausted",
            )
        )
        if self.trainer is not None and self.trainer.world_size > 1:
            stream = split_dataset_by_node(stream, rank=self.trainer.global_rank, world_size=self.trainer.world_size)
        return stream

    def _stream(self, split: str) -> datasets.IterableDataset:
        tokenizer = self.load_tokenizer()

        def tokenize(batch: dict) -> dict:  # bad rows (text None) become input_ids None: skipped and counted
            texts = batch["text"]
            good = [i for i, text in enumerate(texts) if text]
            encoded = tokenizer.encode_batch([texts[i] for i in good], add_special_tokens=False)
            ids: list = [None] * len(texts)
            for i, encoding in zip(good, encoded):
                ids[i] = encoding.ids
            return {"input_ids": ids}

        return self.mixed_text(split).map(tokenize, batched=True, batch_size=64, remove_columns=["text", "source"])

    def _loader(self, split: str) -> DataLoader:
        if self.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers fork after the tokenizer was used
        train = split == "train"
        rank = self.trainer.global_rank if self.trainer is not None else 0
        packed = self.packer(self._stream(split), train=train, seed=self.seed + 1000 * rank)
        kwargs = {"batch_size": self.batch_size, "num_workers": self.num_workers, "collate_fn": self.collate}
        kwargs["pin_memory"] = torch.cuda.is_available()
        if not train:  # validation restarts from its beginning every time
            return DataLoader(packed, **kwargs)
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return ResumableDataLoader(packed, world_size=world_size, persistent_workers=self.num_workers > 0, **kwargs)

    def packer(self, documents, *, train: bool, seed: int) -> PackedDataset:
        """The rows of the training or validation stream, from its tokenized documents."""
        return PackedDataset(
            documents,
            seq_len=self.seq_len,
            eos_id=self.eos_id,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            seed=seed,
            document_ids=self.document_mask,
        )

    collate = None  # the DataLoader's default: rows have the same length

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader("validation")

    # ---- checkpoints carry the tokenizer, so a checkpoint alone can be evaluated or sampled ------------------
    def state_dict(self) -> dict:
        return {"tokenizer": self.load_tokenizer().to_str(), "eos_token": self.tokenizer_source.eos_token}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("tokenizer")
        if saved is not None and saved != self.load_tokenizer().to_str():
            raise ValueError(
                "the checkpoint was trained with a different tokenizer than data.tokenizer gives now: resume with "
                "the run's original data config (see config.yaml in its run folder)"
            )
