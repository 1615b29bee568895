"""Callbacks that ``python -m zoo fit`` adds to every run."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


def _rows(batch: dict) -> int:
    return batch["input_ids"].shape[0]


def _tokens(batch: dict) -> int:
    return batch["input_ids"].numel()


class TokenThroughput(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` told how to count a zoo batch.

    Logs ``train/device/tokens_per_sec`` and ``…/samples_per_sec`` (all-device figures too when several
    devices train), and ``train/device/mfu`` when the accelerator's peak FLOP/s is known (Lightning's table,
    or ``available_flops``), from the objective's ``flops_per_batch``.

    Args:
        window_size: batches averaged for each figure.
        available_flops: peak FLOP/s of one device, overriding Lightning's table (needed for MFU on CPUs).
    """

    def __init__(self, *, window_size: int = 20, available_flops: float | None = None) -> None:
        super().__init__(batch_size_fn=_rows, length_fn=_tokens, window_size=window_size)
        self.flops_override = available_flops

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for throughput in self._throughputs.values():
            if self.flops_override is not None:  # Lightning reads the peak from its device table; replace it
                throughput.available_flops = self.flops_override
            throughput.compute = _tokens_named(throughput.compute)


def _tokens_named(compute):
    """Lightning counts a batch's length in generic "items"; here an item is a token, so say so in the logs."""

    def renamed() -> dict:
        return {k.replace("items", "tokens").replace("lengths", "tokens"): v for k, v in compute().items()}

    return renamed
