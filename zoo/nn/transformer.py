"""The backbone: token embedding → blocks → final norm → LM head.

::

    input_ids (B, T)
        │ embed (+ position.absolute)            (B, T, C)
        ▼
    block × n_layers   ◀── rope tables (cos, sin) computed once per forward from position.rotary
        │                                        (B, T, C)
    final norm ─ head (tied to embed or not)     (B, T, V)

Initialisation (GPT-2 / nanoGPT): every Linear and Embedding weight ~ N(0, ``init_std``), biases zero,
norms at their identity; projections that write into the residual stream (attention output, FFN down)
~ N(0, ``init_std / sqrt(2 · n_layers)``) when ``scale_residual_init`` (so the stream's variance does not
grow with depth). Each module owns ``init_weights(*, std, residual_std)`` and knows which of its projections
write into the stream; the backbone calls it on its blocks, position encoding and final norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zoo.compat import AfterConversion
from zoo.nn.cache import ModuleCache
from zoo.nn.position import PositionEncoding


class Transformer(AfterConversion):
    """A decoder-style transformer backbone with pluggable blocks, norm and position encoding.

    Args:
        vocab_size: rows of the embedding and LM head; must be ≥ the tokenizer's vocabulary.
        dim: model width C.
        n_layers: number of blocks.
        max_seq_len: longest sequence (training or prompt + generation) the model accepts.
        block: factory ``block(dim)`` of one block, e.g. :class:`zoo.nn.PreNormBlock`; called once per layer.
        norm: factory ``norm(dim)`` of the final norm.
        position: factory ``position(dim, head_dim, max_seq_len)``: :class:`zoo.nn.Rotary`,
            :class:`zoo.nn.LearnedPositions` or :class:`zoo.nn.NoPositions`.
        tie_embeddings: share the embedding matrix with the LM head.
        init_std: standard deviation of the normal initialisation.
        scale_residual_init: divide the std of residual projections by ``sqrt(2 · n_layers)``.
        scale_embeddings: multiply token embeddings by ``sqrt(dim)`` (Gemma; the factor is rounded to the
            embedding's dtype, as Gemma does).
        activation_checkpointing: in training, keep only each block's input and recompute the block's
            activations during the backward pass (``torch.utils.checkpoint``): less memory for about one more
            forward pass of compute. Results are unchanged.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        dim: int,
        n_layers: int,
        max_seq_len: int,
        block: Callable[[int], nn.Module],
        norm: Callable[[int], nn.Module],
        position: Callable[[int, int, int], PositionEncoding],
        tie_embeddings: bool = True,
        init_std: float = 0.02,
        scale_residual_init: bool = True,
        scale_embeddings: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("dim", dim), ("n_layers", n_layers)):
            if value < 1:
                raise ValueError(f"Transformer {name}={value} must be ≥ 1")
        if max_seq_len < 1:
            raise ValueError(f"Transformer max_seq_len={max_seq_len} must be ≥ 1")
        self.vocab_size, self.dim, self.n_layers, self.max_seq_len = vocab_size, dim, n_layers, max_seq_len
        self.tie_embeddings, self.init_std, self.scale_residual_init = tie_embeddings, init_std, scale_residual_init
        self.scale_embeddings, self.activation_checkpointing = scale_embeddings, activation_checkpointing
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(block(dim) for _ in range(n_layers))
        self.head_dim = self.blocks[0].head_dim
        self.position = position(dim, self.head_dim, max_seq_len)
        self.norm = norm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        self.init_weights()

    @torch.no_grad()
    def after_conversion(self) -> None:
        # A conversion gives every module a new Parameter when the converted tensor cannot take the old one's
        # place (a move to torch_xla's device; any conversion under torch.__future__'s
        # overwrite_module_params_on_conversion), which unties the head from the embedding: after
        # `.to(xla_device)` the head trained as a matrix of its own and the embedding lost its gradient. Re-tie.
        if self.tie_embeddings and self.head.weight is not self.embed.weight:
            self.head.weight = self.embed.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every weight (see the module docstring); each component initialises its own."""
        std = self.init_std
        residual_std = std / math.sqrt(2 * self.n_layers) if self.scale_residual_init else std
        nn.init.normal_(self.embed.weight, std=std)
        for module in (*self.blocks, self.position, self.norm):
            module.init_weights(std=std, residual_std=residual_std)
        if not self.tie_embeddings:
            nn.init.normal_(self.head.weight, std=std)

    @property
    def causal(self) -> bool:
        """Whether every block masks future positions (autoregressive). Setting it switches every block: masked
        diffusion sets it false, and its conversion schedules then supply any causality through the mask."""
        return all(block.causal for block in self.blocks)

    @causal.setter
    def causal(self, value: bool) -> None:
        for block in self.blocks:
            block.causal = value

    def features(
        self,
        input_ids: Tensor,  # (B, T)
        *,
        mask: Tensor | None = None,  # (B or 1, 1, T, S) bool, True = may attend; extra to each layer's causality
        cache: DecodingCache | None = None,
        positions: Tensor | None = None,  # (T,) absolute positions; default: consecutive, after the cache
    ) -> Tensor:  # (B, T, C), after the final norm
        T = input_ids.shape[1]
        if cache is not None and cache.static:  # checked against max_seq_len when built; nothing read back here
            positions = cache.positions(T, device=input_ids.device) if positions is None else positions
        elif positions is None:
            start = cache.length if cache is not None else 0
            if start + T > self.max_seq_len:
                raise ValueError(
                    f"sequence of {start + T} tokens exceeds max_seq_len={self.max_seq_len}: shorten the input "
                    "(data.seq_len / generation length) or build the model with a larger max_seq_len"
                )
            positions = torch.arange(start, start + T, device=input_ids.device)
        elif not torch.compiler.is_compiling() and int(positions.max()) >= self.max_seq_len:
            # (compiled training skips this read of a tensor, a graph break: the objectives' positions there
            # come from data.seq_len, which setup checks against max_seq_len)
            raise ValueError(f"position {int(positions.max())} is beyond max_seq_len={self.max_seq_len}")
        x = self.embed(input_ids)  # (B, T, C)
        if self.scale_embeddings:
            x = x * torch.tensor(self.dim**0.5, dtype=x.dtype)
        absolute = self.position.absolute(positions)
        if absolute is not None:
            x = x + absolute
        rope = self.position.rotary(positions)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, block in enumerate(self.blocks):
            if recompute:  # non-reentrant: keyword arguments, and parameters' gradients flow as usual
                x = checkpoint(block, x, rope=rope, mask=mask, cache=None, use_reentrant=False)
            else:
                x = block(x, rope=rope, mask=mask, cache=cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    def forward(
        self,
        input_ids: Tensor,
        *,
        mask: Tensor | None = None,
        cache: DecodingCache | None = None,
        positions: Tensor | None = None,
        features_only: bool = False,
    ) -> Tensor:  # (B, T) -> logits (B, T, V), or the head's input (B, T, C) with ``features_only``
        x = self.features(input_ids, mask=mask, cache=cache, positions=positions)
        return x if features_only else self.head(x)

    def auxiliary_loss(self) -> Tensor | None:
        """Sum of the ``aux_loss`` tensors that submodules (e.g. a routed FFN's load-balancing term) set during
        the last forward pass, already scaled by their own coefficients; ``None`` when no module has one."""
        losses = [m.aux_loss for m in self.modules() if getattr(m, "aux_loss", None) is not None]
        return torch.stack(losses).sum() if losses else None

    def new_cache(
        self, batch_size: int, max_len: int | None = None, *, static: bool = False, device=None, dtype=None
    ) -> DecodingCache:
        """Empty decoding state for ``batch_size`` sequences of up to ``max_len`` (default ``max_seq_len``) tokens,
        on ``device`` in ``dtype`` (default: the weights'). ``static``: fixed shapes for a compiled decoding step
        (:class:`DecodingCache`)."""
        max_len = self.max_seq_len if max_len is None else max_len
        if static and max_len > self.max_seq_len:
            raise ValueError(
                f"a static cache of {max_len} positions exceeds the model's max_seq_len={self.max_seq_len}: "
                "shorten the request"
            )
        weight = self.embed.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        layers = [block.new_cache(batch_size, max_len, device=device, dtype=dtype) for block in self.blocks]
        return DecodingCache(layers, max_len=max_len, static=static, device=device)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward) at context ``seq_len``, after PaLM (Chowdhery et al.,
        2022, app. B): ``6·N + 12·L·(H·D)·T``. ``N`` counts every weight a token uses in a matmul: all
        parameters but the embedding tables, plus the LM head even when tied, minus the routed experts it is not
        sent to (:meth:`inactive_parameters`); the second term is attention's scores and weighted sum (full, not
        halved for causality, as in the usual MFU convention)."""
        n_matmul = self.num_parameters(embeddings=False) + self.head.weight.numel() * self.tie_embeddings
        n_matmul -= self.inactive_parameters()
        attention_width = sum(block.attention_width for block in self.blocks)
        return 6.0 * n_matmul + 12.0 * attention_width * seq_len

    def inactive_parameters(self) -> int:
        """Parameters a token does not use (routed experts it is not sent to); 0 for dense models."""
        return sum(m.inactive_parameters() for m in self.blocks.modules() if hasattr(m, "inactive_parameters"))

    def num_parameters(self, *, embeddings: bool = True) -> int:
        """Unique parameters; ``embeddings=False`` leaves out the token (and learned position) embeddings, and
        the head when it is tied to them. Routed experts count in full (see :meth:`inactive_parameters`)."""
        params = {id(p): p for p in self.parameters()}
        if not embeddings:
            params.pop(id(self.embed.weight), None)
            for p in self.position.parameters():
                params.pop(id(p), None)
        return sum(p.numel() for p in params.values())


class DecodingCache:
    """A backbone's decoding state: one state per layer (:class:`zoo.nn.block.BlockCache`, typed as
    :mod:`zoo.nn.cache` describes) and the position where the next pass starts.

    Dynamic (default): ``length`` counts the positions already processed, in Python, and attention reads the
    filled positions only. Static (``static=True``): the position is ``cursor``, a 0-dim tensor moved in place, and
    attention reads every position of the preallocated buffers under a mask; a decoding step then has the same
    shapes and the same Python state at every position, what a compiled step needs (``torch.compile``).
    """

    def __init__(self, layers: list, *, max_len: int, static: bool = False, device=None) -> None:
        self.layers = layers
        self.max_len = max_len
        self._length = 0
        self.cursor: Tensor | None = None  # () int64, static only
        if static:
            self.cursor = torch.zeros((), dtype=torch.long, device=device)
            for layer in self.states():
                layer.follow(self.cursor)

    def states(self) -> list[ModuleCache]:
        """The layers' states (a layer keeping none is left out)."""
        return [layer for layer in self.layers if isinstance(layer, ModuleCache)]

    def leaves(self) -> list[ModuleCache]:
        """Every leaf state of every layer (keys and values, convolution tails)."""
        return [leaf for layer in self.states() for leaf in layer.leaves()]

    @property
    def static(self) -> bool:
        return self.cursor is not None

    @property
    def rewindable(self) -> bool:
        """Whether :meth:`seek` can move back (only keys and values, dynamic)."""
        return all(leaf.rewindable for leaf in self.leaves())

    @property
    def masked(self) -> bool:
        """Whether every layer reads past positions only through attention's mask (no convolution tail): then a
        masked position, such as a left pad, changes nothing."""
        return all(leaf.masked for leaf in self.leaves())

    @property
    def length(self) -> int:
        """Positions processed so far (the next pass starts here). Static: read from the cursor."""
        return self._length if self.cursor is None else int(self.cursor)

    @length.setter
    def length(self, value: int) -> None:
        if self.cursor is None:
            self._length = value
        else:
            self.cursor.fill_(value)

    def positions(self, T: int, *, device) -> Tensor:  # (T,): the absolute positions of the next pass's tokens
        if self.cursor is None:
            return torch.arange(self._length, self._length + T, device=device)
        return self.cursor + torch.arange(T, device=device)

    def advance(self, T: int) -> None:
        """A pass of ``T`` tokens is done."""
        if self.cursor is None:
            self._length += T
        else:
            self.cursor += T

    @property
    def filled(self) -> int:
        """Positions holding keys and values (past :attr:`length` after a :meth:`seek` back)."""
        return max((leaf.filled for leaf in self.leaves() if leaf.filled is not None), default=self.length)

    def seek(self, position: int) -> None:
        """Start the next pass at ``position``: its tokens get positions ``position, position + 1, …`` and their keys
        and values replace those cached there, while attention still reads every cached position (prefix and
        suffix). Masked-diffusion samplers use it to re-encode a block between cache refreshes. Only keys and
        values can be rewound; a layer with other state (a Canon convolution's tail) is refused."""
        for i, layer in enumerate(self.states()):
            if not layer.rewindable:
                kept = sorted({type(leaf).__name__ for leaf in layer.leaves() if not leaf.rewindable})
                raise ValueError(
                    f"decoding state of layer {i} holds {kept} besides keys and values: it cannot be rewound (use "
                    "the sampler without a KV cache for backbones with Canon layers)"
                )
        for layer in self.states():
            layer.seek(position)
        self._length = position
