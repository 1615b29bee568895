"""Masked-diffusion sampling with a KV cache, parallel decoding and left-padded batches (fast_diffusion)."""

import pytest
import torch

from tests.helpers import tiny_backbone
from zoo.generation import confidence_threshold, diffusion_generate, low_confidence_remasking
from zoo.nn import Canon, GroupedQueryAttention

V, MASK = 64, 63
THRESHOLD = 0.3
ROWS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]  # three prompt lengths


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bidirectional(seed=0, **kwargs):
    """float64, so rounding never decides between two predictions."""
    torch.manual_seed(seed)
    attention = lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False)  # noqa: E731
    return tiny_backbone(vocab_size=V, attention=attention, **kwargs).double().eval()


def pattern(start: torch.Tensor, length: int) -> torch.Tensor:  # (B, 1) -> (B, length)
    """The toy language: a, a+10, a+20, a, a+10, … (mod 60): a prompt of three tokens decides the rest."""
    return (start + (torch.arange(length) % 3) * 10) % 60


@pytest.fixture(scope="module")
def trained():
    """A bidirectional model trained for a few seconds with the masked-diffusion loss on :func:`pattern`, so its
    answers depend on the context (an untrained model's barely do, which would make any cache look exact)."""
    torch.manual_seed(0)
    attention = lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False)  # noqa: E731
    model = tiny_backbone(vocab_size=V, attention=attention)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        clean = pattern(torch.randint(0, 30, (32, 1)), 16)  # (32, 16)
        noisy_at = torch.rand(32, 16) < torch.rand(32, 1) * 0.95 + 0.05
        logits = model(clean.masked_fill(noisy_at, MASK))
        loss = torch.nn.functional.cross_entropy(logits[noisy_at], clean[noisy_at])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.double().eval()


# ---- the backbone's cache windows --------------------------------------------------------------------------------
def test_a_window_over_a_fresh_cache_gives_the_full_pass_logits():
    model, x = bidirectional(), torch.randint(0, MASK, (2, 20))
    full = model(x)  # (2, 20, V)
    cache = model.new_cache(2, 20)
    model(x, cache=cache)  # refresh: every position's keys and values
    for start, end in [(8, 12), (8, 20), (0, 5)]:
        cache.seek(start)
        window = model(x[:, start:end], cache=cache)
        assert cache.filled == 20 and cache.length == end
        torch.testing.assert_close(window, full[:, start:end])
    with pytest.raises(ValueError, match="seek to position 21"):
        cache.seek(21)


def test_seek_refuses_a_canon_state():
    model = bidirectional(canon_a=lambda d: Canon(d))
    cache = model.new_cache(1, 8)
    model(torch.randint(0, MASK, (1, 8)), cache=cache)
    with pytest.raises(ValueError, match="cannot be rewound"):
        cache.seek(0)


# ---- equal to the vanilla sampler --------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_refresh_every_step_equals_the_vanilla_sampler(cache, shift):
    model, prompt = bidirectional(), torch.randint(0, MASK, (2, 5))
    common = {"mask_id": MASK, "gen_length": 12, "block_length": 4, "shift": shift}
    vanilla = low_confidence_remasking(model, prompt, steps=6, **common)
    out = diffusion_generate(model, prompt, steps=6, cache=cache, refresh="step", **common)
    assert torch.equal(out.tokens, vanilla.tokens) and out.forward_passes == vanilla.forward_passes == 6
    assert out.cache == cache
    sampled = {"temperature": 1.0, "remasking": "random"}
    vanilla = low_confidence_remasking(model, prompt, steps=6, generator=torch.Generator().manual_seed(3), **sampled,
                                       **common)  # fmt: skip
    out = diffusion_generate(model, prompt, steps=6, cache=cache, refresh="step",
                             generator=torch.Generator().manual_seed(3), **sampled, **common)  # fmt: skip
    assert torch.equal(out.tokens, vanilla.tokens)  # the same random draws in the same order


def test_threshold_without_a_cache_equals_confidence_threshold(trained):
    prompt = pattern(torch.tensor([[3], [17]]), 4)
    common = {"mask_id": MASK, "gen_length": 12, "block_length": 4}
    vanilla = confidence_threshold(trained, prompt, threshold=THRESHOLD, **common)
    out = diffusion_generate(trained, prompt, threshold=THRESHOLD, **common)
    assert torch.equal(out.tokens, vanilla.tokens) and out.forward_passes == vanilla.forward_passes < 12


