"""Masked diffusion: the objective, the ELBO estimator, and the AR → diffusion conversion."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_backbone
from zoo.nn import GroupedQueryAttention
from zoo.objectives import (
    AttentionAnnealing,
    BlockWarmupStableDecay,
    CausalLM,
    MaskedDiffusionLM,
    elbo_loglikelihood,
)
from zoo.objectives.conversion import block_diffusion_mask

V, MASK = 64, 63


def bidirectional(**kwargs):
    return tiny_backbone(attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False), **kwargs)


def model(**kwargs):
    return MaskedDiffusionLM(backbone=bidirectional(), mask_id=MASK, **kwargs)


def batch(B=4, T=16, seed=0):
    ids = torch.randint(0, MASK, (B, T), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


def test_bidirectional_attention_sees_future_tokens():
    backbone = bidirectional().eval()
    x = batch()["input_ids"]
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % MASK
    with torch.no_grad():
        assert not torch.allclose(backbone(x)[:, 0], backbone(y)[:, 0])


def test_an_ar_backbone_is_made_bidirectional():
    m = MaskedDiffusionLM(backbone=tiny_backbone(), mask_id=MASK)
    assert not any(block.attention.causal for block in m.backbone.blocks)


def test_mask_id_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="mask_id=64 is outside"):
        MaskedDiffusionLM(backbone=bidirectional(), mask_id=V)


def test_all_masked_at_t_one_is_plain_cross_entropy(monkeypatch):
    m = model().eval()
    monkeypatch.setattr(m, "sample_t", lambda B, device, generator=None: torch.ones(B))
    b = batch()
    with torch.no_grad():
        loss, n = m.loss(b)
        logits = m.backbone(torch.full_like(b["input_ids"], MASK))
        expected = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten())
    torch.testing.assert_close(loss, expected)
    assert n == b["input_ids"].numel()


def test_antithetic_noise_levels_cover_the_interval_one_per_stratum():
    m = model()
    t = m.sample_t(8, device="cpu", generator=torch.Generator().manual_seed(3))
    strata = ((t - m.eps) / (1 - m.eps) * 8).floor().long()
    assert strata.tolist() == list(range(8)) and t.min() > m.eps and t.max() < 1


def test_prompt_tokens_are_never_masked(monkeypatch):
    m = model()
    monkeypatch.setattr(m, "sample_t", lambda B, device, generator=None: torch.full((B,), 0.99))
    seen = {}
    forward = m.backbone.forward

    def recording(x, **kwargs):
        seen["x"] = x
        return forward(x, **kwargs)

    monkeypatch.setattr(m.backbone, "forward", recording)
    b = batch()
    b["labels"][:, :6] = -100  # the prompt
    m.loss(b)
    assert torch.equal(seen["x"][:, :6], b["input_ids"][:, :6])
    assert (seen["x"][:, 6:] == MASK).float().mean() > 0.9


def test_validation_noise_is_fixed_so_evaluations_compare():
    m = model().eval()
    b = batch()
    losses = []
    for _ in range(2):
        g = torch.Generator().manual_seed(m.val_seed)
        with torch.no_grad():
            losses.append(m.loss(b, generator=g)[0])
    torch.testing.assert_close(losses[0], losses[1])


def test_conversion_loads_the_ar_weights_exactly(tmp_path):
    ar = CausalLM(backbone=tiny_backbone(vocab_size=V))
    path = tmp_path / "ar.ckpt"
    torch.save({"state_dict": ar.state_dict()}, path)
    converted = MaskedDiffusionLM(backbone=bidirectional(), mask_id=MASK, init_from=str(path))
    for name, tensor in ar.backbone.state_dict().items():
        assert torch.equal(converted.backbone.state_dict()[name], tensor), name
    assert not converted.backbone.blocks[0].attention.causal


def test_conversion_refuses_a_different_architecture_by_name(tmp_path):
    ar = CausalLM(backbone=tiny_backbone(vocab_size=V, dim=48))
    path = tmp_path / "ar.ckpt"
    torch.save({"state_dict": ar.state_dict()}, path)
    with pytest.raises(ValueError, match=r"does not match.*embed.weight: \(64, 48\) vs \(64, 32\)"):
        MaskedDiffusionLM(backbone=bidirectional(), mask_id=MASK, init_from=str(path))


def test_attention_annealing_goes_from_causal_to_bidirectional():
    schedule = AttentionAnnealing(anneal_steps=10)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(schedule.plan(0, 6, device="cpu").mask[0, 0], causal)
    halfway = schedule.plan(5, 6, device="cpu", generator=torch.Generator().manual_seed(0)).mask[0, 0]
    assert (halfway & causal).equal(causal) and halfway.sum() > causal.sum()
    assert schedule.plan(10, 6, device="cpu") is None


def test_block_diffusion_mask_structure():
    mask = block_diffusion_mask(4, 2)[0, 0].int().tolist()
    assert mask == [
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


def test_block_diffusion_loss_runs_with_clean_context():
    m = MaskedDiffusionLM(
        backbone=bidirectional(), mask_id=MASK, conversion=BlockWarmupStableDecay(warmup_blocks=[4], warmup_steps=5,
                                                                                   stable_steps=0),
    )  # fmt: skip
    loss, _ = m.loss(batch())
    loss.backward()
    assert torch.isfinite(loss) and m.backbone.embed.weight.grad is not None


def overfit(sequence, steps=150):
    torch.manual_seed(0)
    m = model(antithetic=True)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    b = {"input_ids": sequence.repeat(8, 1), "labels": sequence.repeat(8, 1)}
    for _ in range(steps):
        opt.zero_grad()
        m.loss(b)[0].backward()
        opt.step()
    return m.eval()


def test_elbo_is_seeded_and_ranks_a_memorized_answer_first():
    sequence = torch.randint(0, MASK, (16,), generator=torch.Generator().manual_seed(7))
    m = overfit(sequence)
    prompt, answer = sequence[:10], sequence[10:]
    wrong = torch.randint(0, MASK, (6,), generator=torch.Generator().manual_seed(8))

    def score(a, seed=0):
        return elbo_loglikelihood(m.backbone, prompt, a, mask_id=MASK, mc_num=16, batch_size=8,
                                  generator=torch.Generator().manual_seed(seed))  # fmt: skip

    assert score(answer) == score(answer)
    assert score(answer) != score(answer, seed=1)
    assert score(answer) > score(wrong) + 5.0


def test_diffusion_quickstart_fits_from_an_ar_checkpoint_and_samples(tmp_path, capsys):
    """The documented demo at toy size: AR fit → conversion fit (init_from, annealing) → generate."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.test_cli import TINY
    from zoo.cli import ZooCLI
    from zoo.generation.cli import main as generate_main

    common = [*TINY[2:], "--data.tokenizer.init_args.cache_dir", str(tmp_path / "tok"), "--trainer.logger", "true"]
    ZooCLI(args=["fit", "--config", "configs/quickstart.yaml", *common,
                 "--trainer.default_root_dir", str(tmp_path / "ar")])  # fmt: skip
    ar_ckpt = next((tmp_path / "ar").rglob("last.ckpt"))
    ZooCLI(args=["fit", "--config", "configs/diffusion-quickstart.yaml", *common,
                 "--model.conversion.init_args.anneal_steps", "2", "--model.init_from", str(ar_ckpt),
                 "--model.backbone.vocab_size", "301",  # a dedicated mask token after the tokenizer's 300
                 "--trainer.default_root_dir", str(tmp_path / "dm")])  # fmt: skip
    events = EventAccumulator(str(next((tmp_path / "dm").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "val/loss" in events.Tags()["scalars"]
    dm_ckpt = next((tmp_path / "dm").rglob("last.ckpt"))
    capsys.readouterr()  # the fits' summaries
    generate_main(["--ckpt", str(dm_ckpt), "--prompt", "import os", "--gen-length", "8", "--block-length", "4",
                   "--steps", "4"])  # fmt: skip
    assert capsys.readouterr().out.startswith("import os")


def test_conversion_may_grow_the_vocabulary_for_a_dedicated_mask_token(tmp_path):
    ar = CausalLM(backbone=tiny_backbone(vocab_size=V - 1))
    path = tmp_path / "ar.ckpt"
    torch.save({"state_dict": ar.state_dict()}, path)
    converted = MaskedDiffusionLM(backbone=bidirectional(), mask_id=None, init_from=str(path))
    embed = converted.backbone.embed.weight
    assert torch.equal(embed[: V - 1], ar.backbone.embed.weight)
    torch.testing.assert_close(embed[V - 1], ar.backbone.embed.weight.mean(dim=0))
