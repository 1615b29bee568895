"""torch_xla's CPU device as a Lightning accelerator: the XLA code path (lazy tensors, graph compilation,
``SingleDeviceXLAStrategy``'s optimizer step) run on an ordinary machine, to try a TPU configuration before
the TPU. Select it with ``--config configs/trainer/xla-cpu.yaml`` and ``PJRT_DEVICE=CPU`` in the environment.

Why a class of its own: Lightning's ``XLAAccelerator`` counts devices through torch_xla's TPU helpers, which ask
the TPU VM's metadata server for the chip type, so on any other machine it reports no device (or fails with a
connection error). This one answers from torch_xla's runtime instead; the rest is Lightning's.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from lightning.pytorch.accelerators import XLAAccelerator


class XLACPUAccelerator(XLAAccelerator):
    """Identical to Lightning's ``XLAAccelerator`` except that it runs on torch_xla's CPU device (one device)."""

    def __init__(self) -> None:
        if os.environ.get("PJRT_DEVICE") != "CPU":
            raise RuntimeError(
                f"XLACPUAccelerator needs torch_xla's CPU runtime, but PJRT_DEVICE={os.environ.get('PJRT_DEVICE')!r}: "
                "run with PJRT_DEVICE=CPU in the environment"
            )
        super().__init__()  # raises Lightning's own error, with the install hint, when torch_xla is missing

    @staticmethod
    def is_available() -> bool:
        return os.environ.get("PJRT_DEVICE") == "CPU" and importlib.util.find_spec("torch_xla") is not None

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def parse_devices(devices) -> int:
        if devices not in (1, "1", "auto", -1, "-1"):
            raise ValueError(f"XLACPUAccelerator runs on one device, but trainer.devices={devices!r}: set it to 1")
        return 1

    @staticmethod
    def get_parallel_devices(devices) -> list[torch.device]:
        import torch_xla

        return [torch_xla.device()]
