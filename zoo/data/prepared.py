"""Training from token shards written by ``python -m zoo data prepare`` (see :mod:`zoo.data.prepare`).

::

    DIR or s3://bucket/DIR ── per source: litdata StreamingDataset (TokensLoader: seq_len-token rows, shuffled)
        ── CombinedStreamingDataset(weights) ── PreparedLoader (StreamingDataLoader + the batch Lightning prefetched)
        ── {"input_ids": (B, T), "labels": (B, T)[, "document_ids": (B, T)]}

The library is Lightning's litdata (LitGPT's data path), measured before it was chosen, on this project's 2-core
CPU under load: 24M tokens/s from one worker (128 × 512 rows, 16M with 2 workers), and a mid-epoch
``CombinedStreamingDataset`` (weights 0.7/0.3) resumed from its ``state_dict`` gave exactly the batches of the
uninterrupted loader with 1 and 2 workers. What litdata does not do is added here: Lightning's training loop fetches
one batch ahead, so the batch handed out but not trained on is saved with the loader's state and served again
first (as :class:`zoo.data.loader.ResumableDataLoader` does for the on-the-fly stream), and under DDP each rank's
state is gathered into the checkpoint. Rows never span two pieces of the shards (a piece's last
``< seq_len`` tokens are not trained on: about 0.05% at 1M-token pieces and ``seq_len`` 512).

Each row is a window of the source's tokens, documents separated by the end-of-text token; ``document_ids``
(:class:`zoo.data.PackedDataset`'s convention: the EOS opens the next document) are counted from those EOS tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from litdata import StreamingDataLoader
from tokenizers import Tokenizer

from zoo.data.prepare import MANIFEST, TOKENIZER, read_manifest, source_key, tokenizer_fingerprint
from zoo.data.tokenizer import TrainedBPE, default_cache_dir


class PreparedShards:
    """A prepared folder (local or ``s3://``): its manifest, tokenizer and the loaders over its shards.

    Args:
        path: the ``--out`` folder of ``zoo data prepare``, or its copy in object storage (``s3://bucket/prefix``;
            credentials and endpoint as boto3 reads them, e.g. ``AWS_ENDPOINT_URL`` for an S3-compatible store).
    """

    def __init__(self, path: str) -> None:
        self.path = str(path).rstrip("/")
        self.remote = "://" in self.path
        try:
            self.manifest = json.loads(self._read(MANIFEST))
        except FileNotFoundError:
            raise ValueError(
                f"data.prepared={self.path!r} holds no {MANIFEST}: it is not a finished `python -m zoo data prepare "
                "--out` folder (an interrupted prepare finishes when the same command is run again)"
            ) from None
        self.by_key = {s["key"]: s for s in self.manifest["sources"]}

    # ---- reading the folder ----------------------------------------------------------------------------------
    def _read(self, name: str) -> str:
        if not self.remote:
            return (Path(self.path) / name).read_text()
        bucket, key = self._s3_split(f"{self.path}/{name}")
        try:
            return _s3().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except _s3().exceptions.NoSuchKey:
            raise FileNotFoundError(name) from None

    @staticmethod
    def _s3_split(url: str) -> tuple[str, str]:
        scheme, _, rest = url.partition("://")
        if scheme != "s3":
            raise ValueError(f"data.prepared={url!r}: only local folders and s3:// URLs are read")
        bucket, _, key = rest.partition("/")
        return bucket, key

    def url(self, split: str, key: str) -> str:
        return f"{self.path}/{split}/{key}"

    def check_files(self) -> None:
        """Every chunk the manifest lists is there with its size; else the chunk is named with its source."""
        for source in self.manifest["sources"]:
            for split in ("train", "validation"):
                expected = source[split]["chunks"]
                present = self._sizes(split, source["key"])
                for name, size in expected.items():
                    if present.get(name) != size:
                        what = "missing" if name not in present else f"{present[name]} bytes, not {size}"
                        raise ValueError(
                            f"data.prepared={self.path!r}: shard {split}/{source['key']}/{name} of source "
                            f"{source['label']} is {what} (damaged or partly copied): copy the folder again, or "
                            "prepare again with `python -m zoo data prepare`"
                        )

    def _sizes(self, split: str, key: str) -> dict[str, int]:
        if not self.remote:
            folder = Path(self.path) / split / key
            return {p.name: p.stat().st_size for p in folder.glob("chunk-*.bin")} if folder.is_dir() else {}
        bucket, prefix = self._s3_split(self.url(split, key) + "/")
        sizes = {}
        for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                sizes[obj["Key"].rsplit("/", 1)[-1]] = obj["Size"]
        return sizes

    # ---- the run's tokenizer against the shards' ----------------------------------------------------------------
    def tokenizer(self, source) -> Tokenizer:
        """The shards' tokenizer, once the run's (``source``, a :class:`zoo.data.TokenizerSource`) is known to be
        the same; else a ``ValueError`` naming both fingerprints and the fix."""
        shards = Tokenizer.from_str(self._read(TOKENIZER))
        theirs = self.manifest["tokenizer_fingerprint"]
        if isinstance(source, TrainedBPE):  # trained on the corpus at prepare time: the settings must agree
            recorded = self.manifest["tokenizer"]
            mine = {"vocab_size": source.vocab_size, "min_frequency": source.min_frequency,
                    "special_tokens": list(source.special_tokens)}  # fmt: skip
            if recorded.get("class") != "TrainedBPE" or any(recorded.get(k) != v for k, v in mine.items()):
                self._refuse(f"a TrainedBPE with {mine}", f"{recorded}")
            return shards
        ours = tokenizer_fingerprint(source.load(lambda: iter(()), "prepared"))
        if ours != theirs:
            self._refuse(f"tokenizer sha256 {ours[:16]}", f"sha256 {theirs[:16]}")
        return shards

    def _refuse(self, ours: str, theirs: str) -> None:
        raise ValueError(
            f"data.prepared={self.path!r} was tokenized with another tokenizer ({theirs}) than data.tokenizer gives "
            f"({ours}): prepare this config again (`python -m zoo data prepare --config … --out NEW_DIR`), or set "
            f"data.tokenizer to the shards' own ({self.path}/{TOKENIZER}, as a zoo.data.PretrainedTokenizer)"
        )

    def weights(self, specs) -> list[tuple[str, float]]:
        """``(key, weight)`` of each of the run's sources (:class:`zoo.data.Source`), each found in the shards."""
        pairs = []
        for spec in specs:
            key = source_key(spec)
            if key not in self.by_key:
                held = ", ".join(s["label"] for s in self.manifest["sources"])
                raise ValueError(
                    f"data source {spec.label} (weight {spec.weight}) is not in data.prepared={self.path!r}, which "
                    f"holds {held}: prepare this config again, or give that source weight 0"
                )
            if self.by_key[key]["train"]["tokens"] == 0:
                skipped = self.by_key[key]["train"]["skipped"]
                raise ValueError(f"data source {spec.label} has no tokens in data.prepared={self.path!r} (all its "
                                 f"rows were skipped: {skipped}): check its fields")  # fmt: skip
            pairs.append((key, spec.weight))
        return pairs

    # ---- loaders -----------------------------------------------------------------------------------------------
    def loader(self, pairs: list[tuple[str, float]], *, split: str, seq_len: int, batch_size: int, num_workers: int,
               seed: int, document_ids: bool, eos_id: int, world_size: int):  # fmt: skip
        from litdata import CombinedStreamingDataset, StreamingDataset, TokensLoader

        train = split == "train"
        if self.remote:
            _plain_http_endpoint()
        cache = default_cache_dir() / "prepared" / hashlib.sha256(self.path.encode()).hexdigest()[:16]
        streams = []
        for key, _ in pairs:
            if self.by_key[key][split]["tokens"] < seq_len:
                if train:
                    raise ValueError(f"data source {self.by_key[key]['label']} has fewer tokens in "
                                     f"data.prepared={self.path!r} than one row of seq_len={seq_len}")  # fmt: skip
                continue
            kwargs = {"cache_dir": str(cache / split / key)} if self.remote else {}
            streams.append(StreamingDataset(self.url(split, key), item_loader=TokensLoader(block_size=seq_len),
                                            shuffle=train, drop_last=True, seed=seed, **kwargs))  # fmt: skip
        weights = [w for (key, w) in pairs if self.by_key[key][split]["tokens"] >= seq_len]
        if train:  # weighted; an epoch ends with the first source to run out (the next one reshuffles)
            dataset = CombinedStreamingDataset(streams, seed=seed, weights=[w / sum(weights) for w in weights],
                                               iterate_over_all=False)  # fmt: skip
        else:  # every held-out row, each source's in order
            dataset = CombinedStreamingDataset(streams, seed=seed, iterate_over_all=True)
        return PreparedLoader(dataset, batch_size=batch_size, num_workers=num_workers, world_size=world_size,
                              collate_fn=Rows(eos_id=eos_id, document_ids=document_ids), lag=1 if train else 0,
                              pin_memory=torch.cuda.is_available())  # fmt: skip


class Rows:
    """Collates token rows into the batch every objective reads: ``input_ids`` and ``labels`` ``(B, T)`` int64,
    and with ``document_ids`` the document of each token counted from the row's first (the EOS opens the next)."""

    def __init__(self, *, eos_id: int, document_ids: bool) -> None:
        self.eos_id, self.document_ids = eos_id, document_ids

    def __call__(self, rows: list) -> dict:
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T)
        batch = {"input_ids": ids, "labels": ids.clone()}
        if self.document_ids:
            ends = torch.cumsum(ids == self.eos_id, dim=1)
            batch["document_ids"] = ends - ends[:, :1]
        return batch


