"""zoo.eval.scoring: the harness's token handling (trailing space, empty context, left truncation, rolling
windows) and batched scoring equal to one full forward per request on a tiny random zoo Transformer."""

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from tests.helpers import tiny_backbone
from zoo.data.tokenizer import EOS, train_bpe
from zoo.eval.scoring import CausalScorer, ElboScorer
from zoo.nn import GroupedQueryAttention
from zoo.objectives import MaskedDiffusionLM, elbo_loglikelihood

TEXT = ["Question: which gas do plants absorb?\nAnswer: carbon dioxide, oxygen and water vapour.",
        "The quick brown fox jumps over the lazy dog. A question and an answer."] * 20  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_bpe(TEXT, vocab_size=300)


def scorer(tokenizer, *, max_length=64, batch_size=3, backbone=None):
    backbone = backbone or tiny_backbone(vocab_size=tokenizer.get_vocab_size(), max_seq_len=64).eval()
    return CausalScorer(backbone=backbone, tokenizer=tokenizer, prefix_id=tokenizer.token_to_id(EOS),
                        max_length=max_length, batch_size=batch_size)  # fmt: skip


def reference(backbone, ctx: list[int], cont: list[int], max_length: int) -> tuple[float, bool]:
    """One full forward on this request alone: the harness's _loglikelihood_tokens for one request."""
    whole = (ctx + cont)[-(max_length + 1) :]
    inp = torch.tensor(whole[:-1])[None]
    logprobs = F.log_softmax(backbone(inp)[0].float(), dim=-1)[-len(cont) :]  # (len(cont), V)
    target = torch.tensor(cont)
    return logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def test_trailing_space_moves_to_the_continuation(tokenizer):
    s = scorer(tokenizer)
    ctx, cont = s.encode_pair("Question: which gas?\nAnswer: ", "carbon")
    assert (ctx, cont) == s.encode_pair("Question: which gas?\nAnswer:", " carbon")
    assert ctx == tokenizer.encode("Question: which gas?\nAnswer:").ids
    assert ctx + cont == tokenizer.encode("Question: which gas?\nAnswer: carbon").ids


def test_empty_context_is_the_prefix_token(tokenizer):
    s = scorer(tokenizer)
    eos = tokenizer.token_to_id(EOS)
    assert s.encode_pair("", " The fox") == ([eos], tokenizer.encode(" The fox").ids)
    # a continuation that starts with the prefix token conditions on it instead
    ids = tokenizer.encode(EOS + "The fox").ids
    assert ids[0] == eos and s.encode_pair("", EOS + "The fox") == ([eos], ids[1:])


def test_batched_scores_equal_one_forward_per_request(tokenizer):
    s = scorer(tokenizer, batch_size=3)
    requests = [("Question: which gas do plants absorb?\nAnswer:", c) for c in (" carbon dioxide", " oxygen", " water")]
    requests += [("The quick brown", " fox"), ("The quick brown", " fox jumps"), ("The quick brown fox", " jumps"),
                 ("", " The lazy dog."), ("A question", " and an answer."), ("The quick brown", " fox")]  # fmt: skip
    got = s.loglikelihood(requests)
    for (context, continuation), (ll, greedy) in zip(requests, got):
        want_ll, want_greedy = reference(s.backbone, *s.encode_pair(context, continuation), 64)
        assert ll == pytest.approx(want_ll, abs=1e-4) and greedy == want_greedy
    assert got[4] != got[5] and got[3] == got[-1]  # " fox jumps" vs " jumps" after "fox"; a repeat scores the same
    # batch size does not change a score
    one = scorer(tokenizer, batch_size=1, backbone=s.backbone).loglikelihood(requests)
    assert [a for a, _ in one] == pytest.approx([a for a, _ in got], abs=1e-4)


