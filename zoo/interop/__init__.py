"""Interoperability with Hugging Face transformers: parity-checked weight conversion, export and import."""

from zoo.interop.hf import HFPretrained, backbone_from_config, from_hf, load_hf_pretrained, mapping_for, to_hf

__all__ = ["HFPretrained", "backbone_from_config", "from_hf", "load_hf_pretrained", "mapping_for", "to_hf"]
