"""`python -m zoo` end to end: a few steps of `fit` write TensorBoard events, a checkpoint and the config."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import TINY, tiny_backbone

ROOT = Path(__file__).resolve().parents[2]


def zoo(*args, cache, check=True):
    env = {"ZOO_CACHE": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "zoo", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=check,
        timeout=900,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    swap = [
        "--model.backbone.block.init_args.attention.class_path", "zoo.nn.ExclusiveGroupedQueryAttention",
        "--model.backbone.block.init_args.norm", "zoo.nn.LayerNorm",
        "--data.stall_timeout", "90",  # a base option of every data module (tests/data/test_options.py)
    ]
    result = zoo("fit", *TINY, *swap, "--trainer.default_root_dir", str(tmp), cache=tmp)
    return tmp, result


def test_fit_writes_events_checkpoint_and_config(run):
    tmp, _ = run
    version = tmp / "lightning_logs" / "version_0"
    assert list(version.glob("events.out.tfevents.*"))
    assert (version / "config.yaml").exists()
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert ckpt["state_dict"]["tokens_seen"].item() == 3 * 2 * 32


def test_block_swap_from_the_command_line(run):
    tmp, _ = run
    config = (tmp / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert "zoo.nn.ExclusiveGroupedQueryAttention" in config and "zoo.nn.LayerNorm" in config


def test_data_stall_timeout_from_the_command_line(run):
    tmp, _ = run
    config = yaml.safe_load((tmp / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert config["data"]["class_path"] == "zoo.data.StdlibCorpus"
    assert config["data"]["init_args"]["stall_timeout"] == 90.0


def test_tensorboard_has_training_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, _ = run
    events = EventAccumulator(str(tmp / "lightning_logs" / "version_0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_seen", "val/loss", "val/ppl"} <= tags


def test_checkpoint_reloads_without_the_config(run):
    from zoo.objectives import LanguageModel

    tmp, _ = run
    model = LanguageModel.from_checkpoint(tmp / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert type(model).__name__ == "CausalLM" and model.backbone.dim == 32
    assert type(model.backbone.blocks[0].attention).__name__ == "ExclusiveGroupedQueryAttention"


def test_print_config_and_bad_class_path(tmp_path):
    printed = zoo("fit", "--config", "configs/quickstart.yaml", "--print_config", cache=tmp_path)
    assert "zoo.nn.GroupedQueryAttention" in printed.stdout
    bad = zoo(
        "fit", "--config", "configs/quickstart.yaml",
        "--model.backbone.block.init_args.attention.class_path", "zoo.nn.NoSuchAttention",
        cache=tmp_path, check=False,
    )
    assert bad.returncode != 0 and "zoo.nn.NoSuchAttention" in bad.stderr


def test_bad_value_fails_before_training(tmp_path):
    bad = zoo(
        "fit", *TINY, "--model.backbone.block.init_args.attention.init_args.n_kv_heads", "3",
        "--trainer.default_root_dir", str(tmp_path), cache=tmp_path, check=False,
    )
    assert bad.returncode != 0 and "n_heads=4 is not divisible by n_kv_heads=3" in bad.stderr
    assert not (tmp_path / "lightning_logs").exists() or not list(tmp_path.glob("lightning_logs/*/checkpoints"))


def test_unknown_command(tmp_path):
    bad = zoo("train", cache=tmp_path, check=False)
    assert bad.returncode != 0 and "unknown command 'train'" in bad.stderr


def test_fit_output_shows_zoo_figures_and_no_dependency_warnings(run):
    _, result = run
    console = result.stdout + result.stderr
    assert "Training FLOPs per token (context 32)" in console and "Non-embedding params" in console
    assert "Total Flops" not in console
    header = next(line for line in console.splitlines() if "| Name" in line)
    assert "Params" in header and "FLOPs" not in header  # Lightning's column of 0s is dropped
    assert "LeafSpec" not in console and "set_vital" not in console
    assert "litlogger" not in console  # Lightning's advertisement, not a message about the run
    assert "not supported by the model summary" not in console  # its size column under bf16-mixed (fp32 weights)
    assert "no row skipped" not in console  # the bad-row summary only where rows were skipped
    assert "tokenizer: training a byte-level BPE of 300 tokens" in console  # no silent pause while it trains


def test_progress_bar_counts_optimizer_steps_of_max_steps(tmp_path, capsys):
    import lightning as L

    from zoo.objectives import CausalLM
    from zoo.training.display import StepProgressBar

    batches = [{"input_ids": torch.randint(0, 64, (2, 16)), "labels": torch.randint(0, 64, (2, 16))}] * 8
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer = L.Trainer(max_steps=4, accumulate_grad_batches=2, callbacks=[StepProgressBar()], logger=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(CausalLM(backbone=tiny_backbone()), train_dataloaders=loader)
    out = capsys.readouterr().out
    assert "step" in out and "4/4" in out and "Epoch" not in out
