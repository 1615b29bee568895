"""What a run shows on the console: a model summary with zoo's own size and FLOPs figures, a progress bar that
counts optimizer steps against ``max_steps``, and no repeated warnings from dependencies that a user cannot act on.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

from zoo import compat

# Deprecation notices raised inside Lightning and torchdata on every validation, about calls zoo does not make:
# matched by their exact text, so any other warning of the same modules still shows.
DEPENDENCY_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # lightning's pytree helper, torch ≥ 2.10
    r"'set_vital' is deprecated",  # torchdata's StatefulDataLoader
    # the summary's size column under bf16-mixed, where the weights it sizes are fp32, the 32 bits it falls back to
    r"Precision bf16-mixed is not supported by the model summary",
)
# Lightning's advertisement for its hosted logger, printed at every fit: matched by its opening words
DEPENDENCY_NOTICES = ("💡 Tip: For seamless cloud logging",)


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(DEPENDENCY_NOTICES)


def quiet_dependency_warnings() -> None:
    """Silence :data:`DEPENDENCY_WARNINGS` and :data:`DEPENDENCY_NOTICES` (and nothing else) for this process."""
    for message in DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):  # rank_zero_info's
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices())


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar counting optimizer steps of ``trainer.max_steps`` (``step 120/600``) instead of
    batches of an epoch: zoo's data streams have no epochs, and Lightning's bar would read ``Epoch 0/-2``."""

    @property
    def train_description(self) -> str:
        return "step"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # a run resumed within its (only) epoch gets no on_train_epoch_start from Lightning: the bar is set here too,
        # so that it reads `step: 40/60` rather than `0/?`
        if trainer.max_steps > 0:
            self._count_steps(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if trainer.max_steps <= 0:  # a run bounded by epochs: Lightning's bar
            return super().on_train_epoch_start(trainer)
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self._count_steps(trainer)

    def _count_steps(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = trainer.global_step  # a resumed run starts where it stopped
        bar.set_description(self.train_description)  # and shows it

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))


class BackboneSummary(ModelSummary):
    """Lightning's model summary, whose last line (``Total Flops``, 0 without an example input) is replaced by the
    backbone's own figures: parameters with and without embeddings, active parameters of routed models, and
    training FLOPs per token at the run's sequence length (``Transformer.flops_per_token``)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lines: list[str] = []
        backbone = getattr(pl_module, "backbone", None)
        if backbone is not None and hasattr(backbone, "flops_per_token"):
            seq_len = getattr(trainer.datamodule, "seq_len", None) or backbone.max_seq_len
            inactive = backbone.inactive_parameters()
            self._lines = [
                f"{get_human_readable_count(backbone.num_parameters(embeddings=False)):<10}Non-embedding params",
                *([f"{get_human_readable_count(backbone.num_parameters() - inactive):<10}Active params per token"]
                  if inactive else []),  # fmt: skip
                f"{backbone.flops_per_token(seq_len):<10.3e}Training FLOPs per token (context {seq_len})",
            ]
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **kwargs) -> None:  # fmt: skip
        summary_data = [column for column in summary_data if column[0] != "FLOPs"]  # 0s without an example input
        table = compat.format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *summary_data)  # fmt: skip
        lines = table.split("\n")
        if self._lines and lines[-1].endswith("Total Flops"):
            lines = lines[:-1] + self._lines
        rank_zero_info("\n" + "\n".join(lines))
