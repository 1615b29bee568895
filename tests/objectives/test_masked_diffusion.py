"""Masked diffusion: the objective, the ELBO estimator, and the AR → diffusion conversion."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_backbone
from zoo.nn import GroupedQueryAttention
from zoo.nn.masks import annealed_mask, block_causal_mask, block_diffusion_mask
from zoo.objectives import (
    AttentionAnnealing,
    BlockWarmupStableDecay,
    CausalLM,
    MaskedDiffusionLM,
    elbo_loglikelihood,
)

V, MASK = 64, 63


def bidirectional(**kwargs):
    return tiny_backbone(attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False), **kwargs)


def model(**kwargs):
    return MaskedDiffusionLM(backbone=bidirectional(), mask_id=MASK, **kwargs)


def batch(B=4, T=16, seed=0):
    ids = torch.randint(0, MASK, (B, T), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


def record_inputs(monkeypatch, backbone):
    """Replace backbone.forward by a wrapper that keeps its last input ids and mask."""
    seen = {}
    forward = backbone.forward

    def recording(x, **kwargs):
        seen["x"], seen["mask"] = x, kwargs.get("mask")
        return forward(x, **kwargs)

    monkeypatch.setattr(backbone, "forward", recording)
    return seen


def save_ar(tmp_path, **kwargs):
    ar = CausalLM(backbone=tiny_backbone(**kwargs))
    path = tmp_path / "ar.ckpt"
    torch.save({"state_dict": ar.state_dict()}, path)
    return ar, str(path)


# ---- the objective --------------------------------------------------------------------------------------------------
def test_bidirectional_attention_sees_future_tokens():
    backbone = model().backbone.eval()
    x = batch()["input_ids"]
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % MASK
    with torch.no_grad():
        assert not torch.allclose(backbone(x)[:, 0], backbone(y)[:, 0])


def test_causal_attention_is_refused_unless_converting():
    with pytest.raises(ValueError, match="attention.causal=true: set it to false"):
        MaskedDiffusionLM(backbone=tiny_backbone(), mask_id=MASK)
    converted = MaskedDiffusionLM(backbone=tiny_backbone(), mask_id=MASK, conversion=AttentionAnnealing(anneal_steps=5))
    assert not any(block.attention.causal for block in converted.backbone.blocks)


def test_mask_id_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="mask_id=64 is outside.*choose an id below backbone.vocab_size"):
        MaskedDiffusionLM(backbone=bidirectional(), mask_id=V)


@pytest.mark.parametrize("shift", [False, True])
def test_all_masked_at_t_one_is_plain_cross_entropy(monkeypatch, shift):
    m = model(shift=shift).eval()
    monkeypatch.setattr(m, "sample_t", lambda n, device, generator=None: torch.ones(n))
    b = batch()
    with torch.no_grad():
        loss, n = m.loss(b)
        noisy = torch.full_like(b["input_ids"], MASK)
        if shift:  # the first token stays as context; logits at i score token i + 1
            noisy[:, 0] = b["input_ids"][:, 0]
            expected = F.cross_entropy(m.backbone(noisy)[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten())
        else:
            expected = F.cross_entropy(m.backbone(noisy).flatten(0, 1), b["labels"].flatten())
    torch.testing.assert_close(loss, expected)
    assert n == b["input_ids"].numel() - shift * len(b["input_ids"])


def test_antithetic_noise_levels_cover_the_interval_one_per_stratum():
    m = model()
    for seed in range(3):
        t = m.sample_t(8, device="cpu", generator=torch.Generator().manual_seed(seed))
        strata = ((t - m.eps) / (1 - m.eps) * 8).floor().long()
        assert strata.tolist() == list(range(8)) and t.min() > m.eps and t.max() < 1


def test_prompt_tokens_are_never_masked_nor_counted(monkeypatch):
    m = model()
    monkeypatch.setattr(m, "sample_t", lambda n, device, generator=None: torch.full((n,), 0.99))
    seen = record_inputs(monkeypatch, m.backbone)
    b = batch()
    b["labels"][:, :6] = -100  # the prompt
    _, n_tokens = m.loss(b)
    assert torch.equal(seen["x"][:, :6], b["input_ids"][:, :6])
    assert (seen["x"][:, 6:] == MASK).float().mean() > 0.9
    assert n_tokens == b["input_ids"][:, 6:].numel()


def test_validation_uses_fixed_noise_and_no_schedule(monkeypatch):
    m = model(conversion=AttentionAnnealing(anneal_steps=10)).eval()
    seen = record_inputs(monkeypatch, m.backbone)
    b = batch()
    losses = []
    for _ in range(2):
        with torch.no_grad():
            m.validation_step(b, 0)
        losses.append(m.val_loss.compute())
        m.val_loss.reset()
        assert seen["mask"] is None  # fully bidirectional, whatever the conversion step
    torch.testing.assert_close(losses[0], losses[1])


# ---- conversion ----
def test_conversion_loads_the_ar_weights_exactly(tmp_path):
    ar, path = save_ar(tmp_path, vocab_size=V)
    converted = MaskedDiffusionLM(backbone=tiny_backbone(), mask_id=MASK, init_from=path)
    converted.setup("fit")
    ar_state, dm_state = ar.backbone.state_dict(), converted.backbone.state_dict()
    assert ar_state.keys() == dm_state.keys()
    for name, tensor in ar_state.items():
        assert torch.equal(dm_state[name], tensor), name
    assert ar.backbone.blocks[0].attention.causal and not converted.backbone.blocks[0].attention.causal
    assert converted.init_from is None  # loaded once: a later setup keeps the trained weights


def test_conversion_refuses_a_different_architecture_by_name(tmp_path):
    _, path = save_ar(tmp_path, vocab_size=V, dim=48)
    m = MaskedDiffusionLM(backbone=bidirectional(), mask_id=MASK, init_from=path)
    expected = r"init_from=.* does not fit this model:\n  embed.weight: checkpoint \(64, 48\) vs model \(64, 32\)"
    with pytest.raises(ValueError, match=expected):
        m.setup("fit")


def test_conversion_refuses_a_missing_checkpoint(tmp_path):
    m = MaskedDiffusionLM(backbone=bidirectional(), mask_id=MASK, init_from=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="init_from=.*nope.ckpt is not a file"):
        m.setup("fit")


def test_conversion_may_grow_the_vocabulary_for_a_dedicated_mask_token(tmp_path):
    ar, path = save_ar(tmp_path, vocab_size=V - 1)
    converted = MaskedDiffusionLM(backbone=bidirectional(), mask_id=MASK, init_from=path)
    converted.setup("fit")
    embed = converted.backbone.embed.weight
    assert torch.equal(embed[: V - 1], ar.backbone.embed.weight)
    torch.testing.assert_close(embed[V - 1], ar.backbone.embed.weight.mean(dim=0))


def test_attention_annealing_goes_from_causal_to_bidirectional():
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(annealed_mask(6, 0.0)[0, 0], causal)
    assert annealed_mask(6, 1.0).all()
    schedule = AttentionAnnealing(anneal_steps=10)
    assert torch.equal(schedule.plan(0, 6, device="cpu").mask[0, 0], causal)
    halfway = schedule.plan(5, 6, device="cpu", generator=torch.Generator().manual_seed(0)).mask[0, 0]
    assert (halfway & causal).equal(causal) and halfway.sum() > causal.sum()
    assert schedule.plan(10, 6, device="cpu") is None  # annealed: no mask at all


def test_block_masks_structure():
    assert block_causal_mask(4, 2).int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert torch.equal(block_causal_mask(5, 1), torch.ones(5, 5, dtype=torch.bool).tril())
    assert block_causal_mask(5, 5).all()
    mask = block_diffusion_mask(4, 2)[0, 0].int().tolist()
    assert mask == [  # queries: noisy 0-3, clean 0-3; keys the same
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]


def test_block_size_warms_up_holds_then_decays():
    schedule = BlockWarmupStableDecay(warmup_blocks=[1, 4], warmup_steps=10, stable_steps=5, decay_block=2)
    assert [schedule.block_size(s, 16) for s in (0, 4, 5, 9, 10, 14, 15, 99)] == [1, 1, 4, 4, 16, 16, 2, 2]
    assert schedule.plan(12, 16, device="cpu") is None and schedule.plan(0, 16, device="cpu").clean_context


def test_block_diffusion_noises_each_block_and_sees_clean_context(monkeypatch):
    m = model(conversion=BlockWarmupStableDecay(warmup_blocks=[4], warmup_steps=5, stable_steps=0))
    drawn = []
    sample_t = m.sample_t
    monkeypatch.setattr(m, "sample_t", lambda n, **kw: drawn.append(n) or sample_t(n, **kw))
    seen = record_inputs(monkeypatch, m.backbone)
    b = batch(B=4, T=16)
    loss, _ = m.loss(b)
    loss.backward()
    assert drawn == [4 * 4]  # a noise level per block of 4
    assert seen["x"].shape == (4, 32) and torch.equal(seen["x"][:, 16:], b["input_ids"])  # [noisy; clean]
    assert torch.isfinite(loss) and m.backbone.embed.weight.grad is not None
    with pytest.raises(ValueError, match="shift=true is not supported with BlockWarmupStableDecay"):
        model(shift=True, conversion=BlockWarmupStableDecay(warmup_blocks=[4], warmup_steps=5, stable_steps=0))


# ---- the ELBO ----
def test_elbo_is_seeded_and_ranks_a_memorized_answer_first():
    sequence = torch.randint(0, MASK, (12,), generator=torch.Generator().manual_seed(7))
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    b = {"input_ids": sequence.repeat(8, 1), "labels": sequence.repeat(8, 1)}
    for _ in range(40):  # memorize the one sequence
        opt.zero_grad()
        m.loss(b)[0].backward()
        opt.step()
    m.eval()
    prompt, answer = sequence[:8], sequence[8:]
    wrong = (answer + 1 + torch.arange(4)) % MASK  # every token different

    def score(a, seed=0):
        return elbo_loglikelihood(m, prompt, a, mc_num=16, batch_size=8, seed=seed)

    assert score(answer) == score(answer)
    assert score(answer) != score(answer, seed=1)
    assert score(answer) == elbo_loglikelihood(m.backbone, prompt, answer, mask_id=MASK, mc_num=16, batch_size=8,
                                               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert score(answer) > score(wrong) + 5.0


# ---- a Lightning fit ----
class _Data(L.LightningDataModule):
    def __init__(self, vocab_size, seq_len=16):
        super().__init__()
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, 2

    def _loader(self, seed):
        ids = torch.randint(0, self.vocab_size, (8, self.seq_len), generator=torch.Generator().manual_seed(seed))
        return torch.utils.data.DataLoader([{"input_ids": r, "labels": r} for r in ids], batch_size=2)

    def train_dataloader(self):
        return self._loader(0)

    def val_dataloader(self):
        return self._loader(1)


def test_fit_logs_the_validation_bound_with_a_dedicated_mask_id(tmp_path):
    m = MaskedDiffusionLM(backbone=bidirectional(), mask_id=None, conversion=AttentionAnnealing(anneal_steps=2))
    trainer = L.Trainer(
        max_steps=3, val_check_interval=3, limit_val_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(m, datamodule=_Data(V - 1))
    assert m.mask_id == V - 1 and m.hparams["mask_id"] == V - 1  # the id after the tokenizer's vocabulary
    val = trainer.callback_metrics["val/loss"]
    assert torch.isfinite(val) and torch.allclose(trainer.callback_metrics["val/ppl"], val.exp())
    assert "train/loss" in trainer.callback_metrics


def test_dedicated_mask_id_needs_room_in_the_vocabulary(tmp_path):
    m = MaskedDiffusionLM(backbone=bidirectional(), mask_id=None)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="raise backbone.vocab_size to 65"):
        trainer.fit(m, datamodule=_Data(V))
