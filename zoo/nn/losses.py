"""The LM head fused with the cross-entropy: the ``(N, V)`` logits are formed a block of rows at a time and never
held whole (:func:`linear_cross_entropy`)."""

from __future__ import annotations

import torch
from torch import Tensor


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
