"""Sampling: KV-cache decoding, logits filters, prompt formats, the diffusion samplers and `python -m zoo generate`."""

import pytest
import torch

from tests.helpers import tiny_backbone
from zoo.data.formats import FORMATS, Alpaca, NoFormat, UserAssistant
from zoo.generation import (
    banned_ngram_tokens,
    confidence_threshold,
    decoding_layout,
    generate,
    left_padding_is_exact,
    low_confidence_remasking,
    no_repeat_ngram_filter,
    repetition_penalty_filter,
    top_k_filter,
    top_p_filter,
)
from zoo.nn import Canon, GroupedQueryAttention, LearnedPositions

V, MASK = 64, 63


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: one thread is faster, and steady when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rope_model(kernel="sdpa"):
    attention = lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, kernel=kernel)  # noqa: E731
    return tiny_backbone(vocab_size=V, attention=attention).eval()


def absolute_canon_model():
    """Learned absolute positions and Canon-A: left padding would change its results."""
    return tiny_backbone(vocab_size=V, position=LearnedPositions, canon_a=Canon).eval()


def greedy_by_full_passes(model, prompt, n):
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    return sequence[len(prompt) :]


# ---- autoregressive decoding --------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [rope_model, absolute_canon_model], ids=["rope", "learned+canon"])
def test_greedy_kv_cache_decoding_equals_full_forward_passes(build):
    model = build()
    out = generate(model, [[5, 9, 2, 17]], max_new_tokens=10)
    assert out.tokens == [greedy_by_full_passes(model, [5, 9, 2, 17], 10)]
    assert out.forward_passes == 10 and out.finish_reasons == ["length"] and out.texts is None


def test_decoding_layout_holds_linear_weights_column_major_and_puts_the_originals_back():
    model = rope_model()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    before = {id(m.weight): (m.weight.data, m.weight.detach().clone()) for m in linears}
    assert model.head.weight is model.embed.weight  # tied: one parameter, copied once
    with decoding_layout(model):
        for m in linears:
            w = m.weight
            assert w.stride() == (1, w.shape[0]) and torch.equal(w, before[id(w)][1])
        inner = {id(m.weight): m.weight.data.data_ptr() for m in linears}
        with decoding_layout(model):  # nested: nothing copied again
            assert all(m.weight.data.data_ptr() == inner[id(m.weight)] for m in linears)
        assert all(m.weight.data.data_ptr() == inner[id(m.weight)] for m in linears)
    for m in linears:  # the very same tensors as before, contiguous for training
        assert m.weight.data.data_ptr() == before[id(m.weight)][0].data_ptr() and m.weight.is_contiguous()
    with pytest.raises(RuntimeError, match="inside"), decoding_layout(model):
        raise RuntimeError("inside")
    assert all(m.weight.is_contiguous() for m in linears)  # restored after an error too


