"""Training under faults: exact resumption after SIGKILL, atomic checkpoint files, NaN/Inf policies, and clear
errors for checkpoints that do not fit (another vocabulary or architecture) or do not read (truncated, garbage)."""

import io
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import callback, finish, fit, losses, tiny_backbone, zoo_process
from zoo.training import (
    AtomicCheckpointIO,
    CheckpointMismatchError,
    NonFiniteError,
    NonFiniteGuard,
    newest_good_checkpoint,
)


def checkpoints(tmp: Path) -> dict[str, dict]:
    found = sorted(tmp.glob("lightning_logs/*/checkpoints/*.ckpt"))
    return {p.name: torch.load(p, map_location="cpu", weights_only=True) for p in found}


# ---- 1. SIGKILL, SIGTERM, SIGINT, then --ckpt_path last -------------------------------------------------------

SIX_STEPS = ["--trainer.max_steps", "6", "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "0"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache) -> dict[int, float]:
    """The losses of the 6-step run that the interrupted runs are compared with."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    code, out = finish(zoo_process(*SIX_STEPS, "--trainer.default_root_dir", str(tmp / "a"),
                                   callback("LossLog", path=str(tmp / "a.txt")), cache=cache))  # fmt: skip
    assert code == 0, out
    found = losses(tmp / "a.txt")
    assert sorted(found) == [1, 2, 3, 4, 5, 6] and len(set(found.values())) == 6  # the losses do change
    return found


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "status", "saved"),
    [("SIGKILL", -signal.SIGKILL, 4), ("SIGTERM", 128 + signal.SIGTERM, 5), ("SIGINT", 128 + signal.SIGINT, 5)],
)
def test_an_interrupted_run_resumes_with_the_uninterrupted_losses(name, status, saved, tmp_path, cache, uninterrupted):
    """Checkpoints every 2 steps; the signal arrives as step 5 starts. SIGKILL: the process dies at once, before
    step 5; the last checkpoint is step 4's. SIGTERM (a scheduler's stop) and SIGINT (Ctrl+C): step 5 finishes,
    last.ckpt is written at step 5 and the process exits with 143 / 130 (128 + the signal). Then `--ckpt_path
    last`: the resumed steps must have the uninterrupted run's losses exactly (weights, AdamW moments, schedule,
    data position and random state restored; CPU, one thread)."""
    log = tmp_path / "b.txt"
    args = [*SIX_STEPS, "--trainer.default_root_dir", str(tmp_path / "b")]
    code, out = finish(zoo_process(*args, callback("LossLog", path=str(log), kill_at=5, signal=name), cache=cache))
    assert code == status, out
    interrupted = losses(log)
    assert sorted(interrupted) == list(range(1, saved + 1))  # SIGTERM, SIGINT: step 5 ran to its end
    last = tmp_path / "b" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == saved
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # written atomically: no temporary left
    if name != "SIGKILL":
        assert f"{name}: saved step 5 in {last}; resume with --ckpt_path last" in out

    code, out = finish(zoo_process(*args, callback("LossLog", path=str(log)), "--ckpt_path", "last", cache=cache))
    assert code == 0, out
    assert "version_0/checkpoints/last.ckpt" in out  # found in the interrupted run's folder, not the new version_1
    resumed = [tuple(map(float, line.split())) for line in log.read_text().split("\n")[saved:] if line]
    assert [int(step) for step, _ in resumed] == list(range(saved + 1, 7))  # from the saved step on
    assert {int(s): loss for s, loss in resumed} == {s: uninterrupted[s] for s in range(saved + 1, 7)}
    assert interrupted == {s: uninterrupted[s] for s in range(1, saved + 1)}


# ---- 2. atomic checkpoint files ----------------------------------------------------------------------------------


def test_a_crash_while_saving_leaves_the_previous_last_ckpt_intact(tmp_path, trained, monkeypatch):
    """A `zoo fit` run writes through AtomicCheckpointIO (checked in the `trained` fixture); here the next save of
    last.ckpt crashes after half its bytes reached the disk: the previous last.ckpt still loads."""
    last = tmp_path / "last.ckpt"
    shutil.copy(trained, last)
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["global_step"] = 3
    real_save, written = torch.save, []

    def crashing_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        written.append(f.name)
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint(checkpoint, last)
    monkeypatch.setattr(torch, "save", real_save)
    assert Path(written[0]).parent == tmp_path and Path(written[0]).name.startswith(".last.ckpt.")  # written beside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the partial temporary file is gone

    from zoo.objectives import LanguageModel

    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    assert LanguageModel.from_checkpoint(str(last)).backbone.dim == 32


def test_atomic_io_replaces_the_file_whole(tmp_path):
    plugin = AtomicCheckpointIO()
    path = tmp_path / "sub" / "last.ckpt"
    plugin.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    plugin.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert torch.equal(plugin.load_checkpoint(path)["state_dict"]["w"], torch.zeros(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


# ---- 3. NaN / Inf ------------------------------------------------------------------------------------------------


def test_nan_with_policy_skip_drops_that_update_and_counts_it(tmp_path, cache, monkeypatch):
    args = ["--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "1", "--checkpoint.save_top_k", "-1",
            callback("NaNAt", step=2)]  # fmt: skip
    with pytest.warns(UserWarning, match="non-finite loss or gradient norm at step 2: update skipped"):
        fit(tmp_path, cache, *args, monkeypatch=monkeypatch)
    saved = checkpoints(tmp_path)
    before, skipped, after = (saved[f"epoch=0-step={s}.ckpt"] for s in (2, 3, 4))
    for name, weight in before["state_dict"].items():  # the 3rd update (global_step 2) left the weights as they were
        if weight.is_floating_point():
            torch.testing.assert_close(skipped["state_dict"][name], weight, rtol=0, atol=0)
    assert skipped["optimizer_states"][0]["state"][0]["step"] == before["optimizer_states"][0]["state"][0]["step"]
    assert not torch.equal(after["state_dict"]["backbone.embed.weight"], skipped["state_dict"]["backbone.embed.weight"])
    for ckpt in saved.values():
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert saved["last.ckpt"]["callbacks"]["NonFiniteGuard"]["skipped"] == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/skipped_steps")] == [0, 0, 1, 1, 1]


def test_nan_with_policy_stop_names_the_step_and_the_last_good_checkpoint(tmp_path, cache, monkeypatch):
    args = ["--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "1", "--checkpoint.save_top_k", "0",
            "--nonfinite.policy", "stop", callback("NaNAt", step=2)]  # fmt: skip
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(NonFiniteError, match=f"non-finite loss or gradient norm at step 2 .*{last}"):
        fit(tmp_path, cache, *args, monkeypatch=monkeypatch)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_a_checkpoint_with_non_finite_weights_is_refused():
    guard = NonFiniteGuard()
    trainer = SimpleNamespace(global_step=7, ckpt_path=None, checkpoint_callbacks=[])
    good = {"state_dict": {"w": torch.ones(2), "n": torch.tensor(3)}}
    guard.on_save_checkpoint(trainer, None, good)
    bad = {"state_dict": {"w": torch.tensor([1.0, float("inf")]), "v": torch.tensor([float("nan")])}}
    with pytest.raises(NonFiniteError, match="refusing to write a checkpoint at step 7: non-finite weights in w, v"):
        guard.on_save_checkpoint(trainer, None, bad)


def test_nonfinite_config_errors():
    with pytest.raises(ValueError, match="nonfinite.policy='ignore'"):
        NonFiniteGuard(policy="ignore")
    with pytest.raises(ValueError, match="nonfinite.max_consecutive=-1"):
        NonFiniteGuard(max_consecutive=-1)


# ---- 4. checkpoints that do not fit or do not read ---------------------------------------------------------------


def test_resuming_with_another_vocabulary_names_the_parameters(tmp_path, cache, trained, monkeypatch):
    """The run's config changed between the crash and `--ckpt_path last` (an explicit checkpoint file is refused
    the same way: the config builds the model, test_safe_loading)."""
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(trained, folder / "last.ckpt")
    with pytest.raises(CheckpointMismatchError) as err:
        fit(tmp_path, cache, "--model.backbone.vocab_size", "512", "--trainer.max_steps", "3", "--ckpt_path", "last",
            monkeypatch=monkeypatch)  # fmt: skip
    message = str(err.value)
    assert f"checkpoint {folder / 'last.ckpt'} does not fit this model" in message
    assert "backbone.embed.weight: checkpoint (300, 32) vs model (512, 32)" in message
    assert "the vocabulary differs (checkpoint 300 tokens, model 512)" in message


def test_from_checkpoint_with_another_architecture_names_the_parameters(trained):
    from zoo.objectives import LanguageModel

    with pytest.raises(CheckpointMismatchError) as err:
        LanguageModel.from_checkpoint(str(trained), backbone=tiny_backbone(vocab_size=300, n_layers=3))
    message = str(err.value)
    assert f"checkpoint {trained} does not fit this model" in message
    assert "in the model, not in the checkpoint (" in message and "backbone.blocks.2." in message
    assert "the architecture differs" in message


def test_truncated_and_garbage_files_are_named(tmp_path, cache, trained, monkeypatch):
    from zoo.objectives import LanguageModel

    truncated, garbage = tmp_path / "truncated.ckpt", tmp_path / "garbage.ckpt"
    truncated.write_bytes(trained.read_bytes()[:5000])
    garbage.write_bytes(b"not a checkpoint at all\n" * 100)
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match=f"checkpoint {path} is truncated or not a checkpoint"):
            LanguageModel.from_checkpoint(str(path))
    with pytest.raises(ValueError, match=f"checkpoint {garbage} is truncated or not a checkpoint"):
        AtomicCheckpointIO().load_checkpoint(garbage)  # what the trainer reads checkpoints with
    with pytest.raises(ValueError, match=f"checkpoint {truncated} is truncated or not a checkpoint"):
        fit(tmp_path / "run", cache, "--trainer.max_steps", "2", "--ckpt_path", str(truncated), monkeypatch=monkeypatch)


def test_last_skips_a_corrupt_newest_checkpoint(tmp_path, trained):
    older, newer = (tmp_path / f"version_{i}" / "checkpoints" for i in (0, 1))
    older.mkdir(parents=True), newer.mkdir(parents=True)
    shutil.copy(trained, older / "last.ckpt")
    (newer / "last.ckpt").write_bytes(trained.read_bytes()[:-1000])
    now = time.time()
    os.utime(older / "last.ckpt", (now - 60, now - 60))
    with pytest.warns(UserWarning, match=f"skipping checkpoint {newer / 'last.ckpt'}"):
        assert newest_good_checkpoint([older, newer]) == older / "last.ckpt"
    (older / "last.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no checkpoint under .* reads"), pytest.warns(UserWarning):
        newest_good_checkpoint([older, newer])
    assert newest_good_checkpoint([tmp_path / "empty"]) is None


def test_a_resumed_stage_does_not_read_its_init_from_again(tmp_path, cache, trained, monkeypatch):
    """Stage 2 starts from stage 1's weights (init_from); resumed, it restores its own checkpoint and needs the
    stage-1 file no more (Lightning runs setup, where init_from is applied, before restoring a checkpoint)."""
    stage1 = tmp_path / "stage1.ckpt"
    shutil.copy(trained, stage1)
    stage2 = tmp_path / "stage2"
    fit(stage2, cache, "--trainer.max_steps", "2", "--model.init_args.init_from", str(stage1), monkeypatch=monkeypatch)
    stage1.unlink()  # moved or cleaned up after stage 2 started
    cli = fit(stage2, cache, "--trainer.max_steps", "3", "--model.init_args.init_from", str(stage1),
              "--ckpt_path", "last", monkeypatch=monkeypatch)  # fmt: skip
    assert cli.trainer.global_step == 3
