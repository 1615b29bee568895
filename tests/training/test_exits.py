"""How a run ends: its final step is in last.ckpt whatever the checkpoint interval (once, not twice), every shipped
recipe keeps a last file, and a run folder is used by one live run at a time. (Signals: tests/training/
test_faults.py, where the interrupted runs resume with the uninterrupted losses.)"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.helpers import ROOT, callback, finish, fit, zoo_process
from zoo.training.exits import last_checkpoint_callbacks
from zoo.training.lock import LOCK_NAME, RunFolderInUseError, acquire, release


class SavedSteps(L.Callback):
    """Appends the global step of every checkpoint the run writes to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step}\n")


class StopAt(L.Callback):
    """Asks the trainer to stop after step ``step`` (as early stopping does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def last_step(root: Path) -> int:
    last = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    return torch.load(last, map_location="cpu", weights_only=True)["global_step"]


VALIDATE_EVERY_10 = ["--trainer.val_check_interval", "10", "--trainer.limit_val_batches", "1"]


@pytest.mark.parametrize(
    ("args", "final", "saves"),
    [
        # the case of the report: validation (its checkpoint: a top-k file and last.ckpt) every 10 steps, the run
        # ends at 25, which only last.ckpt gets
        (["--trainer.max_steps", "25", *VALIDATE_EVERY_10], 25, {10: 2, 20: 2, 25: 1}),
        # the final step is a checkpoint step already: not written again
        (["--trainer.max_steps", "20", *VALIDATE_EVERY_10], 20, {10: 2, 20: 2}),
        # stopped early (trainer.should_stop, as EarlyStopping does) between two step-interval checkpoints
        (["--trainer.max_steps", "20", "--checkpoint.every_n_train_steps", "4", "--checkpoint.save_top_k", "0",
          callback(StopAt, step=7)], 7, {4: 1, 7: 1}),
    ],
    ids=["max_steps-25-every-10", "max_steps-20-every-10", "early-stop-7-every-4"],
)  # fmt: skip
def test_the_final_step_is_saved_once(args, final, saves, tmp_path, cache, monkeypatch):
    """``saves``: the steps at which checkpoint files were written, and how many files at each."""
    log = tmp_path / "saved.txt"
    saved = callback(SavedSteps, path=str(log))
    fit(tmp_path, cache, *args, saved, monkeypatch=monkeypatch)
    assert last_step(tmp_path) == final
    assert Counter(int(s) for s in log.read_text().split()) == saves


RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_keeps_its_final_step(recipe):
    """Each recipe's checkpoint settings as `zoo fit` builds them keep a last.ckpt, the file the final step goes to
    whatever the recipe's max_steps is against its interval (the run above shows it is written there)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.training.run_config import parse_run_config

    _, config = parse_run_config(["--config", str(recipe)], optional=("data", "model"))
    checkpoint = ModelCheckpoint(**config.checkpoint.as_dict())
    assert last_checkpoint_callbacks([checkpoint]) == [checkpoint], f"{recipe.name} keeps no last.ckpt"
    interval = config.checkpoint.every_n_train_steps or config.trainer.val_check_interval
    steps = config.trainer.max_steps
    uneven = {"gpt-s-5m": 1367, "supra-50m": 147, "dhara-70m-ar": 315, "dhara-70m-diffusion": 26}
    if recipe.stem in uneven:  # the recipes whose last steps used to be lost: their final step is no save step
        assert steps % interval == uneven[recipe.stem]


# ---- one live run per run folder ---------------------------------------------------------------------------------


def test_a_second_fit_in_a_folder_in_use_is_refused_naming_the_pid(tmp_path, cache, monkeypatch):
    """Two runs without a logger in one default_root_dir would mix their config.yaml and last.ckpt: the second is
    refused, naming the first one's PID and lock file, and writes nothing; when the first ends its lock is gone."""
    root, log = tmp_path / "run", tmp_path / "losses.txt"
    first = zoo_process("--trainer.max_steps", "100000", "--trainer.logger", "false", "--trainer.default_root_dir",
                        str(root), callback("LossLog", path=str(log)), cache=cache)  # fmt: skip
    try:
        lock = root / LOCK_NAME
        deadline = time.monotonic() + 300
        while not log.exists() and first.poll() is None and time.monotonic() < deadline:  # training
            time.sleep(0.5)
        assert lock.read_text().split()[0] == str(first.pid)
        config = (root / "config.yaml").read_text()
        with pytest.raises(RunFolderInUseError, match=f"run folder {root} is in use by another zoo fit "
                           rf"\(PID {first.pid}; lock file {lock}\)"):  # fmt: skip
            fit(root, cache, "--trainer.max_steps", "3", "--trainer.logger", "false", monkeypatch=monkeypatch)
        assert (root / "config.yaml").read_text() == config  # the first run's, untouched
        assert yaml.safe_load(config)["trainer"]["max_steps"] == 100000
    finally:
        first.send_signal(signal.SIGTERM)
        code, out = finish(first)
    assert code == 128 + signal.SIGTERM, out
    assert not lock.exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_NAME).write_text(f"{gone.pid} {os.uname().nodename}\n")
    with pytest.warns(UserWarning, match=f"taking over the lock {tmp_path / LOCK_NAME} of PID {gone.pid}"):
        path = acquire(tmp_path)
    assert path.read_text().split()[0] == str(os.getpid())
    release(path)
    assert not path.exists()


def test_a_lock_held_on_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text("1 some-other-node\n")
    with pytest.raises(RunFolderInUseError, match="PID 1 on host some-other-node"):
        acquire(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text() == "1 some-other-node\n"


def test_under_slurm_sigterm_is_saved_and_the_requeue_left_to_lightning(tmp_path, cache, monkeypatch):
    """With SLURM's variables set, Lightning's SLURMEnvironment (auto-requeue) handles the job's signals: SIGTERM
    still writes last.ckpt at the step it stops at, and the exit is Lightning's (its SIGTERMException, status 0:
    the requeue, on SIGUSR1, is what brings the job back)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    log = tmp_path / "losses.txt"
    with pytest.raises(SIGTERMException) as stop:
        fit(tmp_path, cache, "--trainer.max_steps", "6", "--checkpoint.every_n_train_steps", "2",
            "--checkpoint.save_top_k", "0", callback("LossLog", path=str(log), kill_at=3, signal="SIGTERM"),
            monkeypatch=monkeypatch)  # fmt: skip
    assert stop.value.code is None  # Lightning's status, unchanged
    last = tmp_path / "lightning_logs" / "version_4242" / "checkpoints" / "last.ckpt"  # SLURM: the job id
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