def test_generation_leaves_a_model_that_still_trains():
    model = rope_model().train()
    generate(model, [[5, 9, 2, 17]], max_new_tokens=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(torch.tensor([[5, 9, 2, 17]])).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    assert all(p.is_contiguous() and (p.grad is None or p.grad.is_contiguous()) for p in model.parameters())


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_left_padded_batch_decodes_each_prompt_as_alone(kernel):
    model = rope_model(kernel)
    prompts = [[5, 9, 2, 17, 30, 41, 8], [3], [12, 40, 7]]
    alone = [generate(model, [p], max_new_tokens=8).tokens[0] for p in prompts]
    batched = generate(model, prompts, max_new_tokens=8)
    assert left_padding_is_exact(model)
    assert batched.tokens == alone
    assert batched.forward_passes == 8  # one batch: the prompts were padded, not decoded one after another


def test_prompts_of_different_lengths_are_grouped_when_padding_is_not_exact():
    model = absolute_canon_model()
    prompts = [[5, 9, 2, 17], [3, 4], [12, 40, 7, 1]]
    alone = [generate(model, [p], max_new_tokens=6).tokens[0] for p in prompts]
    batched = generate(model, prompts, max_new_tokens=6)
    assert not left_padding_is_exact(model)
    assert batched.tokens == alone and batched.forward_passes == 2 * 6  # two lengths, two batches


def test_top_k_one_is_greedy_and_seeded_sampling_repeats():
    model = rope_model()
    greedy = generate(model, [[1, 2, 3]], max_new_tokens=8).tokens
    assert generate(model, [[1, 2, 3]], max_new_tokens=8, temperature=1.5, top_k=1).tokens == greedy

    def sample(seed):
        return generate(model, [[1, 2, 3], [4]], max_new_tokens=8, temperature=1.5,
                        generator=torch.Generator().manual_seed(seed)).tokens  # fmt: skip

    assert sample(4) == sample(4)
    assert sample(4) != sample(5)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [[True, True, False, False]]  # 0.5+0.3 reaches it
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.1)).tolist() == [[True, False, False, False]]  # never empty
    shuffled = logits[:, [2, 0, 3, 1]]  # the nucleus follows the probabilities, not the positions
    assert torch.isfinite(top_p_filter(shuffled, 0.7)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(top_k_filter(logits, 3)).tolist() == [[True, True, True, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits) and torch.equal(top_k_filter(logits, 0), logits)


def test_filters_match_transformers_logits_processors():
    from transformers import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, V, generator=g)
    context = torch.randint(0, 8, (3, 20), generator=g)  # small alphabet: repeated n-grams
    seen = torch.zeros(3, V, dtype=torch.bool).scatter_(1, context, True)
    torch.testing.assert_close(repetition_penalty_filter(logits, seen, 1.3),
                               RepetitionPenaltyLogitsProcessor(1.3)(context, logits.clone()))  # fmt: skip
    torch.testing.assert_close(no_repeat_ngram_filter(logits, context.tolist(), 3),
                               NoRepeatNGramLogitsProcessor(3)(context, logits.clone()))  # fmt: skip
    torch.testing.assert_close(top_k_filter(logits, 5), TopKLogitsWarper(5)(context, logits.clone()))
    torch.testing.assert_close(top_p_filter(logits, 0.6), TopPLogitsWarper(0.6)(context, logits.clone()))


def test_repetition_penalty_lowers_exactly_the_seen_tokens():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert repetition_penalty_filter(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0, -2.0]]
    model = rope_model()
    plain = generate(model, [[1, 2, 3]], max_new_tokens=12).tokens[0]
    assert len(set(plain)) < len(plain)  # the untrained model repeats itself greedily
    penalized = generate(model, [[1, 2, 3]], max_new_tokens=12, repetition_penalty=1e6).tokens[0]
    assert penalized != plain


def test_no_repeat_ngram_bans_completions_of_seen_ngrams():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == [3]
    assert banned_ngram_tokens([1, 2, 3, 1, 2, 4, 1, 2], 3) == [3, 4]
    assert banned_ngram_tokens([1, 2, 3], 1) == [1, 2, 3]
    assert banned_ngram_tokens([1, 2], 4) == [] and banned_ngram_tokens([5, 5], 0) == []
    model = rope_model()
    out = generate(model, [[1, 2, 3], [7]], max_new_tokens=20, no_repeat_ngram_size=2).tokens
    for prompt, new in zip([[1, 2, 3], [7]], out):
        bigrams = list(zip(prompt + new, (prompt + new)[1:]))
        assert len(bigrams) == len(set(bigrams))


@pytest.fixture(scope="module")
def tokenizer():
    from zoo.data.tokenizer import train_bpe

    texts = ["def parse(text):\n    return text.split()\n", "the quick brown fox jumps over the lazy dog "] * 50
    return train_bpe(texts, vocab_size=300)


