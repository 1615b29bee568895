"""Sampling: KV-cache decoding, logits filters, the diffusion samplers and `python -m zoo generate`."""

import pytest
import torch

from tests.conftest import tiny_backbone
from zoo.generation import confidence_threshold, generate, low_confidence_remasking, top_k_filter, top_p_filter

V, MASK = 64, 63


def test_greedy_kv_cache_decoding_equals_full_forward_passes():
    model = tiny_backbone(vocab_size=V).eval()
    prompt = [5, 9, 2, 17]
    out = generate(model, prompt, max_new_tokens=10)
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    assert out.tokens == sequence[len(prompt) :] and out.forward_passes == 10


def test_top_k_one_is_greedy_and_seeded_sampling_repeats():
    model = tiny_backbone(vocab_size=V).eval()
    greedy = generate(model, [1, 2, 3], max_new_tokens=8).tokens
    assert generate(model, [1, 2, 3], max_new_tokens=8, temperature=1.5, top_k=1).tokens == greedy
    runs = [generate(model, [1, 2, 3], max_new_tokens=8, temperature=1.5,
                     generator=torch.Generator().manual_seed(4)).tokens for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1]


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [True, False, False, False]
    assert torch.isfinite(top_k_filter(logits, 3)).tolist() == [True, True, True, False]


def test_generation_stops_at_eos_and_at_a_stop_condition():
    model = tiny_backbone(vocab_size=V).eval()
    first = generate(model, [1, 2, 3], max_new_tokens=5).tokens[0]
    assert generate(model, [1, 2, 3], max_new_tokens=5, eos_id=first).tokens == [first]
    stopped = generate(model, [1, 2, 3], max_new_tokens=20, stop=lambda new: len(new) >= 3)
    assert len(stopped.tokens) == 3


def test_generation_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="max_new_tokens=100 exceeds"):
        generate(tiny_backbone(vocab_size=V, max_seq_len=64), [1, 2], max_new_tokens=100)


# ---- diffusion samplers -------------------------------------------------------------------------------------------
def bidirectional():
    from zoo.nn import GroupedQueryAttention

    return tiny_backbone(vocab_size=V, attention=lambda d: GroupedQueryAttention(d, n_heads=4, causal=False)).eval()


@pytest.mark.parametrize("sampler", ["low_confidence", "random", "threshold"])
def test_diffusion_run_ends_with_no_mask_tokens(sampler):
    prompt = torch.randint(0, MASK, (2, 5))
    kwargs = {"mask_id": MASK, "vocab_size": V, "gen_length": 12, "block_length": 4}
    if sampler == "threshold":
        out = confidence_threshold(bidirectional(), prompt, threshold=0.5, **kwargs)
    else:
        out = low_confidence_remasking(bidirectional(), prompt, steps=6, remasking=sampler, **kwargs)
    assert out.tokens.shape == (2, 17) and not (out.tokens == MASK).any()
    assert torch.equal(out.tokens[:, :5], prompt)


class Scripted:
    """A fake model: fixed logits per position, so which positions are unmasked first is checkable."""

    def __init__(self, preferred, confidence):
        self.preferred, self.confidence = preferred, confidence  # (S,), (S,)

    def __call__(self, x):
        logits = torch.full((x.shape[0], x.shape[1], V), -10.0)
        logits[:, torch.arange(x.shape[1]), self.preferred] = self.confidence
        return logits


def test_low_confidence_remasking_unmasks_the_most_confident_first():
    preferred = torch.tensor([0, 0, 10, 11, 12, 13])
    confidence = torch.tensor([0.0, 0.0, 1.0, 9.0, 2.0, 8.0])
    steps = []

    def model(x):
        steps.append(x.clone())
        return Scripted(preferred, confidence)(x)

    low_confidence_remasking(model, torch.tensor([[1, 2]]), mask_id=MASK, vocab_size=V, gen_length=4,
                             block_length=4, steps=2)  # fmt: skip
    assert steps[1][0, 2:].tolist() == [MASK, 11, MASK, 13]  # after step 1: the two most confident


def test_threshold_near_zero_unmasks_a_block_per_pass():
    out = confidence_threshold(bidirectional(), torch.tensor([[1, 2, 3]]), mask_id=MASK, vocab_size=V,
                               gen_length=12, block_length=4, threshold=1e-9)  # fmt: skip
    assert out.forward_passes == 3


def test_diffusion_respects_eos():
    eos = 7
    preferred = torch.tensor([1, 2, 20, eos, 21, 22, 23, 24])
    confidence = torch.tensor([0.0, 0.0, 5.0, 9.0, 1.0, 1.0, 1.0, 1.0])
    out = low_confidence_remasking(Scripted(preferred, confidence), torch.tensor([[1, 2]]), mask_id=MASK,
                                   vocab_size=V, gen_length=6, block_length=2, steps=6, eos_id=eos)  # fmt: skip
    assert out.tokens[0].tolist() == [1, 2, 20, eos, eos, eos, eos, eos]
    assert out.forward_passes == 2  # stopped after the block that ended the answer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gen_length": 10, "block_length": 4}, "gen_length=10 is not divisible by block_length=4"),
        ({"gen_length": 12, "block_length": 4, "steps": 5}, "steps=5 is not a multiple of the 3 blocks"),
        ({"mask_id": V}, "mask_id=64 is outside"),
    ],
)
def test_diffusion_sampler_errors_name_the_value(kwargs, message):
    args = {"mask_id": MASK, "vocab_size": V, "gen_length": 8, "block_length": 4, "steps": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        low_confidence_remasking(bidirectional(), torch.tensor([[1, 2]]), **args)
    with pytest.raises(ValueError, match="threshold=0"):
        confidence_threshold(bidirectional(), torch.tensor([[1]]), mask_id=MASK, vocab_size=V, gen_length=4,
                             block_length=4, threshold=0)  # fmt: skip


# ---- the command ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.test_cli import TINY
    from zoo.cli import ZooCLI

    root = tmp_path_factory.mktemp("fit")
    swap = ["--data.tokenizer.init_args.cache_dir", str(root / "tok"), "--trainer.max_steps", "2"]
    ZooCLI(args=["fit", *TINY, *swap, "--trainer.default_root_dir", str(root), "--trainer.logger", "false"])
    return next(root.rglob("last.ckpt"))


def test_generate_command_prints_a_continuation(checkpoint, capsys):
    from zoo.generation.cli import main

    main(["--ckpt", str(checkpoint), "--prompt", "def parse(", "--max-new-tokens", "6", "--format", "user_assistant"])
    captured = capsys.readouterr()
    assert captured.out.startswith("User: def parse(\nAssistant:") and "forward passes" in captured.err


def test_generate_command_rejects_an_unknown_format(checkpoint, capsys):
    from zoo.generation.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(checkpoint), "--prompt", "x", "--format", "chatml"])
    assert exit_info.value.code == 2 and "chatml" in capsys.readouterr().err
