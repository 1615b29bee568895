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
- ``gguf``: one GGUF file for llama.cpp (:mod:`zoo.interop.gguf`; ``outtype`` f32, f16 or q8_0) with the tokenizer
  inside it, for Llama-shaped models (``qwen3`` with QK-norm, ``llada`` for masked diffusion).

The transformers formats also write the run's tokenizer (``tokenizer.json`` with its end-of-text token as eos, bos
and pad). Every format writes a ``README.md`` model card (:mod:`zoo.interop.card`: ``license``, the scores of
``eval_results``).
The directory is written under a temporary name beside DIR and renamed into place when complete, so a refused or
failed export leaves nothing behind; an existing non-empty DIR is replaced only with ``overwrite``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_hf(model, tokenizer, directory: Path, *, dtype: torch.dtype) -> None:
    """Stock transformers classes; refuses what transformers cannot express."""
    from zoo.interop.hf import to_hf

    hf = to_hf(model.backbone, dtype=dtype)
    eos_id = tokenizer.eos_token_id
    for config in (hf.config, hf.generation_config):
        config.eos_token_id, config.bos_token_id, config.pad_token_id = eos_id, eos_id, eos_id
    hf.generation_config.max_length = model.backbone.max_seq_len  # a limit of its own: no pipeline default, no warning
    hf.save_pretrained(directory)  # safetensors
    tokenizer.save_pretrained(directory)


def write_remote_code(model, tokenizer, directory: Path, *, dtype: torch.dtype) -> None:
    """Any zoo architecture, with its modeling code (``trust_remote_code=True``)."""
    from zoo.interop.remote_code import write_remote_code

    write_remote_code(model, tokenizer, directory, dtype=dtype)


def require_gguf() -> None:
    """Refuse ``--format gguf`` before any work where the ``gguf`` package (the ``gguf`` extra) is missing."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ValueError(
            "--format gguf needs the gguf package (llama.cpp's writer), which is not installed: "
            'pip install -e ".[gguf]" (or pip install "gguf>=0.17")'
        ) from None


def write_gguf(model, tokenizer, directory: Path, *, dtype: torch.dtype, outtype: str | None = None) -> dict:
    """One GGUF file for llama.cpp; refuses what llama.cpp's Llama-shaped architectures cannot express."""
    from zoo.interop.gguf import export_gguf

    return export_gguf(model, tokenizer.backend_tokenizer, tokenizer.eos_token, directory, dtype=dtype,
                       outtype=outtype)  # fmt: skip


# format name -> writer(model: LanguageModel, tokenizer: PreTrainedTokenizerFast, directory (exists, empty), *, dtype)
# returning None (a transformers directory) or the facts of its model card (see zoo.interop.card.render_card)
FORMATS: dict[str, Callable[..., dict | None]] = {"hf": write_hf, "remote-code": write_remote_code,
                                                  "gguf": write_gguf}  # fmt: skip


def auto_format(model) -> str:
    """``hf`` when a stock transformers family expresses the model exactly, else ``remote-code``."""
    from zoo.interop.hf import mapping_for

    try:
        mapping_for(model.backbone)
    except ValueError:
        return "remote-code"
    return "hf"


def fast_tokenizer(tokenizer, eos: str, max_len: int):
    """A ``tokenizers.Tokenizer`` and its end-of-text token as a transformers fast tokenizer (``eos`` also as bos
    and pad)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, bos_token=eos, pad_token=eos,
                                   model_max_length=max_len)  # fmt: skip


def check_exportable(model) -> None:
    """Refuse a model whose sampler family the exported files cannot run: the transformers, remote-code and GGUF
    exports implement zoo's shipped families only (their ``generate`` and llama.cpp's decoding), so a checkpoint of
    an objective with a family of its own would load and decode as another model."""
    from zoo.objectives.samplers import FAMILIES

    family = model.description.sampler
    if family not in FAMILIES:
        raise ValueError(
            f"{type(model).__name__} samples with a family of its own ({family.name}): the exports implement "
            f"{' and '.join(f.name for f in FAMILIES)} sampling only, so the exported model would decode differently; "
            "share the checkpoint itself, or export a checkpoint of a shipped objective"
        )


def export(
    ckpt: str, out: str, *, format: str = "auto", dtype: torch.dtype = torch.float32, overwrite: bool = False,
    outtype: Literal["f32", "f16", "q8_0"] | None = None, license: str | None = None, eval_results: str | None = None,
    tokenizer: str | None = None, eos_token: str | None = None, trust: bool | None = None,
) -> Path:  # fmt: skip
    """Write the checkpoint's model, tokenizer and model card to ``out`` in the given format (see :data:`FORMATS`;
    ``auto`` picks one); returns the directory.

    Args:
        ckpt: a checkpoint written by ``python -m zoo fit``.
        out: the directory to write (created; an existing non-empty one only with ``overwrite``).
        format: ``auto`` (stock transformers classes where they apply, else remote code) or a key of
            :data:`FORMATS`: ``hf``, ``remote-code``, ``gguf`` (llama.cpp).
        dtype: dtype of the exported weights (for GGUF, float16 means ``outtype='f16'``).
        overwrite: replace an existing non-empty ``out``.
        outtype: GGUF tensor type: ``f32``, ``f16`` or ``q8_0`` (``gguf`` only; default from ``dtype``).
        license: the model card's license id (e.g. ``apache-2.0``).
        eval_results: a ``zoo eval --output`` JSON file whose scores go into the model card.
        tokenizer: a ``tokenizer.json`` to export instead of the checkpoint's own (for checkpoints that carry none).
        eos_token: its end-of-text token (default ``<|endoftext|>``).
        trust: read the checkpoint in full rather than weights-only (see
            :func:`zoo.training.checkpoints.trust_checkpoints`; ``None`` = ``$ZOO_TRUST_CHECKPOINTS``).
    """
    from zoo.interop.card import card_facts, read_eval_results, render_card, transformers_card
    from zoo.training.loading import load_checkpoint

    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format={format!r} is unknown: choose auto or one of {sorted(FORMATS)}")
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--out {out} is a file: give a directory")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} exists and is not empty: choose another directory or pass --overwrite")
    if outtype is not None and format != "gguf":
        raise ValueError(f"--outtype {outtype} is for --format gguf; the transformers formats take --dtype")
    if format == "gguf":
        require_gguf()
    report = read_eval_results(eval_results) if eval_results else None
    # one read of the file: model, tokenizer, steps and tokens for the card (foreign, untrusted: named)
    loaded = load_checkpoint(ckpt, trust=trust, tokenizer=tokenizer, eos_token=eos_token)
    model = loaded.model
    check_exportable(model)
    fast = fast_tokenizer(loaded.tokenizer, loaded.eos, model.backbone.max_seq_len)
    format = auto_format(model) if format == "auto" else format
    options = {"outtype": outtype} if format == "gguf" else {}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        card = FORMATS[format](model, fast, staging, dtype=dtype, **options)
        if card is None:  # a transformers directory
            card = transformers_card(model, remote=format == "remote-code")
        facts = card_facts(loaded, name=directory.name, license=license, eval_results=report)
        facts.extra_tags = card["tags"]
        text = render_card(model, facts, library_name=card["library_name"], usage=card["usage"],
                           files=card["files"])  # fmt: skip
        (staging / "README.md").write_text(text, encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp's folders are private; the export is an ordinary directory
        mode = (staging / "README.md").stat().st_mode & 0o777  # an ordinary file's mode under the user's umask
        for path in staging.rglob("*"):  # the weights were written through a private temporary file (0600)
            if path.is_file() and not path.is_symlink():
                path.chmod(mode)
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
