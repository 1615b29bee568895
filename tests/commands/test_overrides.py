"""An override replaces what it names: ``--data.sources FILE`` (or a list in a later ``--config``) is the whole list
of sources, with nothing of the recipe's own entries merged into it (zoo.compat.replace_lists)."""

import sys
from pathlib import Path

import pytest
import yaml

from zoo.commands.fit import ZooCLI
from zoo.data.mixture import Source
from zoo.training.run_config import instantiate_section, parse_run_config

ROOT = Path(__file__).resolve().parents[2]
STDLIB = ROOT / "configs" / "data" / "stdlib.yaml"
RECIPES = sorted(
    path for path in (ROOT / "configs" / "recipes").glob("*.yaml")
    if "sources" in ((yaml.safe_load(path.read_text()).get("data") or {}).get("init_args") or {})
)  # fmt: skip
DEFAULTS = {f: getattr(Source(path="stdlib"), f) for f in ("split", "data_files", "text_field", "template",
                                                           "validation_split", "val_documents")}  # fmt: skip


def replacement(recipe: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    """The documented swap for ``recipe``: the embedded corpus (its instruction set for an SFT recipe), as many
    entries as the recipe lists where possible, so that an item-by-item merge would have something to merge."""
    data = yaml.safe_load(recipe.read_text())["data"]
    if "SFT" not in data["class_path"]:
        return STDLIB, yaml.safe_load(STDLIB.read_text())
    entries = [{"path": "stdlib", "name": "functions", "weight": 0.5}, {"path": "stdlib", "name": "functions",
                                                                         "weight": 0.5}]  # fmt: skip
    path = tmp_path / "sft-stdlib.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path, entries


def assert_only(sources, entries: list[dict]) -> None:
    """``sources`` (parsed or built) are exactly ``entries``, every other field at its default."""
    assert len(sources) == len(entries)
    for source, entry in zip(sources, entries):
        fields = dict(vars(source)) if not isinstance(source, dict) else dict(source)
        for key, value in {**DEFAULTS, **entry}.items():
            assert fields[key] == value, (key, fields)
        recipe_only = {"instruction_field": "instruction", "response_field": "output"}
        for key, default in recipe_only.items():  # an SFT recipe's own column names must not leak in
            assert fields.get(key, default) == default, (key, fields)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_data_sources_override_replaces_the_recipes_list(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["zoo"])  # the arguments are given to ZooCLI below
    path, entries = replacement(recipe, tmp_path)
    args = ["--config", str(recipe), "--data.sources", str(path)]
    parser, config = parse_run_config(args)
    assert_only([dict(vars(s)) if not isinstance(s, dict) else s for s in config.data.init_args.sources], entries)
    built = instantiate_section(parser, config, "data")
    assert_only(built.source_specs, entries)
    rows = next(iter(built.source_specs[0].rows("train").take(1)))  # the embedded corpus itself is read
    assert rows

    with pytest.raises(SystemExit):  # --print_config shows the same list
        ZooCLI(args=[*args, "--print_config"], run=False)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert_only(printed["data"]["init_args"]["sources"], entries)


def test_a_later_config_replaces_the_list_too(tmp_path):
    later = tmp_path / "later.yaml"
    entries = yaml.safe_load(STDLIB.read_text())
    later.write_text(yaml.safe_dump({"data": {"init_args": {"sources": entries}}}))
    recipe = ROOT / "configs" / "recipes" / "smallcoder-303m-stage2.yaml"
    _, config = parse_run_config(["--config", str(recipe), "--config", str(later)])
    assert_only([dict(vars(s)) if not isinstance(s, dict) else s for s in config.data.init_args.sources], entries)


def test_appending_and_setting_one_field_still_work(tmp_path):
    recipe = ROOT / "configs" / "recipes" / "gpt-s-5m.yaml"
    _, base = parse_run_config(["--config", str(recipe)])
    _, config = parse_run_config(["--config", str(recipe), "--data.sources+", "{path: stdlib, name: code}"])
    sources = config.data.init_args.sources
    assert len(sources) == len(base.data.init_args.sources) + 1 and sources[-1].path == "stdlib"
    assert [s.path for s in sources[:-1]] == [s.path for s in base.data.init_args.sources]
