"""Stages chain by run name: a failed first attempt leaves no version folder, each run keeps ``<run>/last.ckpt``
pointing at its newest checkpoint, and the next stage's unchanged config reads it (or the run folder). A resumed
run counts its steps on the progress bar, and one already at ``max_steps`` trains nothing and says so."""

import os
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import TINY_CHAIN
from zoo.cli import main
from zoo.training.resume import run_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def fit(*args: str) -> int:
    """``python -m zoo fit ARGS`` in this process; its exit status."""
    try:
        main(["fit", *TINY_CHAIN, *args])
    except SystemExit as exit_:
        return exit_.code
    return 0


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Stage 1 failed once at setup (a schedule longer than the run), then run again as it should be."""
    tmp = tmp_path_factory.mktemp("chain")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_CACHE", str(tmp / "cache"))
        run = tmp / "stage1"
        failed = fit("--trainer.default_root_dir", str(run), "--model.schedule.init_args.warmup_steps", "1500")
        after_failure = sorted(p.name for p in (run / "lightning_logs").glob("*"))
        assert fit("--trainer.default_root_dir", str(run)) == 0
        yield tmp, run, failed, after_failure


def test_a_failed_run_leaves_no_version_folder(stage1):
    _, run, failed, after_failure = stage1
    assert failed == 2
    assert after_failure == []  # the failed attempt's version_0 is gone ...
    assert (run / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()  # ... so the rerun is 0


def test_the_run_keeps_a_stable_link_to_its_last_checkpoint(stage1):
    _, run, _, _ = stage1
    link = run / "last.ckpt"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # relative: the run folder can move
    assert link.resolve() == (run / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").resolve()
    assert run_checkpoint(run).parent == (run / "lightning_logs" / "version_0" / "checkpoints")  # the folder too


@pytest.mark.parametrize("name", ["link", "folder"])
def test_the_next_stage_reads_the_previous_one_by_name(stage1, name):
    tmp, run, _, _ = stage1
    stage2 = tmp / f"stage2-{name}.yaml"  # the config a recipe ships: it names the run, not a version number
    init_from = str(run / "last.ckpt") if name == "link" else str(run)
    stage2.write_text(yaml.safe_dump({"model": {"init_args": {"init_from": init_from}}}))
    out = tmp / f"stage2-{name}"
    assert fit("--config", str(stage2), "--trainer.default_root_dir", str(out), "--trainer.max_steps", "2",
               "--trainer.val_check_interval", "2") == 0  # fmt: skip
    assert (out / "last.ckpt").is_file()


def test_a_missing_previous_stage_is_one_line(stage1, tmp_path, capsys):
    assert fit("--model.init_args.init_from", str(tmp_path / "never-run"), "--trainer.default_root_dir",
               str(tmp_path / "run")) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("zoo fit: init_from=") and "never-run is not a file nor a run folder" in err[-1]
    assert "train the previous stage first" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "run" / "lightning_logs").exists() or not list((tmp_path / "run").glob("*/version_*"))


def test_a_resumed_run_counts_its_steps_and_a_finished_one_trains_nothing(stage1, capsys, caplog):
    tmp, run, _, _ = stage1
    resumed = tmp / "resumed"
    assert fit("--trainer.default_root_dir", str(resumed)) == 0
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(resumed), "--trainer.max_steps", "6", "--ckpt_path", "last",
               "--trainer.enable_progress_bar", "true") == 0  # fmt: skip
    console = capsys.readouterr()
    bar = (console.out + console.err).replace("\r", "\n")
    assert "3/6" in bar and "6/6" in bar  # resumed at step 3 of 6, not `0/?`
    assert torch.load(resumed / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 6
    versions = sorted(p.name for p in (resumed / "lightning_logs").glob("version_*"))
    assert fit("--trainer.default_root_dir", str(resumed), "--trainer.max_steps", "6", "--ckpt_path", "last") == 0
    console = capsys.readouterr()
    said = [line for line in (console.out + console.err + caplog.text).splitlines() if "nothing to train" in line]
    assert len(said) == 1 and "at step 6" in said[0] and "trainer.max_steps=6" in said[0]
    assert sorted(p.name for p in (resumed / "lightning_logs").glob("version_*")) == versions  # no empty folder
