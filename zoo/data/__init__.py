"""Data modules: text sources → tokenizer → packed batches. Nothing here knows about models."""

from zoo.data.base import TextDataModule
from zoo.data.packing import PackedDataset
from zoo.data.stdlib import StdlibCorpus
from zoo.data.tokenizer import PretrainedTokenizer, TokenizerSource, TrainedBPE, train_bpe

__all__ = [
    "PackedDataset",
    "PretrainedTokenizer",
    "StdlibCorpus",
    "TextDataModule",
    "TokenizerSource",
    "TrainedBPE",
    "train_bpe",
]
