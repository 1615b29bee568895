"""``CausalLM``: next-token prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.objectives.base import LanguageModel


class CausalLM(LanguageModel):
    """Identical to :class:`LanguageModel` except the loss: cross-entropy of token ``t+1`` given tokens
    ``≤ t``, on positions whose label is not ``-100``. The backbone's attention must be causal.

    The LM head and the cross-entropy run together, a block of positions at a time
    (:func:`linear_cross_entropy`): the ``(B, T, V)`` logits are never held whole, in fp32 or otherwise.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not self.backbone.causal:
            raise ValueError(
                "CausalLM needs causal attention, but backbone.block.attention.causal=false: set it to true "
                "(bidirectional attention belongs to masked-diffusion objectives)"
            )

    sampler_kind = "autoregressive"

    def sample(self, prompts, **options):
        """KV-cache decoding (:func:`zoo.generation.generate`); ``options`` as it takes them."""
        from zoo.generation.autoregressive import generate

        return generate(self.backbone, prompts, **options)

    def sampling_context(self):
        """Decoding's weight layout, entered once around many :meth:`sample` calls."""
        from zoo.generation.autoregressive import decoding_layout

        return decoding_layout(self.backbone)

    def scorer(self, *, tokenizer, eos: str, batch_size: int = 32, mc_num: int = 128, seed: int = 0):
        """Exact log-likelihoods (:class:`zoo.eval.CausalScorer`)."""
        from zoo.eval.scoring import CausalScorer

        return CausalScorer(backbone=self.backbone, tokenizer=tokenizer, prefix_id=tokenizer.token_to_id(eos),
                            max_length=self.backbone.max_seq_len, batch_size=batch_size)  # fmt: skip

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        input_ids, labels = batch["input_ids"], batch["labels"]  # (B, T) each
        mask = self.document_mask(batch, causal=True)  # packed examples never attend to each other
        # Every position runs, the last one too although it has no target: the matmuls then have B·T rows
        # (a multiple of the batch's power-of-two length) rather than B·(T-1), which BLAS and tensor-core
        # kernels run markedly slower per FLOP (on a 2-core EPYC, 1020 × 512 @ 512 × 2816 took 1.27× as long as
        # 1024 rows); the extra position costs 1/T of the compute, and causal attention keeps the others exact.
        features = self.backbone(input_ids, mask=mask, features_only=True)  # (B, T, C)
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): position t predicts label t+1; last: none
        # the head is applied inside the loss
        loss = linear_cross_entropy(features.flatten(0, 1), self.backbone.head.weight, targets.flatten())
        n_tokens = (targets != -100).sum()
        return loss / n_tokens.clamp(min=1), n_tokens


def linear_cross_entropy(features: Tensor, weight: Tensor, targets: Tensor, *, chunk_elements: int = 2**25) -> Tensor:
    """``F.cross_entropy(features @ weight.T, targets, ignore_index=-100, reduction="sum")`` with the logits
    formed ``chunk_elements // V`` rows (rounded down to a multiple of 64) at a time, in the matmul's dtype, then
    fp32 for the softmax, as the unfused ``.float()`` cross-entropy does. features: (N, C), weight: (V, C),
    targets: (N,).

    torch has no fused linear + cross-entropy (``F.cross_entropy`` needs the whole logits tensor, and autograd
    then keeps it and its softmax for the backward pass), so it is written here: when gradients are needed each
    block's gradients (``softmax − onehot``, times the weight and the features) are formed while its logits are
    at hand, and the backward pass only scales them by the incoming gradient. Three matmuls, as unfused; the
    memory for logits drops from several ``N × V`` fp32 tensors to one block's, and the softmax is formed in
    that one block's buffer (see :func:`_softmax_`).
    """
    rows = max(64, chunk_elements // weight.shape[0] // 64 * 64)  # a multiple of 64: aligned matmul shapes
    if torch.is_grad_enabled() and (features.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(features, weight, targets, rows)
    total = features.new_zeros((), dtype=torch.float32)
    for start in range(0, features.shape[0], rows):
        logits = (features[start : start + rows] @ weight.T).float()  # (n, V)
        total = total + _softmax_(logits, targets[start : start + rows], normalize=False)[0]
    return total


def _softmax_(logits: Tensor, targets: Tensor, *, normalize: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Summed cross-entropy of a block of fp32 logits (n, V) against ``targets`` (n,) (−100: ignored), computed
    in place: the logits become ``exp(logits − max)``, divided by their row sums (the softmax) when ``normalize``.
    Returns the loss, that tensor, the valid-row mask (n,) and the targets with ignored rows read as class 0.

    Why not ``torch.logsumexp``: it allocates two more (n, V) tensors (``x − max`` and its exponential), and on a
    CPU a fresh buffer that large is paid for in page faults: for 1,024 × 32,000 fp32 logits (2-core EPYC)
    ``logsumexp`` took 87 ms, where the in-place passes here take about 5–15 ms each. Same arithmetic:
    ``lse = max + log(sum(exp(x − max)))``.
    """
    valid = targets != -100
    safe = targets.clamp(min=0)
    picked = logits.gather(1, safe[:, None])  # (n, 1), before the logits are overwritten
    top = logits.amax(dim=-1, keepdim=True)  # (n, 1)
    exps = logits.sub_(top).exp_()  # (n, V), in place
    sums = exps.sum(dim=-1, keepdim=True)  # (n, 1)
    loss = ((top + sums.log() - picked).squeeze(1) * valid).sum()
    return loss, exps.div_(sums) if normalize else exps, valid, safe


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, targets: Tensor, rows: int) -> Tensor:
        # Runs under the caller's autocast: the matmuls take its dtype, as the unfused head would.
        grad_features = torch.empty_like(features)
        grad_weight = None  # (V, C) fp32: the first block's product, then the others added to it
        total = features.new_zeros((), dtype=torch.float32)
        for start in range(0, features.shape[0], rows):
            block = features[start : start + rows]  # (n, C)
            logits = (block @ weight.T).float()  # (n, V)
            loss, grad, valid, safe = _softmax_(logits, targets[start : start + rows])
            total += loss
            grad[torch.arange(len(safe), device=grad.device), safe] -= 1.0  # softmax − onehot
            grad *= valid[:, None]  # ignored rows contribute nothing
            grad = grad.to(weight.dtype)
            grad_features[start : start + rows] = grad @ weight  # (n, C)
            if grad_weight is None:
                grad_weight = (grad.T @ block).float()
            elif grad.dtype == block.dtype == torch.float32:
                grad_weight.addmm_(grad.T, block)  # no (V, C) temporary
            else:
                grad_weight += (grad.T @ block).float()
        if grad_weight is None:  # no rows
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ctx.save_for_backward(grad_features, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad_features, grad_weight = ctx.saved_tensors
        # In place: these tensors serve this one backward pass (a second one, with retain_graph, is refused by
        # autograd's check of the saved tensors' versions rather than given wrong gradients).
        return grad_features.mul_(grad_output), grad_weight.mul_(grad_output).to(ctx.weight_dtype), None, None
