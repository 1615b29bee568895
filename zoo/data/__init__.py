"""Data modules: text sources → tokenizer → packed batches. Nothing here knows about models."""

from zoo.data.base import TextDataModule
from zoo.data.formats import Alpaca, Chat, NoFormat, Piece, PromptFormat, Template, UserAssistant
from zoo.data.mixture import Mixture, Source
from zoo.data.packing import PackedDataset
from zoo.data.sft import SFTDataModule, SFTSource
from zoo.data.stdlib import StdlibCorpus
from zoo.data.tokenizer import (
    CheckpointTokenizer,
    PretrainedTokenizer,
    TokenizerSource,
    TrainedBPE,
    tokenizer_from_checkpoint,
    train_bpe,
)

__all__ = [
    "Alpaca",
    "Chat",
    "CheckpointTokenizer",
    "Mixture",
    "NoFormat",
    "Piece",
    "PromptFormat",
    "SFTDataModule",
    "SFTSource",
    "Template",
    "UserAssistant",
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
