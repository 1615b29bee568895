"""Token throughput and MFU: Lightning's ``ThroughputMonitor`` told how to count a zoo batch."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from zoo import compat


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
        # Lightning's setup reads the device's peak from its table through `get_available_flops`, which for any
        # XLA device asks the TPU VM's metadata server (a connection error elsewhere: torch_xla's CPU or GPU
        # devices). The override answers instead when given, and a non-TPU XLA device has no known peak.
        with compat.peak_flops_lookup(self.peak_flops):
            super().setup(trainer, pl_module, stage)
        for throughput in compat.stage_throughputs(self).values():
            throughput.compute = _tokens_named(throughput.compute)

    def peak_flops(self, device: torch.device, dtype: torch.dtype, lookup) -> float | None:
        """Peak FLOP/s of one device: ``available_flops`` when given, else Lightning's table (``lookup``); ``None``
        (no MFU) for an XLA device that is not a TPU."""
        if self.flops_override is not None:
            return self.flops_override
        if device.type == "xla" and not _xla_on_tpu():
            return None
        return lookup(device, dtype)


def _xla_on_tpu() -> bool:
    import torch_xla.runtime as xr  # only reached with an XLA device, so torch_xla is installed

    return xr.device_type() == "TPU"


def _tokens_named(compute):
    """Lightning counts a batch's length in generic "items"; here an item is a token, so say so in the logs."""

    def renamed() -> dict:
        return {k.replace("items", "tokens").replace("lengths", "tokens"): v for k, v in compute().items()}

    return renamed
