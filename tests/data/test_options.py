"""Every data module takes every option of :class:`zoo.data.TextDataModule` (declared there once, passed on with
``**kwargs``), from ``zoo fit``'s command line (``--data.X``) and from a config's ``init_args``.

The data modules are found, not listed: every class a config under configs/ names as its data module, and every
``LightningDataModule`` subclass in the ``zoo.data`` package."""

import importlib
import inspect
import json
import pkgutil
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

import zoo.data
from zoo.data.base import TextDataModule
from zoo.training.run_config import instantiate_section, parse_run_config

ROOT = Path(__file__).resolve().parents[2]
BASE = {name: p.default for name, p in inspect.signature(TextDataModule.__init__).parameters.items() if name != "self"}
BUILD = {"tokenizer": {"class_path": "zoo.data.TrainedBPE", "init_args": {"vocab_size": 300}}, "seq_len": 16,
         "batch_size": 2}  # fmt: skip
# a value other than the default (or than BUILD's) for each base option
VALUES = {
    "tokenizer": {"class_path": "zoo.data.TrainedBPE", "init_args": {"vocab_size": 320}},
    "seq_len": 24,
    "batch_size": 3,
    "num_workers": 1,
    "seed": 7,
    "shuffle_buffer": 17,
    "document_mask": True,
    "stall_timeout": 5.0,
    "max_row_chars": 5000,
}
# options a data module fixes, with the value it fixes them to: SFT examples never attend to one another
FIXED = {"SFTDataModule": {"document_mask": True}}


def _class(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _named_in_configs() -> dict[type, dict]:
    """Data module classes named by a config under configs/, each with the init_args of the first config naming it
    (a ``sources: ../data/x.yaml`` reference read from its file)."""
    found: dict[type, dict] = {}
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        section = config.get("data") if isinstance(config, dict) else None
        section = config if isinstance(config, dict) and "class_path" in config else section
        if not isinstance(section, dict) or "class_path" not in section:
            continue
        try:
            cls = _class(section["class_path"])
        except (ImportError, AttributeError):
            continue  # tests/test_configs.py names a class path that does not import
        if not (inspect.isclass(cls) and issubclass(cls, L.LightningDataModule)) or cls in found:
            continue
        init_args = dict(section.get("init_args") or {})
        if isinstance(init_args.get("sources"), str):
            init_args["sources"] = yaml.safe_load((path.parent / init_args["sources"]).read_text())
        found[cls] = init_args
    return found


def _in_package() -> set[type]:
    """Every ``LightningDataModule`` subclass defined in a module of ``zoo.data``."""
    classes = set()
    for info in pkgutil.iter_modules(zoo.data.__path__, "zoo.data."):
        for obj in vars(importlib.import_module(info.name)).values():
            if inspect.isclass(obj) and issubclass(obj, L.LightningDataModule) and obj.__module__.startswith("zoo."):
                classes.add(obj)
    return classes


CONFIGURED = _named_in_configs()
MODULES = sorted(set(CONFIGURED) | _in_package(), key=lambda c: c.__name__)


def class_path(cls: type) -> str:
    public = getattr(zoo.data, cls.__name__, None) is cls
    return f"zoo.data.{cls.__name__}" if public else f"{cls.__module__}.{cls.__name__}"


def own_required(cls: type) -> dict:
    """The options ``cls`` itself requires (e.g. a mixture's ``sources``), as its shipped config gives them."""
    params = inspect.signature(cls.__init__).parameters.values()
    names = [p.name for p in params if p.default is p.empty and p.name not in BASE and p.name != "self"
             and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]  # fmt: skip
    missing = [n for n in names if n not in CONFIGURED.get(cls, {})]
    assert not missing, f"{class_path(cls)} requires {missing}: ship a config under configs/ that uses it"
    return {n: CONFIGURED[cls][n] for n in names}


def arrived(module, option: str):
    """What the built data module holds for ``option``, comparable with :data:`VALUES`."""
    if option == "tokenizer":
        source = module.tokenizer_source
        return {"class_path": class_path(type(source)), "init_args": {"vocab_size": source.vocab_size}}
    return getattr(module, option)


def test_every_base_option_has_a_value_to_set():
    assert set(VALUES) == set(BASE), "give VALUES a non-default value for each option of TextDataModule"
    for option, default in BASE.items():
        assert VALUES[option] != (BUILD[option] if default is inspect.Parameter.empty else default), option
    assert {"Mixture", "StdlibCorpus", "SFTDataModule"} <= {c.__name__ for c in MODULES}


@pytest.mark.parametrize("how", ["command line", "config file"])
@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_every_data_module_takes_every_base_option(cls, how, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["zoo"])  # the arguments are given to the parser below
    fixed = FIXED.get(cls.__name__, {})
    options = {k: v for k, v in VALUES.items() if k not in fixed}
    section = {"class_path": class_path(cls), "init_args": {**BUILD, **own_required(cls)}}
    if how == "command line":
        args = ["--data", json.dumps(section)]
        args += [a for option, value in options.items() for a in (f"--data.{option}", json.dumps(value))]
    else:
        section["init_args"].update(options)
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump({"data": section}))
        args = ["--config", str(path)]
    parser, config = parse_run_config(args, optional=("model",))
    module = instantiate_section(parser, config, "data")
    assert type(module) is cls
    wrong = {o: arrived(module, o) for o, value in options.items() if arrived(module, o) != value}
    assert not wrong, f"{cls.__name__} did not take these options as set ({how}): {wrong}"
    assert {o: arrived(module, o) for o in fixed} == fixed


@pytest.mark.parametrize("name", sorted(FIXED))
def test_a_fixed_option_is_refused_by_name(name, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["zoo"])
    cls = next(c for c in MODULES if c.__name__ == name)
    section = {"class_path": class_path(cls), "init_args": {**BUILD, **own_required(cls)}}
    for option, value in FIXED[name].items():
        with pytest.raises(Exception, match=f"{option}"):
            parse_run_config(["--data", json.dumps(section), f"--data.{option}", json.dumps(not value)],
                             optional=("model",))  # fmt: skip
