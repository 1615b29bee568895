"""The global random generators, saved in every checkpoint and restored at the first resumed training step."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor


class RandomState(Callback):
    """Saves the global random generators (torch CPU and CUDA, Python, NumPy) in every checkpoint and restores
    them right before the first resumed training step, so objectives that draw random numbers while training
    (masked diffusion's noise levels and masks, dropout) continue exactly as the uninterrupted run would.
    Lightning saves no random state itself. Restoring happens at the first training batch rather than at load
    time because starting the data loader draws from the generator in between. The CUDA state saved is that of
    the process's own device. Under DDP every rank restores rank 0's states (its CPU generator's and its device's,
    into the rank's own device): every rank starts from the same ``seed_everything`` seed and draws the same
    amount, so rank 0's generators stand for every rank's."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict[str, Any]:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # as plain values: checkpoints load weights_only
        numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip
        state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # the current device's: rank r draws on cuda:r
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict or None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        import numpy as np

        torch.set_rng_state(state["torch"])
        version, internal, gauss = state["python"]  # a checkpoint round trip may turn tuples into lists
        random.setstate((version, tuple(internal), gauss))
        saved = state["numpy"]
        if isinstance(saved, dict):
            keys = saved["keys"].numpy().astype(np.uint32)
            np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["gauss"]))
        else:  # NumPy's own tuple, in a trusted checkpoint that is not weights-only
            np.random.set_state(saved)
        if isinstance(state.get("cuda"), Tensor) and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])  # into the current device