def test_block_wise_refresh_agrees_with_the_vanilla_sampler_on_a_trained_model(trained):
    full = pattern(torch.randint(0, 30, (16, 1), generator=torch.Generator().manual_seed(1)), 16)
    prompt, truth = full[:, :4], full[:, 4:]
    common = {"mask_id": MASK, "gen_length": 12, "block_length": 4, "steps": 12}
    vanilla = low_confidence_remasking(trained, prompt, **common).answer  # (16, 12)
    assert (vanilla == truth).float().mean() > 0.5  # learnt (chance: 1/60): the answers depend on the context
    for cache in ("prefix", "dual"):
        out = diffusion_generate(trained, prompt, cache=cache, **common)
        agreement = (out.answer == vanilla).float().mean().item()  # 0.984 for both when written
        assert agreement >= 0.9, f"cache={cache}: {agreement:.3f} of tokens agree with the vanilla sampler"


# ---- batches ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cache", "shift"), [("none", True), ("prefix", False), ("dual", True), ("dual", False)])
def test_left_padded_rows_get_the_tokens_of_each_prompt_alone(cache, shift):
    model = bidirectional()
    common = {"mask_id": MASK, "gen_length": 12, "block_length": 4, "cache": cache, "shift": shift}
    for options in ({"steps": 6}, {"threshold": 0.02}):
        batch = diffusion_generate(model, ROWS, **common, **options)
        assert batch.tokens.shape == (3, 7 + 12) and batch.prompt_length == 7
        for i, row in enumerate(ROWS):
            alone = diffusion_generate(model, [row], **common, **options)
            assert torch.equal(batch.answer[i], alone.answer[0]), f"row {i} with {options}"
            assert batch.tokens[i, 7 - len(row) : 7].tolist() == row


def test_left_padded_rows_of_a_trained_model_use_several_tokens_per_pass(trained):
    rows = pattern(torch.tensor([[3], [17], [29]]), 7).tolist()
    rows = [rows[0][:3], rows[1], rows[2][:5]]
    common = {"mask_id": MASK, "gen_length": 12, "block_length": 4, "threshold": THRESHOLD, "cache": "dual"}
    batch = diffusion_generate(trained, rows, **common)
    for i, row in enumerate(rows):
        alone = diffusion_generate(trained, [row], **common)
        assert torch.equal(batch.answer[i], alone.answer[0])
    assert batch.forward_passes < 12  # parallel: fewer passes than tokens


# ---- threshold --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_a_threshold_above_every_confidence_is_one_token_per_step(cache):
    model, prompt = bidirectional(), torch.randint(0, MASK, (2, 5))
    common = {"mask_id": MASK, "gen_length": 12, "block_length": 4, "cache": cache}
    one_per_step = diffusion_generate(model, prompt, steps=12, **common)
    out = diffusion_generate(model, prompt, threshold=1.0, **common)  # untrained: every confidence ≈ 1/64
    assert torch.equal(out.tokens, one_per_step.tokens) and out.forward_passes == 12
    assert torch.equal(one_per_step.tokens, low_confidence_remasking(model, prompt, steps=12, **{
        k: v for k, v in common.items() if k != "cache"}).tokens) or cache == "dual"  # fmt: skip


# ---- block-causal models: an exact cache ------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_block_causal_models_get_an_exact_cache(cache):
    model = bidirectional()
    common = {"mask_id": MASK, "gen_length": 12, "block_length": 4, "block_causal": True}
    for options in ({"steps": 6}, {"threshold": 0.02}):
        full = diffusion_generate(model, ROWS, cache="none", **common, **options)
        out = diffusion_generate(model, ROWS, cache=cache, **common, **options)
        assert out.cache == "exact" and full.cache == "none"
        assert torch.equal(out.tokens, full.tokens)
    # block-causal: a later block never changes an earlier one's logits, so the mask is in force
    x = torch.randint(0, MASK, (1, 11))
    from zoo.generation.fast_diffusion import _attention_mask

    mask = _attention_mask(torch.ones(1, 11, dtype=torch.bool), 3, 4, block_causal=True)
    y = x.clone()
    y[0, 7:] = MASK
    torch.testing.assert_close(model(x, mask=mask)[:, :7], model(y, mask=mask)[:, :7])
    assert not torch.allclose(model(x)[:, :7], model(y)[:, :7])


def test_the_description_gives_the_block_size_of_the_conversion_schedule():
    from zoo.objectives import MaskedDiffusionLM
    from zoo.objectives.conversion import AttentionAnnealing, BlockWarmupStableDecay

    def block_size(conversion):
        return MaskedDiffusionLM(backbone=bidirectional(), mask_id=MASK, conversion=conversion).description.block_size

    assert block_size(BlockWarmupStableDecay(warmup_blocks=[1, 4], warmup_steps=4, stable_steps=2, decay_block=8)) == 8
    assert block_size(BlockWarmupStableDecay(warmup_blocks=[1], warmup_steps=2, stable_steps=2)) is None
    assert block_size(AttentionAnnealing(anneal_steps=3)) is None
    assert block_size(None) is None


