"""Gradient clipping with every optimizer zoo builds (fused AdamW, foreach AdamW, Muon + AdamW) under each
precision: it runs, the logged ``train/grad_norm`` is the non-fused optimizer's, and the gradients the optimizer
steps with have the clipped norm (with a gradient scaler, unscaled before they are measured and clipped)."""

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from tests.helpers import tiny_backbone
from zoo.objectives import CausalLM
from zoo.optim import MuonWithAdamW
from zoo.training.precision import install_precision

CLIP = 0.5  # below the gradient norms of these steps, so every step is clipped


class _Batches(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.ids = torch.randint(0, 64, (8, 17), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class _Record(L.Callback):
    """The logged norm (before clipping) and the norm of the gradients the optimizer stepped with (after)."""

    def __init__(self) -> None:
        self.logged, self.stepped = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.logged.append(float(trainer.callback_metrics["train/grad_norm"]))
        grads = [p.grad.float() for p in module.parameters() if p.grad is not None]
        self.stepped.append(float(torch.nn.utils.get_total_norm(grads)))


def _fit(precision: str, optimizer, steps: int = 3, *, install: bool = True) -> _Record:
    torch.manual_seed(0)
    model = CausalLM(backbone=tiny_backbone(), optimizer=optimizer)
    record = _Record()
    if precision == "16-mixed":  # Lightning turns 16-mixed into bf16-mixed on a CPU: its plugin keeps the scaler
        settings = {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))]}
    else:
        settings = {"precision": precision}
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, gradient_clip_val=CLIP, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[record], **settings,
    )  # fmt: skip
    if install:
        install_precision(trainer)  # as zoo fit does
    trainer.fit(model, torch.utils.data.DataLoader(_Batches(), batch_size=2))
    if precision == "16-mixed":
        assert trainer.precision_plugin.scaler is not None
    return record


def _adamw(**kwargs):
    return functools.partial(torch.optim.AdamW, lr=1e-2, **kwargs)


def _muon(**kwargs):
    return functools.partial(MuonWithAdamW, lr=0.02, adamw_lr=1e-2, **kwargs)


PRECISIONS = ["32-true", "bf16-mixed", "bf16-true", "16-mixed"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("make", [_adamw, _muon], ids=["adamw", "muon+adamw"])
def test_fused_clips_and_logs_the_norm_of_the_non_fused_optimizer(precision, make):
    fused = _fit(precision, make(fused=True))
    plain = _fit(precision, make(fused=False) if make is _muon else make(foreach=True))
    assert len(fused.logged) == len(plain.logged) == 3
    assert all(torch.isfinite(torch.tensor(fused.logged)))
    # the same first batch and weights: the same gradients, whichever kernel steps with them
    assert fused.logged[0] == pytest.approx(plain.logged[0], rel=1e-3)
    # the kernels round differently, so later steps agree to the precision's resolution
    tolerance = 5e-2 if "bf16" in precision or precision == "16-mixed" else 1e-3
    assert fused.logged == pytest.approx(plain.logged, rel=tolerance)
    assert min(fused.logged) > CLIP  # every step was clipped ...
    assert fused.stepped == pytest.approx([CLIP] * 3, rel=2e-2)  # ... to the clipping norm, in true (unscaled) units


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_lightnings_own_plugin_refuses_to_clip_fused_adamw(precision):
    """What zoo's plugin is for: without it, Lightning stops at the first step of a fused optimizer it would clip."""
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping.*fused"):
        _fit(precision, _adamw(fused=True), install=False)
