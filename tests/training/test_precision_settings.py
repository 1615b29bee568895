"""Lightning's precision settings on a tiny causal LM (CPU): a few optimizer steps train and stay finite, the
weights have the dtype the setting promises, and the numerically sensitive parts stay in fp32."""

import functools

import lightning as L
import pytest
import torch

from tests.helpers import tiny_backbone
from zoo.objectives import CausalLM
from zoo.optim import MuonWithAdamW


class _Batches(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (4, 17), generator=g)  # one batch of 4 sequences, repeated

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i % 4], "labels": self.ids[i % 4]}


def _fit(precision: str, optimizer=torch.optim.AdamW, steps: int = 8) -> tuple[CausalLM, list[float]]:
    model = CausalLM(backbone=tiny_backbone(), optimizer=functools.partial(optimizer, lr=1e-2))
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader(_Batches(), batch_size=4))
    return model, losses


@pytest.mark.parametrize(
    ("precision", "weights"),
    [("32-true", torch.float32), ("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)],
)
def test_few_steps_train_under_each_precision(precision, weights):
    model, losses = _fit(precision)
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.3, losses  # the same batch: the loss goes down
    assert {p.dtype for p in model.parameters()} == {weights}


def test_bf16_true_keeps_rope_and_norm_statistics_in_fp32():
    backbone = tiny_backbone().to(torch.bfloat16)  # what Lightning's bf16-true does to the module
    cos, sin = backbone.position.rotary(torch.arange(64))
    assert cos.dtype == sin.dtype == torch.float32  # angles are computed in fp32 from the positions
    reference = tiny_backbone().position.rotary(torch.arange(64))
    torch.testing.assert_close((cos, sin), reference, rtol=0, atol=5e-2)
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16) * 100
    out = backbone.norm(x)
    expected = torch.nn.functional.rms_norm(x.float(), (32,), backbone.norm.weight.float(), backbone.norm.eps)
    torch.testing.assert_close(out, expected.bfloat16())  # statistics in fp32, then rounded once


def test_muon_trains_under_bf16_true():
    model, losses = _fit("bf16-true", optimizer=functools.partial(MuonWithAdamW, adamw_lr=1e-2))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.3, losses
