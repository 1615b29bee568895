"""The throughput callback (tokens/s; MFU from the objective's FLOPs and the peak) and the XLA CPU accelerator."""

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger

import zoo.training.throughput
from tests.helpers import tiny_backbone
from zoo.objectives import CausalLM
from zoo.training.throughput import TokenThroughput


class _Recorder(Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    name, version = "recorder", 0

    def log_metrics(self, metrics, step=None):
        self.rows.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class _Data(L.LightningDataModule):
    seq_len, vocab_size, batch_size = 16, 64, 2

    def train_dataloader(self):
        ids = torch.randint(0, 64, (16, self.seq_len))
        return torch.utils.data.DataLoader([{"input_ids": r, "labels": r} for r in ids], batch_size=self.batch_size)


def test_tokens_per_second_and_mfu_are_logged_from_the_model_flops(tmp_path):
    model, logger = CausalLM(backbone=tiny_backbone()), _Recorder()
    trainer = L.Trainer(
        max_steps=6, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, log_every_n_steps=1,
        callbacks=[TokenThroughput(window_size=2, available_flops=1e12)],
    )  # fmt: skip
    trainer.fit(model, datamodule=_Data())
    rows = [r for r in logger.rows if "train/device/tokens_per_sec" in r]
    assert rows, f"no throughput logged; keys seen: {sorted({k for r in logger.rows for k in r})}"
    last = rows[-1]
    assert last["train/device/tokens_per_sec"] > 0
    # MFU = FLOP/s ÷ peak, and FLOP/s ÷ tokens/s = FLOPs per token: a fixed ratio whatever the speed
    per_token = model.backbone.flops_per_token(16)
    assert last["train/device/mfu"] / last["train/device/tokens_per_sec"] == pytest.approx(per_token / 1e12)


def test_peak_flops_uses_the_override_then_the_table_and_none_for_an_xla_device_off_tpu(monkeypatch):
    calls = []

    def lookup(device, dtype):
        calls.append(device.type)
        return 7.0

    assert TokenThroughput(available_flops=3e12).peak_flops(torch.device("cpu"), torch.float32, lookup) == 3e12
    assert calls == []  # the override answers without Lightning's table
    assert TokenThroughput().peak_flops(torch.device("cpu"), torch.float32, lookup) == 7.0
    monkeypatch.setattr(zoo.training.throughput, "_xla_on_tpu", lambda: False)
    assert TokenThroughput().peak_flops(torch.device("xla"), torch.float32, lookup) is None
    monkeypatch.setattr(zoo.training.throughput, "_xla_on_tpu", lambda: True)
    assert TokenThroughput().peak_flops(torch.device("xla"), torch.float32, lookup) == 7.0
    assert calls == ["cpu", "xla"]


# ---- torch_xla's CPU device as an accelerator (zoo.training.accelerators) --------------------------------------------
def test_xla_cpu_accelerator_names_what_it_needs(monkeypatch):
    from zoo.training.accelerators import XLACPUAccelerator

    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    assert not XLACPUAccelerator.is_available()
    with pytest.raises(RuntimeError, match="PJRT_DEVICE=CPU"):
        XLACPUAccelerator()
    with pytest.raises(ValueError, match="trainer.devices=2"):
        XLACPUAccelerator.parse_devices(2)
    assert XLACPUAccelerator.parse_devices("auto") == 1 and XLACPUAccelerator.auto_device_count() == 1
