"""``TextDataModule``: the shared path from text sources to packed token batches.

::

    sources (datasets.IterableDataset of {"text": ...}) ── weighted interleave ── tokenize (in workers)
        ── pack (EOS between documents) ── DataLoader ── {"input_ids": (B, T), "labels": (B, T)}

Subclasses only say which sources exist (:meth:`sources`); hub, local and embedded text all go through the
same ``datasets`` streaming code. Batches know nothing of the model: labels are unshifted copies of the
inputs, ``-100`` where no loss is wanted.

Bad rows travel as documents without tokens, with their source and reason, to the packer, which counts them into
each batch's ``skipped_by``; :meth:`TextDataModule.on_before_batch_transfer` tallies the trained batches' counts
(:class:`zoo.data.health.SkipTally`: logged, saved with the data module's state, summarized when the run ends).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

import datasets
import lightning as L
import torch
from datasets.distributed import split_dataset_by_node
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from zoo.data.health import SkipTally, TextFeed, text_length
from zoo.data.loader import ResumableDataLoader
from zoo.data.packing import PackedDataset
from zoo.data.rows import GOOD, code
from zoo.data.tokenizer import TokenizerSource


class TextDataModule(L.LightningDataModule):
    """Weighted text sources → tokenizer → packed fixed-length rows.

    The options below are declared here only: a subclass declares its own and passes the rest on with ``**kwargs``
    (``super().__init__(**kwargs)``), and jsonargparse follows ``**kwargs`` to this signature, so ``--help``,
    ``--print_config``, YAML ``init_args`` and ``--data.X`` offer each of them for every data module, documented
    once. (A shared options dataclass would have moved them one level down in every YAML.) A subclass that fixes
    an option passes it by name (``super().__init__(document_mask=True, **kwargs)``), which takes it off its list.

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
        stall_timeout: seconds the training stream may take to give one batch before the run stops with an error
            that names the sources and their counts (a hub that stopped answering, a stream left without usable
            rows); ``null`` waits forever. Time spent training, validating or saving does not count. The same
            limit applies to each document a trained tokenizer waits for.
        max_row_chars: a row whose text is longer than this many characters is skipped and counted as
            ``too_long``, in training and in tokenizer training, before the tokenizer sees it (one huge line
            would otherwise take the tokenizer minutes and gigabytes); ``null``: no limit.
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
        stall_timeout: float | None = 120.0,
        max_row_chars: int | None = 1_000_000,
    ) -> None:
        super().__init__()
        if seq_len < 2:
            raise ValueError(f"data seq_len={seq_len} must be ≥ 2")
        if batch_size < 1:
            raise ValueError(f"data batch_size={batch_size} must be ≥ 1")
        if num_workers < 0:
            raise ValueError(f"data num_workers={num_workers} must be ≥ 0")
        if stall_timeout is not None and stall_timeout <= 0:
            raise ValueError(f"data stall_timeout={stall_timeout} must be > 0 seconds, or null (wait forever)")
        self.tokenizer_source = tokenizer
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.seed, self.shuffle_buffer, self.document_mask = seed, shuffle_buffer, document_mask
        self.tokenizer: Tokenizer | None = None
        if max_row_chars is not None and max_row_chars < 1:
            raise ValueError(f"data max_row_chars={max_row_chars} must be ≥ 1 character, or null (no limit)")
        self.stall_timeout, self.max_row_chars = stall_timeout, max_row_chars
        self._skips: SkipTally | None = None

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

    def source_labels(self) -> list[str]:
        """The training sources' names, in the order of :meth:`sources` (for skip counts and errors)."""
        return [f"source {i}" for i in range(len(self.sources("train")))]

    def describe_sources(self) -> list[str]:
        """What an error about the training stream says of each source (its name, and its size where known)."""
        return self.source_labels()

    # ---- tokenizer ---------------------------------------------------------------------------------------
    def prepare_data(self) -> None:  # rank 0 only: trains (and caches) the tokenizer once
        self.load_tokenizer()

    def tokenizer_training_texts(self) -> TextFeed:
        """:meth:`tokenizer_texts` as a tokenizer learns from them: rows longer than ``max_row_chars`` skipped and
        counted, progress reported, and a source that gives no document for ``stall_timeout`` seconds stopped with
        an error naming it (:class:`zoo.data.health.TextFeed`)."""
        return TextFeed(self.tokenizer_texts(), max_chars=self.max_row_chars, stall_timeout=self.stall_timeout,
                        describe=lambda: f"sources {'; '.join(self.describe_sources())}")  # fmt: skip

    def load_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            self.tokenizer = self.tokenizer_source.load(self.tokenizer_training_texts, self.fingerprint())
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
            tag = functools.partial(_tag, source=i, max_chars=self.max_row_chars)
            dataset = dataset.map(tag).select_columns([*self.columns, "source", "reason"])
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
            texts, reasons = batch["text"], list(batch["reason"])
            good = [i for i, text in enumerate(texts) if text]
            encoded = tokenizer.encode_batch([texts[i] for i in good], add_special_tokens=False)
            ids: list = [None] * len(texts)
            for i, encoding in zip(good, encoded):
                ids[i] = encoding.ids or None
                reasons[i] = reasons[i] if encoding.ids else code("empty")
            return {"input_ids": ids, "reason": reasons}

        return self.mixed_text(split).map(tokenize, batched=True, batch_size=64, remove_columns=["text"])

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
        kwargs.update(persistent_workers=self.num_workers > 0, stall_timeout=self.stall_timeout)
        return ResumableDataLoader(packed, world_size=world_size, describe=self.describe_stream, **kwargs)

    def packer(self, documents, *, train: bool, seed: int) -> PackedDataset:
        """The rows of the training or validation stream, from its tokenized documents."""
        return PackedDataset(
            documents,
            seq_len=self.seq_len,
            eos_id=self.eos_id,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            seed=seed,
            document_ids=self.document_mask,
            sources=len(self.skips.labels),
        )

    collate = None  # the DataLoader's default: rows have the same length

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader("validation")

    # ---- bad rows: counted per trained batch, logged, summarized ------------------------------------------------
    @property
    def skips(self) -> SkipTally:
        """The bad rows skipped in the batches trained on so far (this process), per source and reason."""
        if self._skips is None:
            self._skips = SkipTally(self.source_labels())
        return self._skips

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        counts = batch.pop("skipped_by", None) if isinstance(batch, dict) else None
        trainer = self.trainer
        if counts is None or trainer is None or not trainer.training:  # validation rows are read again and again
            return batch
        self.skips.add(counts)
        if trainer.global_step % trainer.log_every_n_steps == 0:  # every rank reaches this step: sum over ranks
            metrics = self.skips.metrics(trainer.strategy.reduce(self.skips.counts.to(trainer.strategy.root_device),
                                                                 reduce_op="sum").cpu())  # fmt: skip
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        return batch

    def describe_stream(self) -> str:
        """The training sources and the rows skipped so far, for an error about the training stream."""
        return (f"sources {'; '.join(self.describe_sources())}. Rows skipped so far: {self.skips.summary()}. Check "
                "that each source has rows left after its validation slice (val_documents) and that its fields "
                "match (text_field / template), or raise data.stall_timeout for a slow source")  # fmt: skip

    def teardown(self, stage: str) -> None:
        # the summary only where rows were skipped (a line saying none were is noise at the end of every run)
        if stage == "fit" and self._skips is not None and self.trainer is not None and int(self._skips.counts.sum()):
            rank = f" (rank {self.trainer.global_rank})" if self.trainer.world_size > 1 else ""
            rank_zero_info(f"data: bad rows skipped in training{rank}: {self.skips.summary()}")

    # ---- checkpoints carry the tokenizer, so a checkpoint alone can be evaluated or sampled ------------------
    def state_dict(self) -> dict:
        state = {"tokenizer": self.load_tokenizer().to_str(), "eos_token": self.tokenizer_source.eos_token}
        trainer = self.trainer
        if self._skips is not None:  # every rank saves (Lightning dumps checkpoints on all ranks): the sum of all
            counts = self.skips.counts
            if trainer is not None and trainer.world_size > 1:
                counts = trainer.strategy.reduce(counts.to(trainer.strategy.root_device), reduce_op="sum").cpu()
            state["skipped"] = self.skips.state_dict(counts)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        skipped = state_dict.get("skipped")
        if skipped is not None and (self.trainer is None or self.trainer.global_rank == 0):  # the others add theirs
            self.skips.load_state_dict(skipped)
        saved = state_dict.get("tokenizer")
        if saved is not None and saved != self.load_tokenizer().to_str():
            raise ValueError(
                "the checkpoint was trained with a different tokenizer than data.tokenizer gives now: resume with "
                "the run's original data config (see config.yaml in its run folder)"
            )


def _tag(row: dict, *, source: int, max_chars: int | None) -> dict:
    """``source`` (the index of the row's source) and ``reason`` (0, or why the row is skipped) on a text row; a
    text (or, for instruction rows, all its pieces together) longer than ``max_chars`` is dropped as ``too_long``."""
    text = row["text"]
    if "reason" in row:
        reason = row["reason"]
    else:
        reason = GOOD if text else code("none" if text is None else "empty")
    if reason == GOOD and max_chars is not None and text_length(text) > max_chars:
        return {"source": source, "reason": code("too_long"), "text": None}
    return {"source": source, "reason": reason}
