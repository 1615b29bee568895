"""Interoperability with Hugging Face transformers: parity-checked weight conversion, export and import.

- :func:`to_hf` / :func:`from_hf`: a zoo backbone as a transformers ``…ForCausalLM`` and back;
  :func:`hf_config_for`, :func:`to_hf_state_dict`, :func:`from_hf_state_dict` for the pieces.
- :func:`load_hf_pretrained` and :class:`HFPretrained`: start from a local transformers directory (the
  latter from YAML, as ``backbone: {class_path: zoo.interop.HFPretrained, init_args: {path: DIR}}``).
- :func:`zoo.interop.remote_code.save_remote_code`: any zoo backbone (autoregressive or masked diffusion) as a
  self-contained transformers directory with its own modeling code, loaded with ``trust_remote_code=True``.
- ``python -m zoo export --ckpt CKPT --out DIR [--format auto|hf|remote-code|gguf]``
  (:func:`zoo.interop.export.export`, :mod:`zoo.commands.export`): a checkpoint as a transformers directory with
  its tokenizer, or one GGUF file for llama.cpp (:mod:`zoo.interop.gguf`); every export writes a Hub model card
  (:mod:`zoo.interop.card`).
"""

from zoo.interop.hf import (
    HFPretrained,
    from_hf,
    from_hf_state_dict,
    hf_config_for,
    load_hf_pretrained,
    mapping_for,
    to_hf,
    to_hf_state_dict,
)
from zoo.interop.hf_config import backbone_from_config, transformer_kwargs

__all__ = [
    "HFPretrained",
    "backbone_from_config",
    "from_hf",
    "from_hf_state_dict",
    "hf_config_for",
    "load_hf_pretrained",
    "mapping_for",
    "to_hf",
    "to_hf_state_dict",
    "transformer_kwargs",
]
