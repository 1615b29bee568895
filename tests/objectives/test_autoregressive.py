import lightning as L
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_backbone
from zoo.nn import GroupedQueryAttention
from zoo.nn.losses import linear_cross_entropy
from zoo.objectives import CausalLM


def test_loss_is_next_token_cross_entropy_with_ignore_index():
    model = CausalLM(backbone=tiny_backbone())
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    loss, n = model.loss({"input_ids": ids, "labels": labels})
    logits = model.backbone(ids)[:, :-1]
    expected = F.cross_entropy(logits.reshape(-1, 64), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected)
    assert n == 2 * 8


@pytest.mark.parametrize("chunk_elements", [2**25, 64 * 50, 3 * 64 * 50])  # one block; 64-row blocks; 192 rows
def test_linear_cross_entropy_equals_the_unfused_loss_and_gradients(chunk_elements):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(200, 16, generator=g, requires_grad=True)  # 200 rows: a partial last block
    weight = (torch.randn(50, 16, generator=g) * 3).requires_grad_()
    targets = torch.randint(0, 50, (200,), generator=g)
    targets[::7] = -100
    loss = linear_cross_entropy(features, weight, targets, chunk_elements=chunk_elements)
    expected = F.cross_entropy(features @ weight.T, targets, ignore_index=-100, reduction="sum")
    torch.testing.assert_close(loss, expected)
    (loss * 0.5).backward()
    got = features.grad.clone(), weight.grad.clone()
    features.grad = weight.grad = None
    (expected * 0.5).backward()
    torch.testing.assert_close(got[0], features.grad)
    torch.testing.assert_close(got[1], weight.grad)
    with torch.no_grad():  # the forward-only path gives the same sum
        torch.testing.assert_close(linear_cross_entropy(features, weight, targets, chunk_elements=chunk_elements),
                                   expected.detach())  # fmt: skip


@pytest.mark.parametrize("chunk_elements", [2**25, 64 * 50])  # one block; 64-row blocks with a partial last one
@pytest.mark.parametrize("mode", ["autocast", "bf16 weights"])
def test_linear_cross_entropy_in_bf16_matches_the_unfused_loss(chunk_elements, mode):
    """Under bf16 autocast (fp32 weights, bf16 products) and with bf16 weights, the fused loss and gradients
    match the unfused head + ``.float()`` cross-entropy run the same way, within bf16 rounding; the gradients
    come back in the weights' own dtype."""
    g = torch.Generator().manual_seed(0)
    dtype = torch.float32 if mode == "autocast" else torch.bfloat16
    features = torch.randn(200, 32, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(50, 32, generator=g) * 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (200,), generator=g)
    targets[::7] = -100

    def run(fused: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            if fused:
                loss = linear_cross_entropy(features, weight, targets, chunk_elements=chunk_elements)
            else:
                logits = (features @ weight.T).float()
                loss = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        loss.backward()
        grads = features.grad.clone(), weight.grad.clone()
        features.grad = weight.grad = None
        return loss.detach(), grads

    loss, (grad_f, grad_w) = run(True)
    expected, (want_f, want_w) = run(False)
    assert grad_f.dtype == want_f.dtype == dtype and grad_w.dtype == want_w.dtype == dtype
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(grad_f.float(), want_f.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad_w.float(), want_w.float(), rtol=2e-2, atol=2e-2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        torch.testing.assert_close(linear_cross_entropy(features, weight, targets, chunk_elements=chunk_elements),
                                   expected, rtol=1e-3, atol=1e-2)  # fmt: skip


def test_linear_cross_entropy_refuses_a_second_backward_pass():
    features = torch.randn(8, 4, requires_grad=True)
    loss = linear_cross_entropy(features, torch.randn(10, 4), torch.randint(0, 10, (8,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_tiny_model_overfits_one_batch():
    model = CausalLM(backbone=tiny_backbone())
    batch = {"input_ids": torch.randint(0, 64, (4, 32))}
    batch["labels"] = batch["input_ids"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss, _ = model.loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5  # ~ln(64) at init
    assert loss.item() < 0.1


def test_causal_lm_refuses_bidirectional_attention():
    with pytest.raises(ValueError, match="attention.causal=false"):
        CausalLM(backbone=tiny_backbone(attention=lambda d: GroupedQueryAttention(d, n_heads=4, causal=False)))


class _Data(L.LightningDataModule):
    def __init__(self, vocab_size, seq_len=16):
        super().__init__()
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, 2

    def train_dataloader(self):
        ids = torch.randint(0, 64, (8, self.seq_len))
        return torch.utils.data.DataLoader([{"input_ids": r, "labels": r} for r in ids], batch_size=2)


def _fit(model, data, tmp_path, **kwargs):
    trainer = L.Trainer(
        max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )
    trainer.fit(model, datamodule=data)
    return trainer


def test_tokenizer_larger_than_vocab_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tokenizer has 100 tokens but model backbone.vocab_size=64"):
        _fit(CausalLM(backbone=tiny_backbone()), _Data(100), tmp_path)


def test_seq_len_above_max_seq_len_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data.seq_len=128 exceeds backbone.max_seq_len=64"):
        _fit(CausalLM(backbone=tiny_backbone()), _Data(64, seq_len=128), tmp_path)


def test_fit_logs_and_counts_tokens(tmp_path):
    model = CausalLM(backbone=tiny_backbone())
    trainer = _fit(model, _Data(64), tmp_path)
    assert model.tokens_seen.item() == 4 * 2 * 16
    for key in ("train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/tokens_seen"):
        assert key in trainer.callback_metrics, key
