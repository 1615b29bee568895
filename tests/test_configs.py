"""Every YAML under configs/ parses and builds; every published model has its published parameter count."""

import contextlib
import io
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from tests.helpers import CONFIGS, rel, stated_count
from zoo.commands.fit import ZooCLI
from zoo.commands.info import build
from zoo.commands.info import main as info_main
from zoo.data import TextDataModule

MODELS = sorted((CONFIGS / "models").rglob("*.yaml"))
SOURCE_LISTS = sorted((CONFIGS / "data").glob("*.yaml"))
TRAINER_PRESETS = sorted((CONFIGS / "trainer").glob("*.yaml"))
RUNS = sorted(set(CONFIGS.rglob("*.yaml")) - set(MODELS) - set(SOURCE_LISTS) - set(TRAINER_PRESETS))

# name: (total parameters, as published by the model's authors)
PUBLISHED = {
    "gpt-s-5m": 5_158_464,
    "supra-50m": 51_786_240,
    "dhara-70m": 71_344_512,
    "smallcoder-303m": 302_027_520,
    "gpt2-124m": 124_439_808,
    "pythia-14m": 14_067_712,
    "pythia-31m": 30_494_720,
    "pythia-70m": 70_426_624,
    "smollm-135m": 134_515_008,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
    assert build([CONFIGS / "models" / f"{name}.yaml"]).num_parameters() == PUBLISHED[name]


@pytest.mark.parametrize("path", MODELS, ids=rel)
def test_model_config_builds_with_the_count_it_states(path):
    backbone = build([path])
    assert backbone.embed.weight.device.type == "meta"  # sized without allocating
    assert backbone.num_parameters() == stated_count(path)


@pytest.mark.parametrize("path", MODELS, ids=rel)
def test_zoo_info_prints_the_parameter_count(path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        info_main(["--config", str(path)])
    lines = dict(line.split(": ", 1) for line in out.getvalue().splitlines() if line.startswith("parameters: "))
    assert int(lines["parameters"].replace(",", "")) == stated_count(path)


def test_zoo_info_refuses_an_unknown_class_path(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("class_path: zoo.nn.NoSuchBackbone\ninit_args: {}\n")
    with pytest.raises(SystemExit) as exit_info:
        info_main(["--config", str(bad)])
    assert exit_info.value.code == 2 and "zoo.nn.NoSuchBackbone" in capsys.readouterr().err


@pytest.fixture(scope="module")
def parser():
    with torch.device("meta"):
        return ZooCLI(args=["--config", str(CONFIGS / "quickstart.yaml")], run=False).parser


@pytest.mark.parametrize("path", RUNS, ids=rel)
def test_run_config_parses_and_its_model_and_data_build(path, parser):
    extra = []
    if path.name == "base.yaml":  # everything but the model, by design
        extra = ["--model.backbone", str(CONFIGS / "models" / "gpt-s-5m.yaml")]
    config = parser.parse_args(["--config", str(path), *extra])  # the trainer is parsed, not built: it may need a GPU
    assert config.model.class_path.startswith("zoo.objectives.")
    data = ArgumentParser()
    data.add_argument("--data", type=TextDataModule)
    assert isinstance(data.instantiate(data.parse_object({"data": config.data.as_dict()})).data, TextDataModule)
    assert build([path] if not extra else [Path(extra[1])]).num_parameters() > 0  # on the meta device


@pytest.mark.parametrize("path", TRAINER_PRESETS, ids=rel)
def test_trainer_preset_parses_on_top_of_the_quickstart(path, parser):
    config = parser.parse_args(["--config", str(CONFIGS / "quickstart.yaml"), "--config", str(path)])
    assert config.trainer.accelerator is not None


@pytest.mark.parametrize("path", SOURCE_LISTS, ids=rel)
def test_data_source_lists_parse_as_mixture_sources(path, parser):
    module = ["zoo.data.SFTDataModule", "--data.format", "zoo.data.UserAssistant"] if "sft" in path.name else [
        "zoo.data.Mixture"]  # fmt: skip
    config = parser.parse_args(
        ["--config", str(CONFIGS / "quickstart.yaml"), "--data", *module, "--data.sources", str(path)]
    )
    assert len(config.data.init_args.sources) == len(yaml.safe_load(path.read_text()))


def info_lines(argv: list[str]) -> dict[str, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        info_main(argv)
    return dict(line.split(": ", 1) for line in out.getvalue().splitlines() if ": " in line)


def number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.parametrize("path", [p for p in MODELS if "RoutedFFN" in p.read_text()], ids=rel)
def test_zoo_info_prints_the_active_parameters_of_a_routed_model(path):
    backbone, lines = build([path]), info_lines(["--config", str(path)])
    active = number(lines["active parameters per token"])
    assert active == backbone.num_parameters() - backbone.inactive_parameters() < backbone.num_parameters()
    assert f"active per token {active:,}" in path.read_text()  # the header states it too


def test_zoo_info_merges_configs_in_order_as_fit_does(tmp_path):
    model = CONFIGS / "models" / "gpt-s-5m.yaml"
    override = tmp_path / "override.yaml"
    override.write_text(
        "trainer: {max_steps: 3}\n"
        "model:\n  class_path: zoo.objectives.CausalLM\n  init_args:\n    backbone:\n      init_args: {n_layers: 1}\n"
    )
    full = build([model])
    per_layer = sum(p.numel() for p in full.blocks[0].parameters())
    lines = info_lines(["--config", str(model), "--config", str(override)])
    assert number(lines["parameters"]) == full.num_parameters() - (full.n_layers - 1) * per_layer
    # any `zoo fit` override applies, after the files
    lines = info_lines(["--config", str(model), "--model.backbone.init_args.n_layers", "2"])
    assert number(lines["parameters"]) == full.num_parameters() - (full.n_layers - 2) * per_layer


def test_zoo_info_reads_a_run_config_with_the_parser_of_fit(tmp_path, capsys):
    """A section `zoo fit` would refuse is refused by `zoo info` too, named (the parser is fit's)."""
    bad = tmp_path / "bad-data.yaml"
    bad.write_text("data: {class_path: zoo.data.NoSuchData}\n")
    with pytest.raises(SystemExit) as exit_info:
        info_main(["--config", str(CONFIGS / "quickstart.yaml"), "--config", str(bad)])
    assert exit_info.value.code == 2 and "zoo.data.NoSuchData" in capsys.readouterr().err
    bad.write_text("trainer: {max_stepz: 3}\n")
    with pytest.raises(SystemExit):
        info_main(["--config", str(CONFIGS / "quickstart.yaml"), "--config", str(bad)])
    assert "max_stepz" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("model:\n  class_path: zoo.objectives.NoSuchObjective\n  init_args: {backbone: {}}\n", "NoSuchObjective"),
        ("init_args: {vocab_size: 0}\n", "vocab_size=0"),
        ("init_args: {block: {init_args: {ffn: {class_path: zoo.nn.NoSuchFFN}}}}\n", "zoo.nn.NoSuchFFN"),
    ],
)
def test_zoo_info_refuses_bad_configs_with_exit_code_2(tmp_path, capsys, text, named):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)  # merged over a valid model
    with pytest.raises(SystemExit) as exit_info:
        info_main(["--config", str(CONFIGS / "models" / "gpt-s-5m.yaml"), "--config", str(bad)])
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def test_zoo_info_refuses_a_missing_file_with_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        info_main(["--config", str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 2 and "missing.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("path", MODELS, ids=rel)
def test_model_config_parses_as_the_backbone_of_a_run(path, parser):
    """The documented use: `python -m zoo fit --config configs/base.yaml --model.backbone <model config>`."""
    config = parser.parse_args(["--config", str(CONFIGS / "base.yaml"), "--model.backbone", str(path)])
    assert config.model.init_args.backbone.class_path == "zoo.nn.Transformer"
    assert config.model.init_args.backbone.init_args.dim == yaml.safe_load(path.read_text())["init_args"]["dim"]
