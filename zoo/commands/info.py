"""``python -m zoo info --config FILE``: a model's architecture and size, without allocating its weights.

FILE is a backbone config (``configs/models/*.yaml``, read as ``--model.backbone``) or any run config with a
``model:`` section (the quickstart, a recipe), parsed by the parser of ``zoo fit``: several ``--config`` files
merge in order, and any other argument is a ``zoo fit`` override. The model is built on PyTorch's ``meta`` device,
so sizing a 300M-parameter model takes no memory::

    python -m zoo info --config configs/models/smallcoder-303m.yaml
    python -m zoo info --config configs/recipes/gpt-s-5m.yaml --model.backbone.init_args.n_layers 12
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from zoo.commands.errors import command
from zoo.commands.options import CommandParser
from zoo.errors import ZooError
from zoo.nn.transformer import Transformer
from zoo.training.run_config import config_error_text, instantiate_section, parse_run_config

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


def info(*, config: list[Path], overrides: list[str] = ()) -> Transformer:
    """Build the model of run or backbone configs on the ``meta`` device and print its architecture and size.

    Args:
        config: config file (repeatable): a backbone config or a run config with a model section
        overrides: ``zoo fit`` options (``--model.backbone.init_args.n_layers 12``)
    """
    for path in config:
        if not path.is_file():
            raise ZooError(f"--config {path} does not exist")
    try:
        backbone = build(config, overrides)
    except Exception as err:  # parser and constructor errors alike: report them, without a traceback
        raise ZooError(f"cannot build the model of {', '.join(map(str, config))}: {config_error_text(err)}") from None
    print(describe(backbone))
    return backbone


def parser() -> CommandParser:
    p = CommandParser(prog="zoo info", description=__doc__,
                      epilog="Any other argument is a `zoo fit` override, e.g. --model.backbone.init_args.n_layers 24")
    p.add_function_arguments(info, as_group=False, skip={"overrides"})
    return p


@command("info")
def main(argv: list[str]) -> None:
    args, overrides = parser().parse_known(argv)
    info(config=list(args.config), overrides=overrides)
