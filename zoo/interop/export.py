"""A zoo checkpoint as a Hugging Face transformers directory (``python -m zoo export``, :mod:`zoo.commands.export`).

``--format`` chooses how (:data:`FORMATS`):

- ``hf``: stock transformers classes (``config.json``, ``model.safetensors``, ``generation_config.json``), so
  ``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` and ``transformers.pipeline("text-generation",
  model=DIR)`` work without remote code. The family follows from the architecture (see :mod:`zoo.interop.hf`);
  blocks transformers cannot express (exclusive attention, Canon layers, bidirectional attention, ...) are refused
  by name.
- ``remote-code``: any zoo architecture, autoregressive or masked diffusion, with its modeling code in the directory
  (:mod:`zoo.interop.remote_code`); load it with ``from_pretrained(DIR, trust_remote_code=True)``.
- ``auto`` (default): ``hf`` where a stock family expresses the model, else ``remote-code``.

Every format also writes the run's tokenizer (``tokenizer.json`` with its end-of-text token as eos, bos and pad).
The directory is written under a temporary name beside DIR and renamed into place when complete, so a refused or
failed export leaves nothing behind; an existing non-empty DIR is replaced only with ``overwrite``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_hf(model, tokenizer, directory: Path, *, dtype: torch.dtype) -> None:
    """Stock transformers classes; refuses what transformers cannot express."""
    from zoo.interop.hf import to_hf

    hf = to_hf(model.backbone, dtype=dtype)
    eos_id = tokenizer.eos_token_id
    for config in (hf.config, hf.generation_config):
        config.eos_token_id, config.bos_token_id, config.pad_token_id = eos_id, eos_id, eos_id
    hf.save_pretrained(directory)  # safetensors
    tokenizer.save_pretrained(directory)


def write_remote_code(model, tokenizer, directory: Path, *, dtype: torch.dtype) -> None:
    """Any zoo architecture, with its modeling code (``trust_remote_code=True``)."""
    from zoo.interop.remote_code import write_remote_code

    write_remote_code(model, tokenizer, directory, dtype=dtype)


# format name -> writer(model: LanguageModel, tokenizer: PreTrainedTokenizerFast, directory (exists, empty), *, dtype)
FORMATS: dict[str, Callable[..., None]] = {"hf": write_hf, "remote-code": write_remote_code}


def auto_format(model) -> str:
    """``hf`` when a stock transformers family expresses the model exactly, else ``remote-code``."""
    from zoo.interop.hf import mapping_for

    try:
        mapping_for(model.backbone)
    except ValueError:
        return "remote-code"
    return "hf"


def _tokenizer(ckpt: str, max_len: int, *, trust: bool | None = None):
    from transformers import PreTrainedTokenizerFast

    from zoo.data.tokenizer import tokenizer_from_checkpoint

    tokenizer, eos = tokenizer_from_checkpoint(ckpt, trust=trust)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, bos_token=eos, pad_token=eos,
                                   model_max_length=max_len)  # fmt: skip
    eos_id = fast.convert_tokens_to_ids(eos)
    if eos_id is None or eos_id == fast.unk_token_id:
        raise ValueError(f"the checkpoint's tokenizer has no end-of-text token {eos!r}")
    return fast


def export(
    ckpt: str, out: str, *, format: str = "auto", dtype: torch.dtype = torch.float32, overwrite: bool = False,
    trust: bool | None = None,
) -> Path:
    """Write the checkpoint's model and tokenizer to ``out`` in the given format (see :data:`FORMATS`; ``auto``
    picks one); returns the directory. The checkpoint is read weights-only (``trust``: see
    :func:`zoo.training.checkpoints.trust_checkpoints`)."""
    from zoo.objectives.base import LanguageModel

    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format={format!r} is unknown: choose auto or one of {sorted(FORMATS)}")
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--out {out} is a file: give a directory")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} exists and is not empty: choose another directory or pass --overwrite")
    model = LanguageModel.from_checkpoint(ckpt, map_location="cpu", trust=trust).eval()  # foreign, untrusted: named
    tokenizer = _tokenizer(ckpt, model.backbone.max_seq_len, trust=trust)
    writer = FORMATS[auto_format(model) if format == "auto" else format]
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        writer(model, tokenizer, staging, dtype=dtype)
        _publish(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _publish(staging: Path, directory: Path) -> None:
    """Rename the complete ``staging`` directory to ``directory``, replacing what was there."""
    if directory.is_dir() and any(directory.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
        os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, directory)  # onto a missing or empty directory
