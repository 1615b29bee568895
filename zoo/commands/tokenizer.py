"""``python -m zoo tokenizer train``: a byte-level BPE trained on the text of any data config.

::

    python -m zoo tokenizer train --config configs/quickstart.yaml --vocab-size 4096 --output tokenizers/stdlib-4k
    python -m zoo tokenizer train --config configs/recipes/supra-50m.yaml --vocab-size 32000 \\
        --special-tokens "<|endoftext|>,<|pad|>,<|im_start|>,<|im_end|>,<|unk|>" --output tokenizers/fineweb-32k

``--config`` is a run config (its ``data:`` section is used) or a data-module config (``class_path`` at the top);
the tokenizer learns from the data module's training text (:meth:`zoo.data.TextDataModule.tokenizer_texts`), so
hub mixtures, local files and the embedded corpus all work. The output directory holds ``tokenizer.json`` plus the
two small files with which ``transformers.AutoTokenizer.from_pretrained(DIR)`` loads it; a run uses it with
``tokenizer: {class_path: zoo.data.PretrainedTokenizer, init_args: {path: DIR}}``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

from zoo.commands.errors import command
from zoo.commands.options import CommandParser
from zoo.data.tokenizer import EOS, train_bpe
from zoo.errors import ZooError


def train(*, config: str, vocab_size: int, output: str, min_frequency: int = 2, special_tokens: str = EOS,
          documents: int | None = None) -> Path:  # fmt: skip
    """Train a byte-level BPE on the training text of a data config and write it to a directory.

    Args:
        config: run config (with data:) or data-module config (YAML)
        vocab_size: final vocabulary, special tokens included
        output: directory to write tokenizer.json (and its config) into
        min_frequency: pairs seen fewer times are never merged
        special_tokens: comma-separated, given ids 0, 1, …; the first ends documents
        documents: learn from at most this many documents
    """
    special = [t for t in special_tokens.split(",") if t]
    if not special:
        raise ZooError("--special-tokens is empty: give at least the end-of-text token, e.g. '<|endoftext|>'")
    if vocab_size < 256 + len(special):
        raise ZooError(
            f"--vocab-size {vocab_size} is below the 256 byte symbols and {len(special)} special tokens: "
            f"use at least {256 + len(special)}"
        )
    from zoo.training.run_config import build_data_module

    datamodule = build_data_module([config])
    texts = datamodule.tokenizer_training_texts()  # rows over data.max_row_chars skipped, progress, stall watch
    if documents is not None:
        texts = itertools.islice(texts, documents)
    counted = _Counting(texts)
    start = time.perf_counter()
    tokenizer = train_bpe(counted, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special)
    seconds = time.perf_counter() - start
    out = write(tokenizer, Path(output), special_tokens=special)
    print(
        f"trained on {counted.documents:,} documents ({counted.chars / 1e6:.1f}M characters) in {seconds:.0f} s: "
        f"{tokenizer.get_vocab_size():,} tokens, {held_out_compression(tokenizer, datamodule):.2f} characters per "
        f"token on held-out text → {out / 'tokenizer.json'}"
    )
    return out


def parser() -> CommandParser:
    p = CommandParser(prog="python -m zoo tokenizer", description=__doc__)
    sub = CommandParser(description=train.__doc__.split("\n\n")[0])
    sub.add_function_arguments(train, as_group=False)
    p.add_subcommands(required=True, dest="action").add_subcommand(
        "train", sub, help="train a byte-level BPE on a data config's training text"
    )
    return p


@command("tokenizer")
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    train(**vars(args.train))  # an unreachable source, an unreadable file: one line, by run_command


def write(tokenizer, out: Path, *, special_tokens: list[str]) -> Path:
    """``tokenizer.json`` and the config files transformers' ``AutoTokenizer`` reads (the first special token
    as end-of-text, beginning-of-text and padding, as GPT-2's tokenizer does)."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    eos = special_tokens[0]
    tokens = {"eos_token": eos, "bos_token": eos, "pad_token": eos}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000_000, **tokens}
    if len(special_tokens) > 1:
        tokens["additional_special_tokens"] = special_tokens[1:]
        config["additional_special_tokens"] = special_tokens[1:]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
    return out


class _Counting:
    """Passes texts through, counting documents and characters."""

    def __init__(self, texts) -> None:
        self.texts, self.documents, self.chars = texts, 0, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.documents += 1
            self.chars += len(text)
            yield text


def held_out_compression(tokenizer, datamodule, limit: int = 200) -> float:
    """Characters per token on up to ``limit`` held-out documents of the data module (0 if it has none)."""
    held_out = datamodule.sources("validation")
    texts = []
    for dataset, _ in held_out:
        for row in dataset.take(max(limit // len(held_out), 1)):
            text = row["text"]
            if isinstance(text, list):  # instruction data: the rendered pieces of an example
                text = "".join(text)
            if text:
                texts.append(text)
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    return sum(len(t) for t in texts) / tokens if tokens else 0.0
