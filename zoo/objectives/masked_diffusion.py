"""``MaskedDiffusionLM``: masked (absorbing-state) discrete diffusion, as MDLM and LLaDA train it.

Each sequence draws a noise level ``t ~ U(ε, 1)``; every token is replaced by the mask token with probability
``t``; a bidirectional backbone predicts the originals, and the loss is the cross-entropy on masked positions
weighted by ``1/t`` — an upper bound on the negative log-likelihood (the ELBO), per token::

    tokens      The  cat  sat  on   the  mat          attention: every position sees every position
    noisy (t)   The  [M]  sat  [M]  [M]  mat          ┌──────────┐
    loss            CE/t      CE/t CE/t               │ all True │  (T × T)
                                                      └──────────┘

Converting an autoregressive model (the Dhara recipe) starts from its weights (``init_from``) and eases the
attention from causal to bidirectional with a :class:`ConversionSchedule` (see :mod:`zoo.objectives.conversion`).
Positions whose label is ``-100`` (an SFT prompt) are never masked and never scored: the loss covers the
response only, as in LLaDA's SFT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.objectives.base import LanguageModel
from zoo.objectives.conversion import ConversionSchedule


class MaskedDiffusionLM(LanguageModel):
    """Identical to :class:`LanguageModel` except the loss: masked-diffusion cross-entropy weighted by ``1/t``.
    Validation reports the negative ELBO per token (``val/loss``) and its exponential, a perplexity bound.

    Args:
        backbone, optimizer, schedule, compile: as :class:`LanguageModel`. Its attention is made bidirectional
            whatever its ``causal`` setting, so an AR model's config (``configs/models/*.yaml``) serves unchanged.
        mask_id: the mask token: an existing id (Dhara reuses GPT-2's 50256) or ``None`` for a dedicated id equal
            to the tokenizer's vocabulary size, which must then be below ``backbone.vocab_size``.
        eps: smallest noise level, so ``1/t`` stays bounded.
        antithetic: draw the batch's noise levels stratified over ``(eps, 1)`` (one per stratum, shared random
            offset), which lowers the variance of the loss.
        shift: keep the autoregressive shift: the logits at position ``i`` predict token ``i+1`` (DiffuLLaMA,
            Dream), so an AR model's head is reused as trained; without it position ``i`` predicts token ``i``.
        init_from: a checkpoint of ``python -m zoo fit`` (an AR model) whose backbone weights start this run; the
            architectures must match, except the attention's causality.
        conversion: how the run moves from causal to bidirectional attention (``None``: bidirectional from the
            first step).
        val_seed: seed of the noise used in validation, so validation losses are comparable between evaluations.
    """

    def __init__(
        self,
        *,
        mask_id: int | None = None,
        eps: float = 1e-3,
        antithetic: bool = True,
        shift: bool = False,
        init_from: str | None = None,
        conversion: ConversionSchedule | None = None,
        val_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for block in self.backbone.blocks:  # the same blocks as the AR model; only the attention's causality changes
            if not hasattr(block.attention, "causal"):
                raise ValueError(f"{type(block.attention).__name__} has no `causal` switch to make it bidirectional")
            block.attention.causal = False
        if not 0 < eps < 1:
            raise ValueError(f"MaskedDiffusionLM eps={eps} must be in (0, 1), e.g. 1e-3")
        if mask_id is not None and not 0 <= mask_id < self.backbone.vocab_size:
            raise ValueError(
                f"MaskedDiffusionLM mask_id={mask_id} is outside the model's vocabulary [0, "
                f"{self.backbone.vocab_size}): choose an id below backbone.vocab_size, or null for a dedicated id"
            )
        self.mask_id, self.eps, self.antithetic, self.shift = mask_id, eps, antithetic, shift
        self.conversion, self.val_seed = conversion, val_seed
        if init_from is not None:
            self.load_backbone(init_from)

    # ---- conversion from an AR checkpoint --------------------------------------------------------------------
    def load_backbone(self, path: str) -> None:
        """Copy the backbone weights of checkpoint ``path`` exactly; a mismatched architecture is refused with
        the differing parameters named. The one allowed difference: a larger vocabulary (room for a dedicated mask
        token), whose extra embedding and head rows start at the mean of the trained rows."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        source = {k[len("backbone.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
        target = self.backbone.state_dict()
        for name in ("embed.weight", "head.weight"):
            old, new = source.get(name), target.get(name)
            if old is not None and new is not None and old.shape[1:] == new.shape[1:] and len(old) < len(new):
                grown = old.mean(dim=0, keepdim=True).expand(len(new) - len(old), -1)
                source[name] = torch.cat([old, grown.to(old.dtype)])
        missing = sorted(set(target) - set(source))
        extra = sorted(set(source) - set(target))
        shapes = [f"{k}: {tuple(source[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
                  if k in source and source[k].shape != v.shape]  # fmt: skip
        if missing or extra or shapes:
            raise ValueError(
                f"init_from={path} does not match this backbone: missing {missing[:5]}, unexpected {extra[:5]}, "
                f"shapes (checkpoint vs model) {shapes[:5]}: build the same architecture as the checkpoint (only "
                "attention.causal and a larger vocab_size may differ)"
            )
        self.backbone.load_state_dict(source)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        vocab = getattr(datamodule, "vocab_size", None)
        if self.mask_id is None:
            if vocab is None:
                raise ValueError("MaskedDiffusionLM mask_id=null needs the data module's vocabulary: set mask_id")
            if vocab >= self.backbone.vocab_size:
                raise ValueError(
                    f"MaskedDiffusionLM mask_id=null needs an id after the tokenizer's {vocab} tokens, but "
                    f"backbone.vocab_size={self.backbone.vocab_size}: raise backbone.vocab_size to {vocab + 1} or "
                    "reuse an existing id as mask_id (e.g. the end-of-text id, as Dhara does)"
                )
            self.mask_id = vocab
            self.hparams["mask_id"] = vocab  # saved, so sampling from the checkpoint knows it

    # ---- the objective -----------------------------------------------------------------------------------------
    def sample_t(self, batch_size: int, *, device, generator: torch.Generator | None = None) -> Tensor:  # (B,)
        u = torch.rand(batch_size, device=device, generator=generator)
        if self.antithetic:  # one draw per stratum [i/B, (i+1)/B), all sharing one offset
            u = (torch.arange(batch_size, device=device) + u[:1]) / batch_size
        return self.eps + (1 - self.eps) * u

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        input_ids, labels = batch["input_ids"], batch["labels"]  # (B, T)
        B, T = input_ids.shape
        scored = labels != -100  # prompt tokens (SFT) are neither masked nor scored
        if self.shift:
            scored[:, 0] = False  # position 0 has no previous position to predict it
        t = self.sample_t(B, device=input_ids.device, generator=generator)  # (B,)
        draw = torch.rand(B, T, device=input_ids.device, generator=generator)
        masked = (draw < t[:, None]) & scored  # (B, T)
        noisy = torch.where(masked, torch.full_like(input_ids, self.mask_id), input_ids)
        step = self.global_step if self._trainer is not None else 0
        plan = self.conversion.plan(step, T, device=input_ids.device, generator=generator) if self.conversion else None
        if plan is not None and plan.clean_context:  # block diffusion: each block sees clean earlier blocks
            both = torch.cat([noisy, input_ids], dim=1)  # (B, 2T)
            positions = torch.arange(T, device=input_ids.device).repeat(2)
            logits = self.backbone(both, mask=plan.mask, positions=positions)[:, :T]  # (B, T, V)
        else:
            logits = self.backbone(noisy, mask=plan.mask if plan is not None else None)  # (B, T, V)
        if self.shift:  # logits at i predict token i+1
            logits, targets, weights_mask = logits[:, :-1], labels[:, 1:], masked[:, 1:]
        else:
            targets, weights_mask = labels, masked
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view_as(targets)
        weighted = (ce * weights_mask / t[:, None]).sum()
        n_tokens = scored.sum()
        return weighted / n_tokens.clamp(min=1), n_tokens

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator(device=batch["input_ids"].device).manual_seed(self.val_seed + batch_idx)
        loss, n_tokens = self.loss(batch, generator=generator)
        self.val_loss.update(loss, weight=n_tokens)