def test_generation_stops_at_eos_and_at_a_stop_string(tokenizer):
    model = tiny_backbone(vocab_size=300).eval()
    prompt = [tokenizer.encode("def parse").ids]

    def sample(**kwargs):  # the same seed: the same tokens until a row ends
        return generate(model, prompt, max_new_tokens=30, temperature=1.0, tokenizer=tokenizer,
                        generator=torch.Generator().manual_seed(0), **kwargs)  # fmt: skip

    free = sample()
    assert free.texts[0] == tokenizer.decode(free.tokens[0]) and len(free.texts[0]) > 8
    eos = free.tokens[0][3]
    ended = sample(eos_id=eos)
    first = free.tokens[0].index(eos)
    assert ended.tokens[0] == free.tokens[0][: first + 1] and ended.finish_reasons == ["eos"]
    assert ended.texts[0] == tokenizer.decode(free.tokens[0][:first])

    text = free.texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    pieces = []
    stopped = sample(stop=["zzzz", stop], on_token=lambda row, token, piece: pieces.append(piece))
    assert stopped.finish_reasons == ["stop"] and stopped.texts[0] == text[: text.find(stop)]
    assert free.tokens[0][: len(stopped.tokens[0])] == stopped.tokens[0] and len(stopped.tokens[0]) < 30
    assert "".join(pieces) == stopped.texts[0]  # the stream never shows the stop string
    assert len(pieces) == len(stopped.tokens[0])


def test_generation_arguments_are_checked():
    with pytest.raises(ValueError, match="max_new_tokens=100 exceeds"):
        generate(rope_model(), [[1, 2]], max_new_tokens=100)
    with pytest.raises(ValueError, match="top_p=0"):
        generate(rope_model(), [[1, 2]], max_new_tokens=4, top_p=0, temperature=1.0)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        generate(rope_model(), [[1, 2]], max_new_tokens=4, stop=["\n"])
    with pytest.raises(ValueError, match="causal=False"):
        generate(bidirectional(), [[1, 2]], max_new_tokens=4)


# ---- prompt formats ------------------------------------------------------------------------------------------
def test_prompt_formats_render_their_templates():
    assert {"none", "alpaca", "user_assistant"} <= set(FORMATS)  # the single-turn formats; zoo.data adds chat
    assert UserAssistant().prompt("Hi") == "User: Hi\nAssistant: "
    assert UserAssistant().prompt("Hi") + UserAssistant().response(" Hello") == "User: Hi\nAssistant: Hello"
    alpaca = Alpaca().prompt("Add.", "1 2")
    assert alpaca.endswith("### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n")
    assert alpaca.startswith("Below is an instruction that describes a task, paired with an input")
    assert Alpaca().prompt("Add.").endswith("request.\n\n### Instruction:\nAdd.\n\n### Response:\n")
    assert NoFormat().prompt("def f(") == "def f(" and NoFormat().response(" x") == " x"


# ---- diffusion samplers ------------------------------------------------------------------------------------------
def bidirectional():
    return tiny_backbone(vocab_size=V, attention=lambda d: GroupedQueryAttention(d, n_heads=4, causal=False)).eval()


@pytest.mark.parametrize("sampler", ["low_confidence", "random", "threshold"])
@pytest.mark.parametrize("shift", [False, True])
def test_diffusion_run_ends_with_no_mask_tokens(sampler, shift):
    prompt = torch.randint(0, MASK, (2, 5))
    kwargs = {"mask_id": MASK, "gen_length": 12, "block_length": 4, "shift": shift, "temperature": 0.5,
              "generator": torch.Generator().manual_seed(0)}  # fmt: skip
    if sampler == "threshold":
        out = confidence_threshold(bidirectional(), prompt, threshold=0.5, **kwargs)
    else:
        out = low_confidence_remasking(bidirectional(), prompt, steps=6, remasking=sampler, **kwargs)
    assert out.tokens.shape == (2, 17) and not (out.tokens == MASK).any()
    assert torch.equal(out.tokens[:, :5], prompt) and out.answer.shape == (2, 12)


class Scripted:
    """A fake backbone: fixed logits per position, so which positions are unmasked first is checkable."""

    def __init__(self, preferred, confidence):
        self.preferred, self.confidence = preferred, confidence  # (S,), (S,)
        self.inputs = []

    def __call__(self, x):
        self.inputs.append(x.clone())
        logits = torch.zeros(x.shape[0], x.shape[1], V)
        logits[:, torch.arange(x.shape[1]), self.preferred] = self.confidence
        return logits


