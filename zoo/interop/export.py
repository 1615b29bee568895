"""A zoo checkpoint as a Hugging Face transformers directory (``python -m zoo export``, :mod:`zoo.commands.export`).

DIR gets ``config.json``, ``model.safetensors``, ``generation_config.json`` and the run's tokenizer
(``tokenizer.json`` with its end-of-text token as eos, bos and pad), so that
``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` and ``transformers.pipeline("text-generation",
model=DIR)`` work with the stock library (no remote code). The model family follows from the architecture (see
:mod:`zoo.interop.hf`); blocks transformers cannot express (exclusive attention, Canon layers, ...) are refused
by name, with exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export(ckpt: str, out: str, *, dtype: torch.dtype = torch.float32) -> Path:
    """Write the checkpoint's model and tokenizer to ``out`` in transformers' format; returns the directory."""
    from transformers import PreTrainedTokenizerFast

    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.interop.hf import to_hf
    from zoo.objectives.base import LanguageModel

    model = LanguageModel.from_checkpoint(ckpt, map_location="cpu")
    hf = to_hf(model.backbone, dtype=dtype)  # refuses what transformers cannot express, before writing anything
    tokenizer, eos = tokenizer_from_checkpoint(ckpt)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=eos, bos_token=eos, pad_token=eos,
        model_max_length=model.backbone.max_seq_len,
    )  # fmt: skip
    eos_id = fast.convert_tokens_to_ids(eos)
    if eos_id is None or eos_id == fast.unk_token_id:
        raise ValueError(f"the checkpoint's tokenizer has no end-of-text token {eos!r}")
    for config in (hf.config, hf.generation_config):
        config.eos_token_id, config.bos_token_id, config.pad_token_id = eos_id, eos_id, eos_id
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(directory)  # safetensors
    fast.save_pretrained(directory)
    return directory
