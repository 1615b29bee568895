"""Log-likelihood of ``(context, continuation)`` pairs, computed as lm-evaluation-harness computes it for causal LMs.

Tokens (the harness's ``_encode_pair``): trailing whitespace of the context moves to the continuation; the pair is
encoded whole and the context alone, and the continuation is what the whole has beyond the context's tokens. An
empty context becomes the prefix token (end-of-text; when the continuation itself starts with it, that token is
the context). The model sees ``(context + continuation)[-(max_len + 1):][:-1]`` (left truncation), and the
continuation's tokens are scored at the last ``len(continuation)`` positions::

    context  c₁ c₂ c₃ | continuation  x₁ x₂        input  c₁ c₂ c₃ x₁      scored  log p(x₁|c₁..c₃) + log p(x₂|..x₁)

Speed, with the same numbers: a request whose input is a prefix of another's reads that one's positions (causal
attention: the shorter sequence's logits are the longer one's first positions), identical inputs run once, the
remaining inputs run longest first in batches of similar length (right padding, which a causal model never sees),
context encodings are cached across the choices that share them, and the LM head runs only at the scored
positions. Perplexity tasks score rolling windows of ``max_len`` tokens, each conditioned on the token before it
(the harness's ``get_rolling_token_windows`` with ``context_len=1``).

Masked-diffusion models have no exact likelihood: :class:`ElboScorer` estimates a lower bound
(:func:`zoo.objectives.elbo_loglikelihood`) for the same token pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

TokenPair = tuple[list[int], list[int]]


class Scorer:
    """Tokenization shared by the causal and the diffusion scorers.

    Args:
        tokenizer: the model's tokenizer.
        prefix_id: the token an empty context is replaced by (the end-of-text token, as the harness's
            ``prefix_token_id`` for a tokenizer whose BOS is its EOS).
        max_length: the model's context (``backbone.max_seq_len``).
    """

    elbo = False

    def __init__(self, *, tokenizer: Tokenizer, prefix_id: int, max_length: int) -> None:
        self.tokenizer, self.prefix_id, self.max_length = tokenizer, prefix_id, max_length
        self._cache: dict[tuple[str, bool], list[int]] = {}

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        key = (text, special)
        ids = self._cache.get(key)
        if ids is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            ids = self._cache[key] = self.tokenizer.encode(text, add_special_tokens=special).ids
        return ids

    def encode_pair(self, context: str, continuation: str) -> TokenPair:
        if context == "":
            cont = self.encode(continuation, special=False)
            if cont and cont[0] == self.prefix_id:
                return cont[:1], cont[1:]
            return [self.prefix_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx) :]

    def rolling_windows(self, text: str) -> list[TokenPair]:
        """Disjoint windows covering every token of ``text`` once: the first conditioned on the prefix token,
        each later one on the ``max_length`` tokens before it (at most)."""
        tokens = self.encode(text)
        L = self.max_length
        if not tokens:
            return []
        first = min(L, len(tokens))
        windows = [([self.prefix_id], tokens[:first])]
        done = first
        while done < len(tokens):
            n = min(len(tokens) - done, L)
            end = done + n
            windows.append((tokens[max(end - L - 1, 0) : done], tokens[done:end]))
            done = end
        return windows

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), whether greedy decoding gives the continuation)`` per request."""
        return self.score_tokens([self.encode_pair(c, x) for c, x in requests])

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        """Total log-likelihood of each text, over rolling windows."""
        windows = [self.rolling_windows(text) for text in texts]
        scores = iter(self.score_tokens([w for ws in windows for w in ws]))
        return [sum(next(scores)[0] for _ in ws) for ws in windows]

    def score_tokens(self, pairs: list[TokenPair]) -> list[tuple[float, bool]]:
        raise NotImplementedError