def test_low_confidence_remasking_unmasks_the_most_confident_first():
    model = Scripted(torch.tensor([0, 0, 10, 11, 12, 13, 14]), torch.tensor([0.0, 0.0, 1.0, 9.0, 2.0, 8.0, 5.0]))
    out = low_confidence_remasking(model, torch.tensor([[1, 2]]), mask_id=MASK, gen_length=5, block_length=5,
                                   steps=2)  # fmt: skip
    assert model.inputs[1][0, 2:].tolist() == [MASK, 11, MASK, 13, 14]  # step 1: the 3 most confident (5 = 3 + 2)
    assert out.tokens[0].tolist() == [1, 2, 10, 11, 12, 13, 14] and out.forward_passes == 2


def test_blocks_are_generated_left_to_right_whatever_the_confidence():
    model = Scripted(torch.tensor([0, 10, 11, 12, 13]), torch.tensor([0.0, 1.0, 2.0, 9.0, 8.0]))
    low_confidence_remasking(model, torch.tensor([[1]]), mask_id=MASK, gen_length=4, block_length=2, steps=4)
    assert model.inputs[1][0, 1:].tolist() == [MASK, 11, MASK, MASK]  # the confident 2nd block waits for the 1st


def test_threshold_decoding_keeps_every_confident_position():
    confidence = torch.tensor([0.0, 20.0, 1.0, 20.0, 1.0])  # softmax ≈ 1 where 20, ≈ 0.04 where 1
    model = Scripted(torch.tensor([0, 10, 11, 12, 13]), confidence)
    out = confidence_threshold(model, torch.tensor([[1]]), mask_id=MASK, gen_length=4, block_length=4, threshold=0.9)
    assert model.inputs[1][0, 1:].tolist() == [10, MASK, 12, MASK]
    assert out.forward_passes == 3  # then one uncertain position per pass


def test_threshold_near_zero_unmasks_a_block_per_pass():
    out = confidence_threshold(bidirectional(), torch.tensor([[1, 2, 3]]), mask_id=MASK, gen_length=12,
                               block_length=4, threshold=1e-9)  # fmt: skip
    assert out.forward_passes == 3 and not (out.tokens == MASK).any()


def test_diffusion_respects_eos():
    eos = 7
    model = Scripted(torch.tensor([1, 2, 20, eos, 21, 22, 23, 24]), torch.tensor([0.0, 0, 5, 9, 1, 1, 1, 1]))
    out = low_confidence_remasking(model, torch.tensor([[1, 2]]), mask_id=MASK, gen_length=6, block_length=2,
                                   steps=6, eos_id=eos)  # fmt: skip
    assert out.tokens[0].tolist() == [1, 2, 20, eos, eos, eos, eos, eos]
    assert out.forward_passes == 2  # stopped after the block that ended the answer
    model.inputs.clear()
    full = low_confidence_remasking(model, torch.tensor([[1, 2]]), mask_id=MASK, gen_length=6, block_length=2,
                                    steps=6, eos_id=eos, stop_at_eos=False)  # fmt: skip
    assert full.tokens[0].tolist() == out.tokens[0].tolist() and full.forward_passes == 6


