"""Faults around the save itself: a SIGKILL while last.ckpt is being written, a full disk during a save, and a
checkpoint folder that cannot be written. Nothing already saved is lost, and resuming continues exactly."""

import errno
import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import callback, finish, fit, losses, zoo_process
from zoo.training.checkpoints import CheckpointWriteError, check_writable, remove_torn_files


class KillWhileSaving(L.Callback):
    """SIGKILLs the process in the middle of writing the checkpoint of step ``step``: half of the file's bytes are
    on disk (flushed and fsynced) when the process dies."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_fit_start(self, trainer, pl_module) -> None:
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if trainer.global_step == self.step and str(getattr(f, "name", "")).endswith(".tmp"):
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save  # this process dies with it


def test_sigkill_while_last_ckpt_is_written_keeps_the_previous_file(tmp_path, cache, monkeypatch):
    """Saves every 2 steps; killed while writing step 4's last.ckpt. The step-2 file is intact, the torn temporary
    file is ignored by `--ckpt_path last` and removed; the resumed steps 3 and 4 have the killed run's losses."""
    root, log = tmp_path / "run", tmp_path / "losses.txt"
    common = ["--trainer.max_steps", "6", "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "0"]
    kill = callback(KillWhileSaving, step=4)
    code, out = finish(zoo_process(*common, "--trainer.default_root_dir", str(root), callback("LossLog", path=str(log)),
                                   kill, cache=cache))  # fmt: skip
    assert code == -signal.SIGKILL, out
    folder = root / "lightning_logs" / "version_0" / "checkpoints"
    torn = [p for p in folder.iterdir() if p.name != "last.ckpt"]
    assert [re.match(r"\.last\.ckpt\.\d+\.tmp$", p.name) is not None for p in torn] == [True]
    assert torn[0].stat().st_size > 0  # half a checkpoint reached the disk
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2
    killed = losses(log)
    assert sorted(killed) == [1, 2, 3, 4]

    with pytest.warns(UserWarning, match=f"removed {re.escape(str(torn[0]))}: a checkpoint save cut short"):
        cli = fit(root, cache, *common, callback("LossLog", path=str(tmp_path / "resumed.txt")), "--ckpt_path", "last",
                  monkeypatch=monkeypatch)  # fmt: skip
    assert cli.trainer.ckpt_path == str(folder / "last.ckpt")
    assert not torn[0].exists()
    resumed = losses(tmp_path / "resumed.txt")
    assert sorted(resumed) == [3, 4, 5, 6]
    assert {s: resumed[s] for s in (3, 4)} == {s: killed[s] for s in (3, 4)}
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2  # untouched
    assert torch.load(root / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)["global_step"] == 6  # fmt: skip


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_stops(tmp_path, cache, monkeypatch):
    """The third save fails with ENOSPC after writing part of its bytes: the run stops with the path and the free
    space named, the step-2 last.ckpt is intact and no partial file is left."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(getattr(f, "name", f))
        if len(calls) == 3:
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    last = folder / "last.ckpt"
    with pytest.raises(CheckpointWriteError) as err:
        fit(tmp_path, cache, "--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "1",
            "--checkpoint.save_top_k", "0", callback("LossLog", path=str(tmp_path / "losses.txt")),
            monkeypatch=monkeypatch)  # fmt: skip
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert f"could not write checkpoint {last}: no space left on the device" in message
    assert re.search(rf"\d+(\.\d)? (B|KiB|MiB|GiB) free in {re.escape(str(folder))}", message)
    assert "the previous last.ckpt is intact" in message and "--ckpt_path last" in message
    assert sorted(losses(tmp_path / "losses.txt")) == [1, 2, 3]  # stopped at the failed save, step 3
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2


def test_an_unwritable_checkpoint_folder_is_refused_before_training(tmp_path, cache, monkeypatch):
    """Tests run as root, where permission bits do not stop writes: the folder is placed under a regular file, which
    no user can create a folder in."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CheckpointWriteError, match=f"checkpoint folder {blocker / 'ckpts'} is not writable "
                       r"\(Not a directory\).*--checkpoint.dirpath"):  # fmt: skip
        fit(tmp_path, cache, "--trainer.max_steps", "2", "--checkpoint.dirpath", str(blocker / "ckpts"),
            callback("LossLog", path=str(tmp_path / "losses.txt")), monkeypatch=monkeypatch)  # fmt: skip
    assert not (tmp_path / "losses.txt").exists()  # not one step trained


def test_a_read_only_mount_is_refused(tmp_path):
    """A read-only bind mount (in a private user and mount namespace, so it needs no privileges): the write probe
    gets EROFS, which permission bits cannot fake."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    folder = tmp_path / "ro"
    folder.mkdir()
    probe = f"import pathlib, zoo.training.checkpoints as c; c.check_writable(pathlib.Path('{folder}'))"
    script = f'mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} && exec "$0" -c "{probe}"'
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, sys.executable],
                            capture_output=True, text=True, env=env)  # fmt: skip
    if "mount" in result.stderr and "Traceback" not in result.stderr:
        pytest.skip(f"no user namespaces here: {result.stderr.strip()}")
    assert result.returncode == 1, result.stderr
    assert f"CheckpointWriteError: [Errno {errno.EROFS}] checkpoint folder {folder} is not writable (Read-only file " \
        "system)" in result.stderr  # fmt: skip
    check_writable(folder)  # outside the namespace the same folder takes files: the mount made the difference
    assert list(folder.iterdir()) == []  # the probe file is removed


def test_torn_files_of_a_running_process_are_kept(tmp_path):
    ours = tmp_path / f".last.ckpt.{os.getpid()}.tmp"  # a save in progress in this very process
    dead = tmp_path / ".last.ckpt.999999999.tmp"  # above any process id Linux gives out
    other = tmp_path / ".notes.txt.1.tmp"
    for path in (ours, dead, other):
        path.write_bytes(b"x")
    assert remove_torn_files(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours.name, other.name])


def test_a_full_disk_reported_by_torch_as_its_writer_error_is_named(tmp_path, monkeypatch):
    """torch.save turns the file's ENOSPC into `RuntimeError: [enforce fail at inline_container.cc:…] . unexpected
    pos …` (the OSError only as its context): still a full disk, named as such, the previous file intact."""
    from zoo.training import checkpoints

    last = tmp_path / "last.ckpt"
    checkpoints.atomic_save({"global_step": 2, "w": torch.ones(10)}, last)

    class FullDisk(io.FileIO):
        def write(self, data):  # the disk fills up after 1000 bytes of the new file
            if self.tell() + len(data) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(checkpoints, "open", FullDisk, raising=False)  # atomic_save's open of its temporary file
    with pytest.raises(RuntimeError, match="unexpected pos"):  # what torch itself makes of it
        torch.save({"w": torch.ones(10_000)}, FullDisk(tmp_path / "probe", "wb"))
    with pytest.raises(CheckpointWriteError) as err:
        checkpoints.atomic_save({"global_step": 3, "w": torch.ones(10_000)}, last)
    assert err.value.errno == errno.ENOSPC
    assert isinstance(err.value.__cause__, RuntimeError) and "inline_container" in str(err.value.__cause__)
    assert re.search(rf"no space left on the device \(\d+(\.\d)? (B|KiB|MiB|GiB) free in {re.escape(str(tmp_path))}; "
                     r"the previous last.ckpt is intact\)", str(err.value))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "probe"]  # no temporary file left
    assert torch.load(last, weights_only=True)["global_step"] == 2
