"""Tokenizers: a byte-level BPE trained on the run's own corpus, or an existing ``tokenizer.json``.

Both are chosen in YAML (``data.init_args.tokenizer.class_path``) and return a ``tokenizers.Tokenizer``
whose end-of-text token separates packed documents.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS = "<|endoftext|>"


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))


class TokenizerSource:
    """Where a data module's tokenizer comes from. ``eos_token`` separates documents when packing."""

    eos_token: str = EOS

    def load(self, texts: Callable[[], Iterable[str]], fingerprint: str) -> Tokenizer:
        """Return the tokenizer; ``texts`` yields the training corpus (used only by trained tokenizers),
        ``fingerprint`` identifies that corpus for caching."""
        raise NotImplementedError


class TrainedBPE(TokenizerSource):
    """Byte-level BPE (GPT-2 style) trained with ``tokenizers`` on the data module's training split.

    Trained once and cached under ``cache_dir`` (``$ZOO_CACHE`` or ``~/.cache/zoo``), keyed by the corpus
    fingerprint and these settings.

    Args:
        vocab_size: final vocabulary, special tokens included; the model's ``vocab_size`` must be at least this.
        min_frequency: pairs seen fewer times are never merged.
        special_tokens: added first, so their ids are 0, 1, …; the first is the end-of-text token.
        cache_dir: where trained tokenizers are kept (``None`` = the default cache).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        min_frequency: int = 2,
        special_tokens: list[str] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        special_tokens = [EOS] if special_tokens is None else list(special_tokens)
        if not special_tokens:
            raise ValueError("TrainedBPE special_tokens=[] needs the end-of-text token, e.g. ['<|endoftext|>']")
        min_vocab = 256 + len(special_tokens)
        if vocab_size < min_vocab:
            raise ValueError(
                f"TrainedBPE vocab_size={vocab_size} is below the {min_vocab} byte-level symbols and special "
                f"tokens: use vocab_size ≥ {min_vocab}"
            )
        self.vocab_size, self.min_frequency, self.special_tokens = vocab_size, min_frequency, special_tokens
        self.eos_token = special_tokens[0]
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    def load(self, texts: Callable[[], Iterable[str]], fingerprint: str) -> Tokenizer:
        key = json.dumps([fingerprint, self.vocab_size, self.min_frequency, self.special_tokens])
        path = self.cache_dir / "tokenizers" / f"bpe-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        if path.exists():
            return Tokenizer.from_file(str(path))
        tokenizer = train_bpe(
            texts(), vocab_size=self.vocab_size, min_frequency=self.min_frequency, special_tokens=self.special_tokens
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tokenizer.save(str(tmp))
        os.replace(tmp, path)  # atomic: concurrent ranks never read a half-written file
        return tokenizer


class PretrainedTokenizer(TokenizerSource):
    """An existing tokenizer: a local ``tokenizer.json`` (or a directory holding one), or a hub repository id
    (needs the network).

    Args:
        path: file, directory, or hub id such as ``gpt2``.
        eos_token: the token that ends documents (GPT-2: ``<|endoftext|>``; Llama: ``</s>``).
    """

    def __init__(self, *, path: str, eos_token: str = EOS) -> None:
        self.path, self.eos_token = path, eos_token

    def load(self, texts: Callable[[], Iterable[str]], fingerprint: str) -> Tokenizer:
        local = Path(self.path)
        if local.is_dir():
            local = local / "tokenizer.json"
        if local.exists():
            tokenizer = Tokenizer.from_file(str(local))
        elif self.path.startswith((".", "/", "~")) or local.suffix == ".json":
            raise ValueError(f"tokenizer path={self.path!r} does not exist: give a tokenizer.json or its directory")
        else:
            tokenizer = self._from_hub()
        if tokenizer.token_to_id(self.eos_token) is None:
            raise ValueError(
                f"tokenizer {self.path!r} has no eos_token={self.eos_token!r}: set eos_token to one of its special "
                "tokens"
            )
        return tokenizer


    def _from_hub(self) -> Tokenizer:
        """The hub repository's ``tokenizer.json``, through the hub client (its cache, ``HF_HUB_OFFLINE``); a machine
        that cannot reach the hub is told so in seconds (:func:`zoo.data.hub.hub_unreachable`), not after the
        client's retries."""
        from huggingface_hub import hf_hub_download

        from zoo.data import hub

        offline = (f"download {self.path}'s tokenizer.json on a machine with network access (e.g. `hf download "
                   f"{self.path} tokenizer.json --local-dir tokenizers/{self.path}`) and give its local path: "
                   f"--data.tokenizer.init_args.path tokenizers/{self.path}")  # fmt: skip
        local_only = hub.hub_offline() or hub.hub_unreachable()
        try:
            return Tokenizer.from_file(hf_hub_download(self.path, "tokenizer.json", local_files_only=local_only))
        except Exception as err:  # the hub client raises several types; all mean "not reachable/found"
            if local_only:
                raise ValueError(f"tokenizer path={self.path!r} is a Hugging Face hub repository, which this machine "
                                 f"cannot reach (not in the local hub cache either): {offline}") from err
            raise ValueError(f"tokenizer path={self.path!r} is neither a local file nor a hub repository with a "
                             f"tokenizer.json ({type(err).__name__}: {err}); offline, {offline}") from err


