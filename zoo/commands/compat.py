"""zoo's one hook into jsonargparse's private API: a list given later replaces the list given before it.

jsonargparse parses a value with the value it replaces at hand (``prev_val``), so that ``--model.lr 1e-3`` keeps the
rest of ``model``. For a list of dataclasses or ``class_path`` entries it does the same item by item when the new
list has as many items as the old one (``jsonargparse._typehints.adapt_typehints``, the list branch): a recipe's two
hub ``sources`` overridden by ``--data.sources configs/data/stdlib.yaml`` (two sources too) kept the recipe's
``data_files`` and ``text_field`` in the new entries, which then read nothing. A list is a whole value: the one given
on the command line or in a later ``--config`` replaces the earlier one. Appending (``--data.sources+ ...``) and
setting one item's field (a nested key) keep jsonargparse's behaviour. No public setting turns the merge off
(checked against jsonargparse 4.53; tests/commands/test_overrides.py fails if the hook stops taking effect).
"""

from __future__ import annotations

import functools

from jsonargparse import _typehints

_SEQUENCES = _typehints.sequence_origin_types


def install() -> None:
    """Make list values replace the previous value instead of merging into it item by item (idempotent)."""
    if getattr(_typehints.adapt_typehints, "_zoo_replaces_lists", False):
        return
    original = _typehints.adapt_typehints

    @functools.wraps(original)
    def adapt_typehints(val, typehint, *args, **kwargs):
        if isinstance(val, list) and not kwargs.get("append") and not kwargs.get("serialize"):
            if _typehints.get_typehint_origin(typehint) in _SEQUENCES and "prev_val" in kwargs:
                kwargs["prev_val"] = None  # the list given now is the whole value: nothing of the old one merges in
        return original(val, typehint, *args, **kwargs)

    adapt_typehints._zoo_replaces_lists = True
    _typehints.adapt_typehints = adapt_typehints