def test_seeded_diffusion_sampling_repeats():
    def sample(seed):
        return low_confidence_remasking(bidirectional(), torch.tensor([[1, 2, 3]]), mask_id=MASK, gen_length=8,
                                        block_length=4, steps=4, temperature=2.0, remasking="random",
                                        generator=torch.Generator().manual_seed(seed)).tokens  # fmt: skip

    torch.manual_seed(0)
    first = sample(1)
    torch.manual_seed(0)
    assert torch.equal(first, sample(1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gen_length": 10, "block_length": 4}, "gen_length=10 is not divisible by block_length=4"),
        ({"gen_length": 12, "block_length": 4, "steps": 5}, "steps=5 is not a multiple of the 3 blocks"),
        ({"mask_id": V}, "mask_id=64 is outside"),
        ({"mask_id": -1}, "mask_id=-1 is outside"),
        ({"remasking": "entropy"}, "remasking='entropy' is unknown"),
    ],
)
def test_diffusion_sampler_errors_name_the_value(kwargs, message):
    args = {"mask_id": MASK, "gen_length": 8, "block_length": 4, "steps": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        low_confidence_remasking(bidirectional(), torch.tensor([[1, 2]]), **args)


@pytest.mark.parametrize("threshold", [0, 1.5, -0.1])
def test_threshold_outside_the_unit_interval_is_refused(threshold):
    with pytest.raises(ValueError, match=f"threshold={threshold} must be in"):
        confidence_threshold(bidirectional(), torch.tensor([[1]]), mask_id=MASK, gen_length=4, block_length=4,
                             threshold=threshold)  # fmt: skip


# ---- the command ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.helpers import TINY
    from zoo.commands.fit import ZooCLI

    root = tmp_path_factory.mktemp("fit")
    swap = ["--data.tokenizer.init_args.cache_dir", str(root / "tok"), "--trainer.max_steps", "2",
            "--trainer.limit_val_batches", "1"]  # fmt: skip
    ZooCLI(args=["fit", *TINY, *swap, "--trainer.default_root_dir", str(root), "--trainer.logger", "false"])
    return next(root.rglob("last.ckpt"))


def test_generate_command_prints_each_prompt_and_its_answer(checkpoint, capsys):
    from zoo.commands.generate import main

    common = ["--ckpt", str(checkpoint), "--max-new-tokens", "6", "--format", "user_assistant"]
    main([*common, "--prompt", "def parse(", "--prompt", "import"])
    batched = capsys.readouterr()
    assert batched.out.startswith("User: def parse(\nAssistant: ") and "\nUser: import\nAssistant: " in batched.out
    assert "forward passes" in batched.err
    main([*common, "--prompt", "def parse(", "--prompt", "import", "--stream"])
    assert capsys.readouterr().out == batched.out  # greedy: streamed one by one = batched
    main(["--ckpt", str(checkpoint), "--prompt", "def parse(", "--max-new-tokens", "30", "--stop", r"\n"])
    out = capsys.readouterr().out  # the typed "\n" is a newline: the answer ends before its first one
    assert out.startswith("def parse(") and out.count("\n") == 1 and out.endswith("\n")


def test_generate_command_through_python_m_zoo_and_its_errors(checkpoint, tmp_path, capsys):
    from zoo.cli import main

    main(["generate", "--ckpt", str(checkpoint), "--prompt", "x = ", "--max-new-tokens", "4", "--temperature", "0.8"])
    assert capsys.readouterr().out.startswith("x = ")  # returned normally: exit status 0
    for args, message in [
        (["--ckpt", str(tmp_path / "none.ckpt"), "--prompt", "x"], "none.ckpt"),
        (["--ckpt", str(checkpoint), "--prompt", "x", "--max-new-tokens", "1000"], "max_new_tokens=1000"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("zoo generate:") and message in err


def test_generate_command_rejects_an_unknown_format(checkpoint, capsys):
    from zoo.commands.generate import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(checkpoint), "--prompt", "x", "--format", "chatml"])
    assert exit_info.value.code == 2 and "chatml" in capsys.readouterr().err


def test_generate_command_precision(checkpoint, capsys, monkeypatch):
    """--precision 32-true and bf16-mixed both run and say which ran; auto takes the device's fastest, as training's
    automatic choice does (bf16 units faked both ways)."""
    from zoo.commands.generate import main
    from zoo.training import precision

    common = ["--ckpt", str(checkpoint), "--prompt", "def parse(", "--max-new-tokens", "6"]
    main([*common, "--precision", "32-true"])
    fp32 = capsys.readouterr()
    assert fp32.err.rstrip().endswith("32-true]")
    main([*common, "--precision", "bf16-mixed"])
    assert "bf16-mixed]" in capsys.readouterr().err
    for units in ("AVX512-BF16", None):  # the checkpoint is autoregressive: decoding on a CPU stays fp32
        monkeypatch.setattr(precision, "cpu_bf16_units", lambda units=units: units)
        main([*common, "--device", "cpu"])
        assert "32-true]" in capsys.readouterr().err
        expected = "bf16-mixed" if units else "32-true"  # the diffusion sampler takes bf16 where the CPU has it
        assert precision.inference_autocast("auto", "cpu")[0] == expected
    assert precision.inference_autocast("32-true", "cpu")[0] == "32-true"
    with pytest.raises(ValueError, match="precision='fp16' is unknown"):
        precision.inference_autocast("fp16", "cpu")
