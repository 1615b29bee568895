"""Every recipe under configs/recipes/ (and the three quickstarts) trains as its users run it offline: ``python -m zoo
fit --config <recipe>`` with the README's offline overrides for it (the "Recipes offline" table, read from README.md:
the embedded corpus for the data and a local tokenizer) for 2 optimizer steps with the recipe's own trainer
(precision, clipping, accumulation, checkpoint callback), optimizer, schedule (over the recipe's whole run length),
objective and real model shape. Only the sizes are shrunk (batch, sequence, the text a tokenizer learns from) and
``init_from`` pointed at a checkpoint of the right shape that the test writes, with a tokenizer in it as every
``zoo fit`` checkpoint has. A new recipe is covered by being added to the folder and to the README's table.

On a CPU without bf16 units a bf16 recipe runs in fp32 here (``32-true``): torch emulates bf16 there, many
times slower than fp32, and zoo warns so (tests/training/test_precision_choice.py); the bf16 clipping path with
every optimizer is tested in tests/training/test_clipping.py. On a CPU with bf16 units (AMX, AVX512-BF16) the
recipe's own precision runs."""

import dataclasses
import json
import re
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import CONFIGS, rel, stated_count
from zoo.cli import main as zoo_main
from zoo.data import SFTSource, Source
from zoo.data.corpus import stdlib_documents, stdlib_shards
from zoo.data.tokenizer import EOS, train_bpe
from zoo.training.precision import choose_precision, cpu_bf16_units
from zoo.training.run_config import instantiate_section, parse_run_config

SLOW_PARAMETERS = 20_000_000  # recipes of larger models (their own backbone files state it) run under ZOO_TEST_SLOW=1


def recipe_param(recipe: Path):
    backbone = yaml.safe_load(recipe.read_text())["model"]["init_args"]["backbone"]
    large = isinstance(backbone, str) and stated_count(recipe.parent / backbone) >= SLOW_PARAMETERS
    return pytest.param(recipe, marks=pytest.mark.slow if large else (), id=rel(recipe))


RECIPES = [
    *map(recipe_param, sorted((CONFIGS / "recipes").glob("*.yaml"))),
    *(CONFIGS / name for name in ("quickstart.yaml", "sft-quickstart.yaml", "diffusion-quickstart.yaml")),
]
SEQ_LEN = 128
LIMIT_FILES = 30  # stdlib files the shrunken corpus reads
SHRUNK = {  # per data module: the sizes this test shrinks, nothing else
    "zoo.data.Mixture": ["--data.tokenizer_documents", "20"],  # documents per source a trained tokenizer reads
    # some of the files for validation
    "zoo.data.StdlibCorpus": ["--data.limit_files", str(LIMIT_FILES), "--data.val_fraction", "0.2"],
    "zoo.data.SFTDataModule": [],
}


def offline_overrides() -> dict[str, list[str]]:
    """The README's "Recipes offline" table: each recipe's name and the arguments that run it without the network."""
    section = (CONFIGS.parent / "README.md").read_text().split("\n### Recipes offline\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([\w.-]+)` \| (.+) \|$", section, flags=re.M)
    return {name: [arg for code in re.findall(r"`([^`]+)`", cell) for arg in shlex.split(code)] for name, cell in rows}


def test_the_readme_gives_every_recipe_its_offline_overrides():
    assert sorted(offline_overrides()) == sorted(path.stem for path in (CONFIGS / "recipes").glob("*.yaml"))


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory) -> Path:
    """A small byte-level BPE on the embedded corpus: the tokenizer the test's ``init_from`` checkpoints carry."""
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    texts = (doc["text"] for kind in ("prose", "code") for doc in stdlib_documents(kind, stdlib_shards(kind, 20)))
    train_bpe(texts, vocab_size=512).save(str(path))
    return path