class CausalScorer(Scorer):
    """Exact log-likelihoods from a causal backbone (``backbone(ids (B, T)) -> logits (B, T, V)``).

    Args:
        backbone: the model's network (``CausalLM.backbone``); a :class:`zoo.nn.Transformer` runs its LM head only
            at the scored positions.
        batch_size: sequences per forward pass.
        share_contexts: run a context shared by several requests once (KV cache) when the backbone has
            ``new_cache`` (a :class:`zoo.nn.Transformer`).
        min_shared: the shortest context (in tokens) worth sharing.
        tokenizer, prefix_id, max_length: see :class:`Scorer`.
    """

    def __init__(self, *, backbone: nn.Module, tokenizer: Tokenizer, prefix_id: int, max_length: int,
                 batch_size: int = 32, share_contexts: bool = True, min_shared: int = 8) -> None:  # fmt: skip
        super().__init__(tokenizer=tokenizer, prefix_id=prefix_id, max_length=max_length)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be ≥ 1")
        self.backbone, self.batch_size = backbone, batch_size
        self.share_contexts, self.min_shared = share_contexts, min_shared

    @torch.inference_mode()
    def score_tokens(self, pairs: list[TokenPair]) -> list[tuple[float, bool]]:
        for _, cont in pairs:
            if not cont:
                raise ValueError("a request has an empty continuation (nothing to score)")
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        rest = list(range(len(pairs)))
        if self.share_contexts and hasattr(self.backbone, "new_cache"):
            rest = self._score_shared_contexts(pairs, results)
        for r, score in zip(rest, self._score_batched([pairs[r] for r in rest])):
            results[r] = score
        return results

    def _score_shared_contexts(self, pairs: list[TokenPair], results: list) -> list[int]:
        """Requests that share a context of ``min_shared`` tokens or more (the choices of a multiple-choice
        question): the context runs once into a KV cache, copied to one row per continuation, and the
        continuations run on it. Returns the requests left to the batched path."""
        by_context: dict[tuple, list[int]] = {}
        rest = []
        for r, (ctx, cont) in enumerate(pairs):
            if len(ctx) + len(cont) <= self.max_length + 1 and len(ctx) >= self.min_shared:
                by_context.setdefault(tuple(ctx), []).append(r)
            else:
                rest.append(r)
        device = next(self.backbone.parameters()).device
        for ctx, members in by_context.items():
            if len(members) < 2:
                rest += members
                continue
            conts = [pairs[r][1] for r in members]
            longest = max(len(c) for c in conts) - 1  # a continuation's last token is only a target
            cache = self.backbone.new_cache(1, len(ctx) + longest)
            last = self.backbone.features(torch.tensor([ctx], device=device), cache=cache)[0, -1]  # (C,)
            hidden = [last[None]] * len(conts)  # the context's last position predicts every continuation's first
            if longest > 0:
                ids = torch.zeros(len(conts), longest, dtype=torch.long)
                for i, cont in enumerate(conts):
                    ids[i, : len(cont) - 1] = torch.tensor(cont[:-1])
                out = self.backbone.features(ids.to(device), cache=_repeat_rows(cache, len(conts)))  # (n, M, C)
                hidden = [torch.cat([last[None], out[i, : len(c) - 1]]) for i, c in enumerate(conts)]
            scores = self._scores(torch.cat(hidden), [c for c in conts], device)
            for r, score in zip(members, scores):
                results[r] = score
        return rest

    def _scores(self, hidden, targets: list[list[int]], device) -> list[tuple[float, bool]]:
        """(sum of log-probs, all greedy) per request from the hidden states of their scored positions."""
        logprobs = F.log_softmax(self.backbone.head(hidden).float(), dim=-1)  # (N, V)
        tok = torch.tensor([t for ts in targets for t in ts], device=device)
        picked = logprobs.gather(1, tok[:, None])[:, 0].double().cpu()
        greedy = (logprobs.argmax(dim=-1) == tok).cpu()
        out, i = [], 0
        for ts in targets:
            out.append((float(picked[i : i + len(ts)].sum()), bool(greedy[i : i + len(ts)].all())))
            i += len(ts)
        return out

    def _score_batched(self, pairs: list[TokenPair]) -> list[tuple[float, bool]]:
        L = self.max_length
        # Each request: its model input and the targets of its last `n` positions.
        inputs, targets = [], []
        for ctx, cont in pairs:
            whole = (ctx + cont)[-(L + 1) :]
            inputs.append(tuple(whole[:-1]))
            targets.append(whole[-min(len(cont), len(whole) - 1) :])
        # Host sequences: an input that is a prefix of another is read from it. In sorted order an input's
        # immediate successor starts with it whenever any input does.
        order = sorted(set(inputs))
        host: dict[tuple, tuple] = {}
        for i in range(len(order) - 1, -1, -1):
            seq = order[i]
            nxt = order[i + 1] if i + 1 < len(order) else None
            host[seq] = host[nxt] if nxt is not None and nxt[: len(seq)] == seq else seq
        rows = sorted(set(host.values()), key=len, reverse=True)
        row_of = {seq: i for i, seq in enumerate(rows)}
        wanted: list[list[tuple[int, int, list[int]]]] = [[] for _ in rows]  # per row: (request, start, targets)
        for r, (inp, tgt) in enumerate(zip(inputs, targets)):
            wanted[row_of[host[inp]]].append((r, len(inp) - len(tgt), tgt))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        device = next(self.backbone.parameters()).device
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            T = len(batch[0])
            ids = torch.zeros(len(batch), T, dtype=torch.long)
            for b, seq in enumerate(batch):
                ids[b, : len(seq)] = torch.tensor(seq)
            b_idx, t_idx, tok, owner = [], [], [], []
            for b in range(len(batch)):
                for r, first, tgt in wanted[start + b]:
                    b_idx += [b] * len(tgt)
                    t_idx += range(first, first + len(tgt))
                    tok += tgt
                    owner += [r] * len(tgt)
            b_t, t_t = torch.tensor(b_idx, device=device), torch.tensor(t_idx, device=device)
            logits = self._logits(ids.to(device), b_t, t_t)
            logprobs = F.log_softmax(logits.float(), dim=-1)  # (N, V)
            tok_t = torch.tensor(tok, device=device)
            picked = logprobs.gather(1, tok_t[:, None])[:, 0].double().cpu()
            greedy = (logprobs.argmax(dim=-1) == tok_t).cpu()
            owner_t = torch.tensor(owner)
            sums = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, owner_t, picked)
            miss = torch.zeros(len(pairs), dtype=torch.long).index_add_(0, owner_t, (~greedy).long())
            for r in set(owner):
                results[r] = (float(sums[r]), bool(miss[r] == 0))
        return results

    def _logits(self, ids, b_idx, t_idx):  # (B, T), (N,), (N,) -> (N, V)
        if hasattr(self.backbone, "features") and hasattr(self.backbone, "head"):
            hidden = self.backbone.features(ids)  # (B, T, C)
            return self.backbone.head(hidden[b_idx, t_idx])
        return self.backbone(ids)[b_idx, t_idx]