@pytest.mark.parametrize("canon", [False, True])
def test_shared_contexts_run_once_with_the_same_scores(tokenizer, canon):
    from zoo.nn import Canon

    V = tokenizer.get_vocab_size()
    backbone = tiny_backbone(vocab_size=V, canon_a=Canon if canon else None, canon_c=Canon if canon else None).eval()
    shared = scorer(tokenizer, backbone=backbone)
    shared.min_shared = 2
    context = "Question: which gas do plants absorb?\nAnswer:"
    requests = [(context, c) for c in (" carbon dioxide", " oxygen", " water vapour and more", " a")]
    calls = []
    backbone.register_forward_hook(lambda *a: calls.append(1))
    got = shared.loglikelihood(requests)
    assert calls == []  # the shared path calls features() directly, never the full forward
    for (ctx, cont), (ll, greedy) in zip(requests, got):
        want_ll, want_greedy = reference(backbone, *shared.encode_pair(ctx, cont), 64)
        assert ll == pytest.approx(want_ll, abs=1e-4) and greedy == want_greedy
    shared.share_contexts = False
    assert [a for a, _ in shared.loglikelihood(requests)] == pytest.approx([a for a, _ in got], abs=1e-4)


def test_left_truncation_to_the_model_context(tokenizer):
    s = scorer(tokenizer, max_length=8)
    context, continuation = TEXT[0], " oxygen"
    ctx, cont = s.encode_pair(context, continuation)
    assert len(ctx) + len(cont) > 9
    (ll, _), = s.loglikelihood([(context, continuation)])  # fmt: skip
    # the model saw only the last 8 tokens of context + continuation[:-1]
    assert ll == pytest.approx(reference(s.backbone, ctx[-(9 - len(cont)) :], cont, 8)[0], abs=1e-4)
    assert ll != pytest.approx(reference(s.backbone, ctx[-20:], cont, 64)[0], abs=1e-4)


def test_rolling_windows_cover_each_token_once(tokenizer):
    s = scorer(tokenizer, max_length=32)
    text = TEXT[0] + " " + TEXT[1]
    tokens = tokenizer.encode(text).ids
    assert 64 < len(tokens) <= 96
    windows = s.rolling_windows(text)
    eos = tokenizer.token_to_id(EOS)
    assert windows[0] == ([eos], tokens[:32])
    assert windows[1] == (tokens[31:32], tokens[32:64])
    end = len(tokens)
    assert windows[2] == (tokens[end - 33 : 64], tokens[64:end])  # the last window sees 32 tokens of context
    assert [t for _, cont in windows for t in cont] == tokens
    total = s.loglikelihood_rolling([text])[0]
    assert total == pytest.approx(sum(s.score_tokens(windows)[i][0] for i in range(3)), abs=1e-4)
    # a text within one window: log p(tokens | prefix) from one forward
    short = scorer(tokenizer, max_length=64, backbone=s.backbone)
    want = reference(s.backbone, [eos], tokenizer.encode(TEXT[1]).ids, 64)[0]
    assert short.loglikelihood_rolling([TEXT[1]])[0] == pytest.approx(want, abs=1e-4)


def test_diffusion_scores_are_elbo_bounds_and_refuse_perplexity(tokenizer):
    V = tokenizer.get_vocab_size()
    backbone = tiny_backbone(vocab_size=V + 1, attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2,
                                                                                          causal=False))  # fmt: skip
    model = MaskedDiffusionLM(backbone=backbone, mask_id=V).eval()
    s = ElboScorer(model=model, tokenizer=tokenizer, prefix_id=tokenizer.token_to_id(EOS), max_length=64, mc_num=4)
    assert s.elbo
    (ll, greedy), = s.loglikelihood([("The quick brown", " fox")])  # fmt: skip
    ctx, cont = s.encode_pair("The quick brown", " fox")
    assert ll == elbo_loglikelihood(model, torch.tensor(ctx), torch.tensor(cont), mc_num=4) and greedy is False
    with pytest.raises(ValueError, match="not supported for masked-diffusion checkpoints"):
        s.loglikelihood_rolling(["text"])
    from zoo.eval.metrics import evaluate
    from zoo.eval.tasks import builtin_tasks

    with pytest.raises(ValueError, match="lambada_openai: its acc is whether greedy decoding"):
        evaluate([builtin_tasks()["lambada_openai"]], s, task_files={"lambada_openai": "unused.jsonl"},
                 documents={"lambada_openai": [{"text": "a b c"}]})  # fmt: skip
