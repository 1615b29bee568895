"""``python -m zoo info --config FILE``: a model's architecture and size, without allocating its weights.

FILE is a backbone config (``configs/models/*.yaml``, read as ``--model.backbone``) or any run config with a
``model:`` section (the quickstart, a recipe), parsed by the parser of ``zoo fit``: several ``--config`` files
merge in order, and any other argument is a ``zoo fit`` override. The model is built on PyTorch's ``meta`` device,
so sizing a 300M-parameter model takes no memory::

    python -m zoo info --config configs/models/smallcoder-303m.yaml
    python -m zoo info --config configs/recipes/gpt-s-5m.yaml --model.backbone.init_args.n_layers 12
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

from zoo.commands.errors import command
from zoo.commands.fit import config_error_text, instantiate_section, parse_run_config
from zoo.nn.transformer import Transformer

# the objective a bare backbone config is sized under (every objective holds the same backbone)
DEFAULTS = {"model": {"class_path": "zoo.objectives.CausalLM"}}
RUN_SECTIONS = {"model", "data", "trainer", "seed_everything", "ckpt_path", "checkpoint", "throughput", "nonfinite",
                "trust_checkpoint"}  # the top-level keys of a `zoo fit` config


def fit_arguments(configs: list[Path]) -> list[str]:
    """The ``zoo fit`` arguments that load ``configs`` in order: a run config as ``--config FILE``, a backbone
    config (``configs/models/*.yaml``) as the value of ``--model.backbone``, the documented way to train one. The
    backbone's text is given rather than its path: for a path, jsonargparse reports any error inside the file as
    "Config file loop detected", hiding the key at fault."""
    args = []
    for path in configs:
        top = yaml.safe_load(path.read_text())
        if isinstance(top, dict) and not (RUN_SECTIONS & set(top)):
            args += ["--model.backbone", json.dumps(top)]
        else:
            args += ["--config", str(path)]
    return args


def build(configs: list[Path], overrides: list[str] = ()) -> Transformer:
    """The backbone ``configs`` (merged in order, then ``overrides``) describe, parsed and built as ``zoo fit``
    builds its model, on PyTorch's ``meta`` device: shapes only, no memory, no initialization cost."""
    parser, config = parse_run_config([*fit_arguments(configs), *overrides], defaults=DEFAULTS, optional=("data",))
    with torch.device("meta"):
        return instantiate_section(parser, config, "model").backbone


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


@command("info")
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="zoo info", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other argument is a `zoo fit` override, e.g. --model.backbone.init_args.n_layers 24",
    )  # fmt: skip
    parser.add_argument("--config", action="append", required=True, type=Path, help="config file (repeatable)")
    args, overrides = parser.parse_known_args(argv)
    for path in args.config:
        if not path.is_file():
            print(f"zoo info: --config {path} does not exist", file=sys.stderr)
            sys.exit(2)
    try:
        backbone = build(args.config, overrides)
    except Exception as err:  # parser and constructor errors alike: report them, without a traceback
        print(
            f"zoo info: cannot build the model of {', '.join(map(str, args.config))}: {config_error_text(err)}",
            file=sys.stderr,
        )
        sys.exit(2)
    print(describe(backbone))