def _repeat_rows(state, n: int):
    """A copy of a decoding cache with its one row repeated ``n`` times: every tensor whose first (batch)
    dimension is 1, in the cache's objects, dicts and lists (KV caches, Canon buffers)."""
    if isinstance(state, torch.Tensor):
        return state.repeat(n, *([1] * (state.dim() - 1))) if state.dim() > 0 and state.shape[0] == 1 else state
    if isinstance(state, dict):
        return {k: _repeat_rows(v, n) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_repeat_rows(v, n) for v in state)
    if hasattr(state, "__dict__"):
        copy = object.__new__(type(state))
        copy.__dict__.update({k: _repeat_rows(v, n) for k, v in vars(state).items()})
        return copy
    return state


class ElboScorer(Scorer):
    """Monte-Carlo ELBO lower bounds on ``log p(continuation | context)`` from a masked-diffusion model.

    Args:
        model: the masked-diffusion network (``backbone(ids) -> logits``), or a ``MaskedDiffusionLM``.
        mask_id: its mask token (``None``: the ``MaskedDiffusionLM``'s).
        shift: its logits at position ``i`` predict token ``i + 1`` (``None``: as the ``MaskedDiffusionLM``).
        mc_num: Monte-Carlo samples per request.
        batch_size: samples per forward pass.
        seed: each request's masks are seeded by this, so a figure is reproducible.
        tokenizer, prefix_id, max_length: see :class:`Scorer`.
    """

    elbo = True

    def __init__(self, *, model: nn.Module, mask_id: int | None = None, shift: bool | None = None,
                 tokenizer: Tokenizer, prefix_id: int, max_length: int, mc_num: int = 128, batch_size: int = 32,
                 seed: int = 0) -> None:  # fmt: skip
        super().__init__(tokenizer=tokenizer, prefix_id=prefix_id, max_length=max_length)
        if mc_num < 1:
            raise ValueError(f"mc_num={mc_num} must be ≥ 1")
        self.model, self.mc_num, self.batch_size, self.seed = model, mc_num, batch_size, seed
        self.mask_id, self.shift = mask_id, shift

    def score_tokens(self, pairs: list[TokenPair]) -> list[tuple[float, bool]]:
        from zoo.objectives.elbo import elbo_loglikelihood

        device = next(self.model.parameters()).device
        done: dict[tuple, float] = {}
        out = []
        for ctx, cont in pairs:
            cont = cont[-self.max_length :]
            ctx = ctx[max(len(ctx) - (self.max_length - len(cont)), 0) :] if len(cont) < self.max_length else []
            key = (tuple(ctx), tuple(cont))
            if key not in done:
                done[key] = elbo_loglikelihood(
                    self.model, torch.tensor(ctx, device=device), torch.tensor(cont, device=device),
                    mask_id=self.mask_id, shift=self.shift, mc_num=self.mc_num, batch_size=self.batch_size,
                    seed=self.seed,
                )  # fmt: skip
            out.append((done[key], False))
        return out

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        raise ValueError(
            "perplexity tasks (loglikelihood_rolling, e.g. wikitext) are not supported for masked-diffusion "
            "checkpoints: they have no exact likelihood; evaluate them on multiple-choice tasks"
        )
