"""``MaskedDiffusionLM``: masked (absorbing-state) discrete diffusion, as MDLM and LLaDA train it.

Each sequence draws a noise level ``t ~ U(ε, 1)`` (stratified across the batch); every token is replaced by the
mask token with probability ``t``; a bidirectional backbone predicts the originals, and the loss is the
cross-entropy on masked positions weighted by ``1/t``, summed over the batch and divided by its number of tokens —
the negative ELBO per token, an upper bound on the negative log-likelihood::

    tokens      The  cat  sat  on   the  mat         attention mask (queries ↓, keys →), ■ may attend · may not
    noisy (t)   The  [M]  sat  [M]  [M]  mat
    loss             CE/t      CE/t CE/t              masked diffusion      causal (AR, for contrast)
                                                      ■ ■ ■ ■ ■ ■           ■ · · · · ·
    SFT, labels −100 on the prompt:                   ■ ■ ■ ■ ■ ■           ■ ■ · · · ·
    tokens      Q:  2+2  A:  │ 4    .                 ■ ■ ■ ■ ■ ■           ■ ■ ■ · · ·
    noisy (t)   Q:  2+2  A:  │ [M]  .                 ■ ■ ■ ■ ■ ■           ■ ■ ■ ■ · ·
    loss                     │ CE/t                   ■ ■ ■ ■ ■ ■           ■ ■ ■ ■ ■ ·
                (never masked, never scored)          ■ ■ ■ ■ ■ ■           ■ ■ ■ ■ ■ ■

Converting an autoregressive model (DiffuLLaMA, Dream, LLaDA 2.0, Dhara) starts from its weights (``init_from``)
and may ease the attention from causal to bidirectional with a :class:`~zoo.objectives.conversion.ConversionSchedule`
(``conversion``) and keep the AR shift (``shift``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.compat import attached_trainer
from zoo.nn.masks import document_mask
from zoo.objectives.base import LanguageModel
from zoo.objectives.conversion import ConversionSchedule
from zoo.objectives.description import ModelDescription, ModelKind, Scoring
from zoo.objectives.samplers import MASKED_DIFFUSION


class MaskedDiffusionLM(LanguageModel):
    """Identical to :class:`LanguageModel` except the loss: masked-diffusion cross-entropy weighted by ``1/t``, with
    bidirectional attention. Validation reports the negative ELBO per token (``val/loss``) and its exponential, a
    bound on the perplexity (``val/ppl``), with fixed noise (``val_seed``) and without the conversion schedule, so
    evaluations compare across the run and with an AR model's ``val/loss``.

    SFT: a data module that sets ``labels`` to ``-100`` on prompt tokens gets LLaDA's SFT objective — the prompt is
    never masked and the loss (and its token count) covers the response only.

    Args:
        backbone, optimizer, schedule, compile: as :class:`LanguageModel`. The attention must be bidirectional
            (``attention.causal: false``); a causal one is refused, except when converting (``init_from`` or
            ``conversion`` set), where it is switched to bidirectional so an AR model's config serves unchanged.
        mask_id: the mask token: an existing id (Dhara reuses GPT-2's end-of-text 50256) or ``None`` for a
            dedicated id equal to the tokenizer's vocabulary size, which must then be below ``backbone.vocab_size``
            (checked against the data module when training starts).
        eps: smallest noise level ε, so the weight ``1/t`` stays bounded (MDLM, LLaDA: 1e-3).
        antithetic: draw the batch's noise levels stratified over ``(ε, 1)`` — one per stratum ``[i/B, (i+1)/B)``,
            sharing one uniform offset (low-discrepancy sampling) — which lowers the variance of the loss.
        shift: keep the autoregressive shift: the logits at position ``i`` predict token ``i+1`` (DiffuLLaMA,
            Dream), so an AR model's head keeps its job; the first token is then never masked. Without it position
            ``i`` predicts token ``i`` (LLaDA, MDLM). Not supported with block-diffusion schedules.
        init_from: as :class:`LanguageModel`, typically a ``CausalLM`` checkpoint being converted; the vocabulary
            may grow by the dedicated mask token's row (started at the mean of the trained rows).
        conversion: how training moves from causal to bidirectional attention: ``AttentionAnnealing`` (DiffuLLaMA)
            or ``BlockWarmupStableDecay`` (LLaDA 2.0); ``None`` = bidirectional masked diffusion from the first step.
        val_seed: seed of the noise in validation (one generator per batch, seeded ``val_seed + batch_idx``).
    """

    def __init__(
        self,
        *,
        mask_id: int | None = None,
        eps: float = 1e-3,
        antithetic: bool = True,
        shift: bool = False,
        conversion: ConversionSchedule | None = None,
        val_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        converting = self.init_from is not None or conversion is not None
        if any(block.causal for block in self.backbone.blocks) and not converting:
            raise ValueError(
                "MaskedDiffusionLM needs bidirectional attention, but backbone.block.attention.causal=true: set "
                "it to false (or convert an AR checkpoint with init_from / conversion, which switches it off)"
            )
        self.backbone.causal = False  # the conversion schedule, if any, supplies the causality by mask
        if not 0 < eps < 1:
            raise ValueError(f"MaskedDiffusionLM eps={eps} must be in (0, 1), e.g. 1e-3")
        if mask_id is not None and not 0 <= mask_id < self.backbone.vocab_size:
            raise ValueError(
                f"MaskedDiffusionLM mask_id={mask_id} is outside the model's vocabulary [0, "
                f"{self.backbone.vocab_size}): choose an id below backbone.vocab_size, or null for a dedicated id"
            )
        if shift and conversion is not None and conversion.block_diffusion:
            raise ValueError(
                f"MaskedDiffusionLM shift=true is not supported with {type(conversion).__name__} (block diffusion): "
                "set shift to false, or use AttentionAnnealing"
            )
        self.mask_id, self.eps, self.antithetic, self.shift = mask_id, eps, antithetic, shift
        self.conversion, self.val_seed = conversion, val_seed

    # ---- conversion from an AR checkpoint --------------------------------------------------------------------
    def load_backbone(self, path: str, *, grow_vocab: bool = True) -> None:
        """As :meth:`LanguageModel.load_backbone`, but the vocabulary may grow (room for a dedicated mask token)."""
        super().load_backbone(path, grow_vocab=grow_vocab)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = self.data_module()
        vocab = None if data is None else data.vocab_size
        if self.mask_id is None:
            if vocab is None:
                raise ValueError("MaskedDiffusionLM mask_id=null needs the data module's vocab_size: set mask_id")
            if vocab >= self.backbone.vocab_size:
                raise ValueError(
                    f"MaskedDiffusionLM mask_id=null needs an id after the tokenizer's {vocab} tokens, but "
                    f"backbone.vocab_size={self.backbone.vocab_size}: raise backbone.vocab_size to {vocab + 1} or "
                    "reuse an existing id as mask_id (e.g. the end-of-text id, as Dhara does)"
                )
            self.mask_id = vocab
            self.hparams["mask_id"] = vocab  # saved, so sampling from the checkpoint knows it

    # ---- the objective -----------------------------------------------------------------------------------------
    def sample_t(self, n: int, *, device, generator: torch.Generator | None = None) -> Tensor:  # (n,)
        """``n`` noise levels in ``(ε, 1)``: stratified (one per stratum) when ``antithetic``, else i.i.d."""
        u = torch.rand(n, device=device, generator=generator)
        if self.antithetic:  # one draw per stratum [i/n, (i+1)/n), all sharing one offset
            u = (torch.arange(n, device=device) + u[:1]) / n
        return self.eps + (1 - self.eps) * u

    @property
    def description(self) -> ModelDescription:
        """A masked-diffusion model: its mask token, shift and (block-causal models) block size, the diffusion
        samplers, ELBO bounds."""
        block = self.conversion.final_block if self.conversion is not None else None
        return ModelDescription(kind=ModelKind.MASKED_DIFFUSION, sampler=MASKED_DIFFUSION, scoring=Scoring.ELBO,
                                mask_id=self.mask_id, shift=self.shift, block_size=block)  # fmt: skip

    def loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None, *, converting: bool = True
    ) -> tuple[Tensor, Tensor]:
        """(negative ELBO per scored token, scored tokens). ``converting``: follow the conversion schedule at the
        current step (training); ``False`` scores the final objective, plain bidirectional masked diffusion."""
        input_ids, labels = batch["input_ids"], batch["labels"]  # (B, T)
        B, T = input_ids.shape
        device = input_ids.device
        scored = labels != -100  # prompt tokens (SFT) are neither masked nor scored
        if self.shift:
            scored[:, 0] = False  # no position before the first token to predict it
        step = self.global_step if attached_trainer(self) is not None else 0
        plan = None
        if converting and self.conversion is not None:
            plan = self.conversion.plan(step, T, device=device, generator=generator)
        block = plan.block_size if plan is not None and plan.block_size is not None else T
        n_blocks = math.ceil(T / block)
        t = self.sample_t(B * n_blocks, device=device, generator=generator).view(B, n_blocks)  # a level per block
        t = t.repeat_interleave(block, dim=1)[:, :T]  # (B, T): each token's noise level
        draw = torch.rand(B, T, device=device, generator=generator)
        masked = (draw < t) & scored  # (B, T)
        noisy = torch.where(masked, torch.full_like(input_ids, self.mask_id), input_ids)
        documents = document_mask(batch)  # (B, 1, T, T): packed or padded examples never see each other
        if plan is not None and plan.clean_context:  # block diffusion: each block sees the clean earlier blocks
            both = torch.cat([noisy, input_ids], dim=1)  # (B, 2T)
            positions = torch.arange(T, device=device).repeat(2)  # the clean copy sits at the same positions
            mask = plan.mask if documents is None else plan.mask & documents.repeat(1, 1, 2, 2)
            logits = self.backbone(both, mask=mask, positions=positions)[:, :T]  # (B, T, V)
        else:
            mask = plan.mask if plan is not None else None
            if documents is not None:
                mask = documents if mask is None else mask & documents
            logits = self.backbone(noisy, mask=mask)  # (B, T, V)
        weights = masked / t  # (B, T): 1/t on masked positions, 0 elsewhere
        if self.shift:  # logits at i predict token i+1
            logits, labels, weights = logits[:, :-1], labels[:, 1:], weights[:, 1:]
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none"
        ).view_as(labels)
        n_tokens = scored.sum()
        return (ce * weights).sum() / n_tokens.clamp(min=1), n_tokens

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # Fixed noise and no schedule: the same bound every evaluation, averaged per token over the whole set
        # (the base weights each batch's per-token loss by its token count, so Σ(1/t)·CE / Σ tokens).
        generator = torch.Generator(device=batch["input_ids"].device).manual_seed(self.val_seed + batch_idx)
        loss, n_tokens = self.loss(batch, generator=generator, converting=False)
        self.val_loss.update(loss, weight=n_tokens)