# ---- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gen_length": 10, "block_length": 4}, r"gen_length=10 is not divisible by block_length=4: .*\[1, 2, 5, 10\]"),
        ({"steps": 2}, r"steps=2 is fewer than the 3 blocks .* use steps ≥ 3"),
        ({"steps": 4}, "steps=4 is not a multiple of the 3 blocks"),
        ({"threshold": 0.0}, r"threshold=0.0 must be in \(0, 1\]"),
        ({"threshold": 1.5}, r"threshold=1.5 must be in \(0, 1\]"),
        ({"steps": None}, "give steps"),
        ({"cache": "suffix"}, r"cache='suffix' is unknown; choose one of \['none', 'prefix', 'dual'\]"),
        ({"refresh": "never"}, r"refresh='never' is unknown; choose one of \['block', 'step'\]"),
        ({"block_causal": True, "shift": True}, "block_causal=True with shift=True"),
    ],
)
def test_bad_options_are_refused_with_the_valid_choices(kwargs, message):
    args = {"mask_id": MASK, "gen_length": 12, "block_length": 4, "steps": 6, **kwargs}
    with pytest.raises(ValueError, match=message):
        diffusion_generate(bidirectional(), [[1, 2]], **args)


def test_a_cache_is_refused_for_canon_backbones():
    with pytest.raises(ValueError, match="cache='dual' cannot rewind a Canon"):
        diffusion_generate(bidirectional(canon_a=lambda d: Canon(d)), [[1, 2]], mask_id=MASK, gen_length=4,
                           block_length=4, steps=4, cache="dual")  # fmt: skip


# ---- the command ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny AR checkpoint and its masked-diffusion conversion (2 steps each)."""
    from tests.helpers import TINY
    from zoo.commands.fit import ZooCLI

    root = tmp_path_factory.mktemp("fit")
    quiet = ["--data.tokenizer.init_args.cache_dir", str(root / "tok"), "--trainer.max_steps", "2",
             "--trainer.limit_val_batches", "1", "--trainer.logger", "false"]  # fmt: skip
    ZooCLI(args=["fit", *TINY, *quiet, "--trainer.default_root_dir", str(root / "ar")])
    ar = next((root / "ar").rglob("last.ckpt"))
    diffusion = ["--config", "configs/diffusion-quickstart.yaml", *TINY[2:], "--model.backbone.vocab_size", "301",
                 "--model.init_from", str(ar), "--model.conversion.init_args.anneal_steps", "1"]  # fmt: skip
    ZooCLI(args=["fit", *diffusion, *quiet, "--trainer.default_root_dir", str(root / "diffusion")])
    return ar, next((root / "diffusion").rglob("last.ckpt"))


def test_generate_command_samples_a_batch_with_a_cache(checkpoints, capsys):
    from zoo.commands.generate import main

    common = ["--ckpt", str(checkpoints[1]), "--gen-length", "8", "--block-length", "4", "--steps", "4"]
    main([*common, "--prompt", "def parse(", "--prompt", "import os, sys", "--cache", "dual", "--threshold", "0.9"])
    out = capsys.readouterr()
    assert out.out.startswith("def parse(") and "\nimport os, sys" in out.out
    assert "[cache: dual (bidirectional model)]" in out.err and "forward passes" in out.err
    main([*common, "--prompt", "import os, sys", "--cache", "dual", "--threshold", "0.9"])
    assert out.out.split("\n", 1)[1] == capsys.readouterr().out  # the second row alone: the same answer


def test_an_ar_checkpoint_refuses_diffusion_options(checkpoints, capsys):
    from zoo.commands.generate import main

    for flag in (["--cache", "dual"], ["--threshold", "0.9"], ["--steps", "8"], ["--block-length", "4"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["--ckpt", str(checkpoints[0]), "--prompt", "x", *flag])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"{flag[0]}: options of masked-diffusion checkpoints" in err
        assert "its options are --max-new-tokens, --top-k" in err
    with pytest.raises(SystemExit):
        main(["--ckpt", str(checkpoints[1]), "--prompt", "x", "--cache", "exact"])
    assert "choose from 'none', 'prefix', 'dual'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(checkpoints[1]), "--prompt", "x", "--gen-length", "8", "--block-length", "4",
              "--steps", "1"])  # fmt: skip
    assert exit_info.value.code == 2 and "steps=1 is fewer than the 2 blocks" in capsys.readouterr().err
