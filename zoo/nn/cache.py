"""Decoding state: what each module keeps between the passes of incremental decoding, typed.

Every module that keeps state builds its own with ``new_cache(batch_size, max_len, *, device, dtype)``; a module
made of others (a block, an attention with a Canon-B layer) holds its parts' states in named fields. A state says
what it can do, so samplers ask it rather than the modules::

    DecodingCache                      (zoo.nn.transformer: one per backbone, the next position)
    └─ BlockCache × n_layers           (zoo.nn.block)
       ├─ attention: AttentionCache    (zoo.nn.attention)
       │  ├─ kv: KVCache               keys and values          rewindable, read through attention's mask
       │  └─ canon_b: ConvTail | None  (zoo.nn.canon)           the last inputs of a convolution: neither
       ├─ canon_a, canon_c: ConvTail | None
       └─ ffn: ConvTail | None         (Canon-D of a gated FFN)

* ``rewindable``: a pass may start again at an earlier position (``seek``) and rewrite the state from there on,
  while later positions stay readable (masked-diffusion samplers re-encode a block this way).
* ``masked``: every past position the module reads, it reads through the attention mask, so a masked position (a
  left pad) changes nothing. A convolution reads its predecessors whatever the mask says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields, is_dataclass

from torch import nn


class ModuleCache:
    """Base of every module's decoding state. A leaf state (keys and values, a convolution's tail) overrides
    :attr:`rewindable` and :attr:`masked`; a compound state (a dataclass whose fields are the states of its parts,
    or ``None`` for a part without one) answers for its parts."""

    filled: int | None = None  # positions holding keys and values (states that hold some)

    def parts(self) -> Iterator[ModuleCache]:
        """The states this one holds (its dataclass fields that are states)."""
        if is_dataclass(self):
            for f in fields(self):
                value = getattr(self, f.name)
                if isinstance(value, ModuleCache):
                    yield value

    def leaves(self) -> Iterator[ModuleCache]:
        """Every leaf state below this one (itself, for a leaf)."""
        parts = list(self.parts())
        if not parts and not is_dataclass(self):
            yield self
        for part in parts:
            yield from part.leaves()

    @property
    def rewindable(self) -> bool:
        return all(leaf.rewindable for leaf in self.leaves())

    @property
    def masked(self) -> bool:
        return all(leaf.masked for leaf in self.leaves())

    def seek(self, position: int) -> None:
        """Make the next pass write from ``position`` on (rewindable states only)."""
        for leaf in self.leaves():
            leaf.seek(position)

    def follow(self, cursor) -> None:
        """Static decoding: take the position of each pass's first token from ``cursor`` (a 0-dim integer tensor
        the backbone moves) instead of counting in Python. States that do not depend on the position ignore it."""
        for part in self.parts():
            part.follow(cursor)


def new_cache_of(module: nn.Module | None, batch_size: int, max_len: int, *, device, dtype) -> ModuleCache | None:
    """``module``'s empty decoding state, or ``None`` for a module that keeps none (no ``new_cache``: an FFN
    without Canon-D, a norm) or no module at all."""
    new_cache = getattr(module, "new_cache", None)
    return None if new_cache is None else new_cache(batch_size, max_len, device=device, dtype=dtype)
