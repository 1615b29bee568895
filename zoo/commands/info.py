"""``python -m zoo info --config FILE``: a model's architecture and size, without allocating its weights.

FILE is a backbone config (``configs/models/*.yaml``) or any run config with a ``model:`` section (the quickstart,
a recipe); several ``--config`` files are merged in order, later ones overriding. The model is built on PyTorch's
``meta`` device, so sizing a 300M-parameter model takes no memory::

    python -m zoo info --config configs/models/smallcoder-303m.yaml
    python -m zoo info --config configs/recipes/gpt-s-5m.yaml
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
import yaml

from zoo.nn.transformer import Transformer


def backbone_config(path: Path) -> dict:
    """The backbone section of a config file, with a ``backbone: other.yaml`` reference resolved."""
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    if "model" in config:  # a run config: model.init_args.backbone
        model = config["model"]
        if isinstance(model, str):
            return backbone_config(path.parent / model)
        if model.get("class_path"):
            check_objective(model["class_path"])
        config = (model.get("init_args") or {}).get("backbone")
        if config is None:
            raise ValueError(f"{path} has a model section without model.init_args.backbone")
    if isinstance(config, str):  # a path, relative to the file that names it
        return backbone_config(path.parent / config)
    if not isinstance(config, dict) or not config:
        raise ValueError(f"{path} is neither a backbone config (class_path: zoo.nn.Transformer) nor a run config")
    if "class_path" not in config:  # init_args given directly: the backbone class is implied
        config = {"class_path": "zoo.nn.Transformer", "init_args": config.get("init_args", config)}
    return config


def check_objective(class_path: str) -> None:
    """Refuse a ``model.class_path`` that is not an objective: the backbone alone would still build, hiding it."""
    from zoo.objectives.base import LanguageModel  # Lightning is imported only for run configs

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "zoo.objectives"), name)
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, LanguageModel)):
        raise ValueError(
            f"model.class_path={class_path!r} is not an objective; use a subclass of "
            "zoo.objectives.LanguageModel, e.g. zoo.objectives.CausalLM"
        )


def build(configs: list[Path]) -> Transformer:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--backbone", type=Transformer)
    args = []
    for path in configs:
        args += ["--backbone", json.dumps(backbone_config(path))]
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        return parser.instantiate(parser.parse_args(args)).backbone


def describe(backbone: Transformer) -> str:
    first = backbone.blocks[0]
    lines = [
        f"Transformer: vocabulary {backbone.vocab_size:,}, width {backbone.dim}, {backbone.n_layers} layers, "
        f"context {backbone.max_seq_len:,}, {'tied' if backbone.tie_embeddings else 'untied'} embeddings"
        + (", embeddings scaled by √width" if backbone.scale_embeddings else ""),
        f"position: {backbone.position}",
        f"block (× {backbone.n_layers}):",
        *("  " + line for line in repr(first).splitlines()),
        f"final norm: {backbone.norm}",
        f"parameters: {backbone.num_parameters():,}",
        f"non-embedding parameters: {backbone.num_parameters(embeddings=False):,}",
    ]
    inactive = backbone.inactive_parameters()
    if inactive:
        lines.append(f"active parameters per token: {backbone.num_parameters() - inactive:,}")
    flops = backbone.flops_per_token(backbone.max_seq_len)
    lines.append(f"training FLOPs per token at context {backbone.max_seq_len:,}: {flops:.3e}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="zoo info", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", action="append", required=True, type=Path, help="config file (repeatable)")
    args = parser.parse_args(argv)
    for path in args.config:
        if not path.is_file():
            print(f"zoo info: --config {path} does not exist", file=sys.stderr)
            sys.exit(2)
    try:
        backbone = build(args.config)
    except Exception as err:  # parser and constructor errors alike: report them, without a traceback
        print(f"zoo info: cannot build the model of {', '.join(map(str, args.config))}: {err}", file=sys.stderr)
        sys.exit(2)
    print(describe(backbone))
