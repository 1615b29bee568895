"""Data modules: text sources → tokenizer → packed batches. Nothing here knows about models."""

from zoo.data.base import TextDataModule
from zoo.data.mixture import Mixture, Source
from zoo.data.packing import PackedDataset
from zoo.data.stdlib import StdlibCorpus
from zoo.data.tokenizer import PretrainedTokenizer, TokenizerSource, TrainedBPE, tokenizer_from_checkpoint, train_bpe

__all__ = [
    "Mixture",
    "PackedDataset",
    "PretrainedTokenizer",
    "Source",
    "StdlibCorpus",
    "TextDataModule",
    "TokenizerSource",
    "TrainedBPE",
    "tokenizer_from_checkpoint",
    "train_bpe",
]