def _plain_http_endpoint() -> None:
    """litdata (0.2.76) downloads chunks with obstore, whose HTTP client refuses an endpoint on plain ``http://``
    (``BadScheme``: an S3-compatible store such as MinIO on a private network, or a test server on loopback), while
    its boto3 path reads it. For such an endpoint litdata's downloader is told that obstore is missing, so it takes
    the boto3 path (litdata offers no option for this; checked in tests/data/test_prepared.py)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if endpoint.startswith("http://"):
        from litdata.streaming import downloader

        downloader._OBSTORE_AVAILABLE = False


def _s3():
    import boto3  # an optional dependency: only s3:// folders need it

    return boto3.client("s3")


class PreparedLoader(StreamingDataLoader):
    """litdata's ``StreamingDataLoader`` that resumes with exactly the batches not yet trained on: the last ``lag``
    batches handed out are saved with its state and served again first; under DDP every rank's state is gathered
    into the checkpoint (rank 0 writes it) and each rank takes its own back.

    Args:
        lag: batches fetched ahead of training (Lightning's training fetcher prefetches 1).
        world_size: processes reading disjoint shares; resuming with another value is refused.
        *args, **kwargs: as for ``litdata.StreamingDataLoader``.
    """

    def __init__(self, *args, lag: int = 1, world_size: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lag, self.world_size = lag, world_size
        self._recent: deque = deque(maxlen=max(lag, 1))
        self._replay: list = []

    def __iter__(self):
        replay, self._replay = self._replay, []
        self._recent.clear()
        for batch in replay:
            self._recent.append(batch)
            yield batch
        for batch in super().__iter__():
            if self.lag:
                self._recent.append(batch)
            yield batch

    def state_dict(self) -> dict:
        own = {"loader": super().state_dict(), "pending": list(self._recent) if self.lag else []}
        ranks = [own]
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, own)
        return {"ranks": ranks, "world_size": self.world_size, "num_workers": self.num_workers}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = {key: state_dict.get(key) for key in ("world_size", "num_workers")}
        current = {"world_size": self.world_size, "num_workers": self.num_workers}
        if saved != current:
            raise ValueError(
                f"the checkpoint's data position was saved with {saved} but this run has {current}: the shards are "
                "split differently, so resuming would repeat or skip data. Resume with the same number of devices "
                "(trainer.devices × trainer.num_nodes) and data.num_workers"
            )
        ranks = state_dict["ranks"]
        rank = dist.get_rank() if len(ranks) > 1 and dist.is_available() and dist.is_initialized() else 0
        self._replay = list(ranks[rank]["pending"])
        super().load_state_dict(ranks[rank]["loader"])


def is_prepared(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


__all__ = ["PreparedLoader", "PreparedShards", "Rows", "is_prepared", "read_manifest"]
