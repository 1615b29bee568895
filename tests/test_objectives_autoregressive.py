import lightning as L
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_backbone
from zoo.nn import GroupedQueryAttention
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