class CheckpointTokenizer(TokenizerSource):
    """The tokenizer a ``python -m zoo fit`` checkpoint was trained with (zoo saves it in every checkpoint):
    fine-tuning and later curriculum stages keep the base model's tokenizer. The file is read weights-only (an
    older file holding Python objects needs ``$ZOO_TRUST_CHECKPOINTS=1`` or ``python -m zoo checkpoint convert``).

    Args:
        path: the checkpoint (``.ckpt``).
    """

    def __init__(self, *, path: str) -> None:
        self.path = path
        self._loaded: tuple[Tokenizer, str] | None = None

    def load(self, texts: Callable[[], Iterable[str]], fingerprint: str) -> Tokenizer:
        if self._loaded is None:
            if not Path(self.path).is_file():
                raise ValueError(
                    f"tokenizer path={self.path!r} is not a checkpoint file: point it at the run whose model is "
                    "fine-tuned (e.g. runs/quickstart/lightning_logs/version_0/checkpoints/last.ckpt)"
                )
            self._loaded = tokenizer_from_checkpoint(self.path)
        tokenizer, self.eos_token = self._loaded
        return tokenizer


def train_bpe(
    texts: Iterable[str], *, vocab_size: int, min_frequency: int = 2, special_tokens: list[str] = (EOS,)
) -> Tokenizer:
    """Train a byte-level BPE: every byte is a base symbol, so any text round-trips exactly. Says on stderr that
    it trains (with the vocabulary size), how many documents it has read every :data:`PROGRESS_EVERY`, and when it is
    done: a large tokenizer reads for minutes before the run's first line."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    say = functools.partial(print, file=sys.stderr, flush=True)
    say(f"tokenizer: training a byte-level BPE of {vocab_size:,} tokens on the training text ...")
    counted, start = _Counted(texts), time.perf_counter()
    tokenizer.train_from_iterator(counted, trainer=trainer)
    say(f"tokenizer: trained a byte-level BPE of {tokenizer.get_vocab_size():,} tokens on {counted.documents:,} "
        f"documents ({counted.chars / 1e6:.1f}M characters) in {time.perf_counter() - start:.0f} s")
    return tokenizer


PROGRESS_EVERY = 50_000  # documents between two progress lines of train_bpe


class _Counted:
    """Passes texts through, counting documents and characters, with a progress line every PROGRESS_EVERY."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.documents, self.chars = texts, 0, 0

    def __iter__(self):
        for text in self.texts:
            self.documents += 1
            self.chars += len(text)
            if self.documents % PROGRESS_EVERY == 0:
                print(f"tokenizer: {self.documents:,} documents read ...", file=sys.stderr, flush=True)
            yield text


def tokenizer_from_checkpoint(
    checkpoint: dict | str | os.PathLike, *, trust: bool | None = None
) -> tuple[Tokenizer, str]:
    """The tokenizer and end-of-text token a ``python -m zoo fit`` checkpoint was trained with.

    Lightning saves the data module's ``state_dict`` under the module's class name; zoo's data modules put the
    tokenizer's JSON there (a string), so a checkpoint alone is enough to sample from, evaluate or export a model.
    A path is read weights-only, its tensors mapped rather than read (``trust``: see
    :func:`zoo.training.checkpoints.trust_checkpoints`).
    """
    if not isinstance(checkpoint, dict):
        from zoo.training.checkpoints import read_checkpoint  # only here: this module is otherwise torch-free

        checkpoint = read_checkpoint(checkpoint, mmap=True, trust=trust)
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("tokenizer"), str):
            return Tokenizer.from_str(value["tokenizer"]), value.get("eos_token", EOS)
    raise ValueError(
        "the checkpoint carries no tokenizer (it was not trained through a zoo data module): pass the "
        "tokenizer explicitly, e.g. --tokenizer path/to/tokenizer.json"
    )
