"""The classes a checkpoint may name: nothing is imported on a file's say-so.

A checkpoint's hyperparameters name classes as strings (``_class_path: zoo.objectives.CausalLM``, nested
``class_path`` entries for the backbone, its blocks, the optimizer and the schedule), and loading it imports them:
``LanguageModel.from_checkpoint`` imports the objective, jsonargparse every nested class when Lightning rebuilds the
model. A weights-only checkpoint is plain data, but a class path in it is an instruction to import a module, which
runs that module's code (``this`` prints the Zen of Python, an ``evilmod.py`` in the working directory runs
whatever it holds). So every class path a checkpoint holds is checked against what zoo's config grammar uses, before
anything is imported:

* classes of zoo itself (``zoo.``: objectives, blocks, data modules, tokenizers, schedules, optimizers);
* the classes of ``torch.optim`` (optimizers, ``torch.optim.lr_scheduler``) and ``torch.nn`` (an activation or a
  layer named in a config), by their exported or their defining module (``torch.optim.AdamW`` or
  ``torch.optim.adamw.AdamW``, as ``python -m zoo checkpoint convert`` writes them).

Anything else is refused by name (:class:`ForeignClassPathError`) unless the checkpoint is trusted
(``--trust-checkpoint``, ``$ZOO_TRUST_CHECKPOINTS=1``). A user's own classes (an objective, a block or a data module
of their package) are allowed by naming their packages in ``$ZOO_TRUSTED_MODULES`` (comma-separated:
``ZOO_TRUSTED_MODULES=mypkg,lab.blocks``): that vouches for those modules only, and a file's pickles stay refused.
Besides ``class_path``/``_class_path`` entries anywhere in
the file, a dotted string among the model's hyperparameters whose first name is a module Python would find
(jsonargparse reads such a string given for a class or a callable as an import path) is checked too; file names
such as ``last.ckpt`` are not import paths and pass.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re

from zoo.errors import ZooError

# The one allowlist: a class path must start with one of these, and name a class defined under one of them.
PREFIXES = ("zoo.", "torch.optim.", "torch.nn.")
TRUSTED_MODULES_ENV = "ZOO_TRUSTED_MODULES"  # the user's own packages, comma-separated
KEYS = ("class_path", "_class_path")
# Lightning's record of how LightningCLI built the model (it checks the value against its own allowlist too)
INSTANTIATORS = frozenset({"lightning.pytorch.cli.instantiate_module", "pytorch_lightning.cli.instantiate_module"})
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_DOTTED_OR_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class ForeignClassPathError(ZooError, ValueError):
    """A checkpoint names a class that zoo does not register: loading it would import (and run) another module."""


def prefixes() -> tuple[str, ...]:
    """:data:`PREFIXES` and the packages named in ``$ZOO_TRUSTED_MODULES`` (read at each check, so DDP's ranks and
    subprocesses see what the user set)."""
    names = [n.strip().rstrip(".") for n in os.environ.get(TRUSTED_MODULES_ENV, "").split(",")]
    return PREFIXES + tuple(f"{n}." for n in names if n and _DOTTED_OR_NAME.match(n))


def allowed(path: str) -> bool:
    """Whether ``path`` (``module.Class``) names a class zoo registers (module docstring). The string is checked
    before anything is imported; then the allowed module (zoo's or torch's own) is imported and the name must be a
    class defined there, so ``zoo.some_module.os.system`` (an attribute chain out of zoo) is refused too."""
    if not isinstance(path, str) or not _DOTTED.match(path) or "__" in path:  # __main__ would run a command
        return False
    module_name, _, name = path.rpartition(".")
    allowed_prefixes = prefixes()
    if not path.startswith(allowed_prefixes):  # checked before anything is imported
        return False
    try:
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(target, type) and f"{target.__module__}.".startswith(allowed_prefixes)


def _import_path(value: str) -> bool:
    """Whether ``value`` is a dotted name that an import could resolve: its first name is a module or package on
    ``sys.path`` (found without running anything), and where that is a namespace package (a bare folder such as
    ``data/``), its second name is a file or folder inside it."""
    if not _DOTTED.match(value):
        return False
    top, second = value.split(".")[:2]
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported to find it
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.origin not in (None, "namespace"):
        return True
    locations = spec.submodule_search_locations or []
    return any(os.path.exists(os.path.join(d, second)) or os.path.exists(os.path.join(d, second + ".py"))
               for d in locations)  # fmt: skip


def class_paths(obj, where: str = "", *, dotted: bool | None = None) -> list[tuple[str, str]]:
    """``(location, class path)`` of every ``class_path``/``_class_path`` string in ``obj`` (nested dicts, lists and
    tuples; tensors and numbers are skipped) and, within the model's ``hyper_parameters`` (what jsonargparse
    parses when the model is rebuilt; ``dotted`` overrides), every other dotted string that an import could
    resolve."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            at = f"{where}/{key}"
            if key in KEYS and isinstance(value, str):
                found.append((at, value))
            else:
                found += class_paths(value, at, dotted=dotted)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found += class_paths(value, f"{where}[{i}]", dotted=dotted)
    elif isinstance(obj, str):
        if (where.startswith("/hyper_parameters/") if dotted is None else dotted) and _import_path(obj):
            found.append((where, obj))
    return found


def check_class_paths(checkpoint: dict, *, source: str) -> None:
    """Raise :class:`ForeignClassPathError` for the first class path in ``checkpoint`` that zoo does not register
    (nothing outside zoo and torch's allowed modules is imported to find out); ``source`` names the file."""
    for where, path in class_paths(checkpoint):
        if where.endswith("/_instantiator") and path in INSTANTIATORS:
            continue
        if not allowed(path):
            module = path.rpartition(".")[0] or path
            raise ForeignClassPathError(
                f"{source} names class_path {path!r} (at {where.lstrip('/')}), which is not a zoo or torch class: "
                f"loading it would import module {module!r} and run its code, so nothing was loaded. Use checkpoints "
                "written by `python -m zoo fit`; for a class of your own package, name the package in "
                f"{TRUSTED_MODULES_ENV} (e.g. {TRUSTED_MODULES_ENV}={module.partition('.')[0]}); or pass "
                "--trust-checkpoint (fit: --trust_checkpoint true; or ZOO_TRUST_CHECKPOINTS=1) to load it anyway, "
                "only if you trust the file"
            )
