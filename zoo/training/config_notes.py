"""``config.yaml`` with notes: Lightning's config writer, with lines that explain a value (e.g. why
``trainer.precision`` has the value it has) written as comments at the top of the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback


class SaveConfigWithNotes(SaveConfigCallback):
    """Lightning's ``config.yaml`` writer, with ``notes`` (e.g. why ``trainer.precision`` has its value) written
    as comment lines at the top of the file: visible to a reader, ignored by a rerun with ``--config config.yaml``.

    Args:
        notes: one line each, without the leading ``#``.
    """

    def __init__(self, *args: Any, notes: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notes = list(notes or [])

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0 under DDP, so every rank asks for it here; save_config runs on
        # rank 0 alone, where asking would leave the other ranks at a different collective (a hang)
        self._log_dir = trainer.log_dir if self.save_to_log_dir and not self.already_saved else None
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not (self.notes and self._log_dir):
            return
        path = Path(self._log_dir) / self.config_filename
        if path.is_file():
            path.write_text("".join(f"# {note}\n" for note in self.notes) + path.read_text())