def init_checkpoint(recipe: Path, folder: Path, tokenizer: Path) -> Path:
    """A checkpoint holding freshly initialised weights of ``recipe``'s backbone, for its ``init_from``, and a
    tokenizer where a ``zoo fit`` checkpoint keeps it (its data module's state); one per model shape."""
    parser, config = parse_run_config(["--config", str(recipe)], optional=("data",))
    backbone_config = config.model.init_args.backbone.as_dict()
    path = folder / f"init-{abs(hash(json.dumps(backbone_config, sort_keys=True, default=str)))}.ckpt"
    if not path.exists():
        backbone = instantiate_section(parser, config, "model").backbone  # built as `zoo fit` builds it
        torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                    "TextDataModule": {"tokenizer": tokenizer.read_text(), "eos_token": EOS}}, path)  # fmt: skip
    return path


@pytest.mark.parametrize("recipe", RECIPES, ids=rel)
def test_recipe_trains_two_steps_offline(recipe, tokenizer_file, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub tokenizer or source left in would fail at once
    config = yaml.safe_load(recipe.read_text())
    trainer = config["trainer"]
    accumulate = trainer.get("accumulate_grad_batches", 1)
    offline = offline_overrides()[recipe.stem] if recipe.parent.name == "recipes" else []
    data = config["data"]
    args = [*offline, *SHRUNK[data["class_path"]], "--data.seq_len", str(SEQ_LEN), "--data.batch_size", "1",
            "--data.num_workers", "0", "--data.shuffle_buffer", "8"]  # fmt: skip
    model = config["model"]["init_args"]
    if model.get("init_from"):  # the previous stage's checkpoint, wherever the recipe or the README names it
        checkpoint = str(init_checkpoint(recipe, tmp_path.parent, tokenizer_file))
        named = [args[i + 1] for i, arg in enumerate(args) if arg == "--data.tokenizer.path"]
        assert named in ([], [model["init_from"]]), f"the README's tokenizer for {recipe.stem} is not its init_from"
        args = [checkpoint if arg == model["init_from"] else arg for arg in args]
        args += ["--model.init_args.init_from", checkpoint]
        if data["init_args"]["tokenizer"].get("init_args", {}).get("path") == model["init_from"]:  # sft-quickstart
            args += ["--data.tokenizer.path", checkpoint]
    if model.get("compile"):
        args += ["--model.init_args.compile", "false"]  # no compiler here
    precision = trainer.get("precision")
    if str(precision).startswith("bf16") and cpu_bf16_units() is None:
        precision = "32-true"  # see the module docstring
        args += ["--trainer.precision", precision]
    zoo_main([
        "fit", "--config", str(recipe), *args,
        "--trainer.default_root_dir", str(tmp_path / "run"),
        # the recipe's max_steps stays, so the schedule is the real one; the run stops after 2 optimizer steps
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(2 * accumulate),
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    if precision is None:  # the device's fastest, noted at the top of config.yaml
        precision = choose_precision(trainer.get("accelerator", "auto")).precision
        assert (run / "config.yaml").read_text().startswith(f"# trainer.precision={precision}, chosen automatically")
    assert saved["trainer"]["precision"] == precision
    assert saved["trainer"]["gradient_clip_val"] == trainer.get("gradient_clip_val")
    assert saved["trainer"]["accumulate_grad_batches"] == accumulate
    if "--data.sources" in offline:  # the file's list replaces the recipe's: no field of the recipe's sources stays
        listed = yaml.safe_load((CONFIGS.parent / offline[offline.index("--data.sources") + 1]).read_text())
        source = SFTSource if data["class_path"] == "zoo.data.SFTDataModule" else Source
        defaults = {field.name: field.default for field in dataclasses.fields(source)}
        assert saved["data"]["init_args"]["sources"] == [{**defaults, **entry} for entry in listed]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    assert last["global_step"] == 2
    assert last["state_dict"]["tokens_seen"].item() == 2 * accumulate * SEQ_LEN


@pytest.mark.parametrize(
    ("recipe", "named"),
    [
        ("gpt-s-5m.yaml", r"path='HuggingFaceFW/fineweb-edu'.*point the source at them"),  # its data
        ("smallcoder-303m.yaml", r"path='bigcode/starcoder'.*give its local path"),  # its tokenizer
    ],
)
def test_unreachable_recipe_data_fail_fast_saying_how_to_go_local(recipe, named, tmp_path):
    import re
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ZOO_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(CONFIGS.parent)}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "zoo", "fit", "--config", str(CONFIGS / "recipes" / recipe),
         "--trainer.default_root_dir", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,  # nothing waits on the network
    )  # fmt: skip
    assert result.returncode != 0
    assert re.search(named, result.stderr, flags=re.S), result.stderr[-3000:]
    assert not list(tmp_path.glob("run/**/*.ckpt"))


PRETRAINING = [  # the recipes and quickstarts of pre-training data (instruction data are not prepared into shards)
    r for r in RECIPES
    if yaml.safe_load((r.values[0] if hasattr(r, "values") else r).read_text())["data"]["class_path"]
    != "zoo.data.SFTDataModule"
]


@pytest.fixture(scope="session")
def shards(tokenizer_file, tmp_path_factory) -> tuple[dict, Path]:
    """The embedded corpus (its prose and code as two JSON Lines sources) prepared once with the shared tokenizer by
    ``python -m zoo data prepare``: the data section every recipe trains from, and the shards' folder."""
    folder = tmp_path_factory.mktemp("shards")
    sources = []
    for kind, weight in (("prose", 0.5), ("code", 0.5)):
        with open(folder / f"{kind}.jsonl", "w") as f:
            for doc in stdlib_documents(kind, stdlib_shards(kind, LIMIT_FILES)):
                f.write(json.dumps({"text": doc["text"]}) + "\n")
        sources.append(asdict(Source(path="json", data_files=str(folder / f"{kind}.jsonl"), weight=weight,
                                     val_documents=3)))  # fmt: skip
    tokenizer = {"class_path": "zoo.data.PretrainedTokenizer", "init_args": {"path": str(tokenizer_file)}}
    data = {"class_path": "zoo.data.Mixture",
            "init_args": {"sources": sources, "tokenizer": tokenizer, "seq_len": SEQ_LEN, "batch_size": 1}}  # fmt: skip
    (folder / "data.yaml").write_text(yaml.safe_dump({"data": data}))
    zoo_main(["data", "prepare", "--config", str(folder / "data.yaml"), "--out", str(folder / "out"), "--quiet"])
    return data, folder / "out"


@pytest.mark.parametrize("recipe", PRETRAINING, ids=rel)
def test_recipe_trains_two_steps_from_prepared_shards(recipe, shards, tokenizer_file, tmp_path, monkeypatch):
    """``zoo data prepare`` once, then ``zoo fit --config <recipe> --data.prepared DIR``: the recipe's own trainer,
    model and schedule, its data swapped for the embedded corpus's shards (as the on-the-fly test above swaps it)."""
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    config = yaml.safe_load(recipe.read_text())
    trainer = config["trainer"]
    accumulate = trainer.get("accumulate_grad_batches", 1)
    data, folder = shards
    override = {"data": data}
    model = config["model"]["init_args"]
    if model.get("init_from"):
        override["model"] = {"init_args": {"init_from": str(init_checkpoint(recipe, tmp_path.parent, tokenizer_file))}}
    if model.get("compile"):
        override.setdefault("model", {}).setdefault("init_args", {})["compile"] = False
    if str(trainer.get("precision")).startswith("bf16") and cpu_bf16_units() is None:
        override.setdefault("trainer", {})["precision"] = "32-true"  # see the module docstring
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    zoo_main([
        "fit", "--config", str(recipe), "--config", str(tmp_path / "override.yaml"), "--data.prepared", str(folder),
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(2 * accumulate),
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["prepared"] == str(folder)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    assert last["global_step"] == 2
    assert last["state_dict"]["tokens_seen"].item() == 2 * accumulate * SEQ_LEN
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["ranks"][0]["loader"]  # the data position
