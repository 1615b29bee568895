"""A checkpoint made ready to use: the model, its tokenizer, end-of-text token and step, from ONE read of the file.

Every command that works on a trained model (``generate``, ``eval``, ``export`` and its model card) starts here::

    last.ckpt ──torch.load(mmap=True, weights_only=True)──▶ checkpoint (tensors mapped, not read; plain data)
        │  refused: a missing file, a directory, a truncated, legacy or foreign file, pickled objects,
        │           a class path outside zoo and torch (read_checkpoint, zoo.training.class_paths)
        ├── hyper_parameters ──jsonargparse (Lightning's instantiate_module)──▶ objective, backbone
        ├── state_dict ──checked (names, shapes) ──load_state_dict──▶ weights   ──▶ .to(device).eval()
        ├── the data module's state ──▶ tokenizer (its JSON), end-of-text token
        └── global_step, tokens_seen ──▶ step, tokens (the model card)

Lightning's ``load_from_checkpoint`` would read the file a second time (and the tokenizer a third): the model is
built here from the hyper-parameters the one read returned, the way Lightning builds it (the recorded
``_instantiator``, which zoo's class-path check allows only as Lightning's own), and the weights are copied from
the mapped tensors into it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zoo.training.checkpoints import CheckpointMismatchError, read_checkpoint
from zoo.training.class_paths import INSTANTIATORS

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from zoo.objectives.base import LanguageModel


@dataclass
class Loaded:
    """What :func:`load_checkpoint` returns.

    Args:
        model: the objective the checkpoint was trained with (e.g. ``CausalLM``), its weights loaded, in eval mode, on
            the device asked for.
        tokenizer: the run's tokenizer (``tokenizers.Tokenizer``), or the ``tokenizer.json`` given instead.
        eos: its end-of-text token.
        eos_id: the id of ``eos``.
        step: optimizer steps recorded in the checkpoint (``global_step``; 0 when absent).
        hyper_parameters: the objective's recorded arguments (``_class_path`` and nested ``class_path`` entries).
        path: the file that was read.
        tokens: training tokens seen (the objective's ``tokens_seen`` counter), ``None`` when absent.
    """

    model: LanguageModel
    tokenizer: Tokenizer
    eos: str
    eos_id: int
    step: int
    hyper_parameters: dict[str, Any] = field(repr=False)
    path: Path
    tokens: int | None = None

    @property
    def objective(self) -> str:
        """The objective's class name (``CausalLM``), as the checkpoint records it."""
        return str(self.hyper_parameters.get("_class_path", "")).rpartition(".")[2] or type(self.model).__name__


def load_checkpoint(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    trust: bool | None = None,
    tokenizer: str | os.PathLike | None = None,
    eos_token: str | None = None,
) -> Loaded:
    """Read a checkpoint written by ``python -m zoo fit`` once (memory-mapped, weights-only) and return the model, its
    tokenizer, end-of-text token and step (:class:`Loaded`).

    Args:
        path: the checkpoint file (or a run's ``last.ckpt`` link). A directory is refused with the checkpoint files
            inside it named; a missing, truncated, legacy or foreign file with the file and the fix.
        device: where the model's weights go (``cpu``, ``cuda``, ``cuda:1``).
        trust: unpickle the file in full and allow classes outside zoo and torch (runs any code the file names;
            ``None`` = ``$ZOO_TRUST_CHECKPOINTS``, see :func:`zoo.training.checkpoints.trust_checkpoints`).
        tokenizer: a ``tokenizer.json`` to use instead of the checkpoint's own (for a checkpoint that carries none).
        eos_token: its end-of-text token (default ``<|endoftext|>``).
    """
    from zoo.data.tokenizer import EOS, tokenizer_from_checkpoint

    checkpoint = read_checkpoint(path, map_location="cpu", mmap=True, trust=trust)  # the one read
    objective_class(checkpoint, source=f"checkpoint {path}")  # not zoo's: named before anything else
    if tokenizer is not None:
        from tokenizers import Tokenizer

        if not Path(tokenizer).is_file():
            raise ValueError(f"--tokenizer {tokenizer} is not a file: give the model's tokenizer.json")
        text_tokenizer, eos = Tokenizer.from_file(str(tokenizer)), eos_token or EOS
    else:
        try:
            text_tokenizer, eos = tokenizer_from_checkpoint(checkpoint)  # a dictionary: nothing is read again
        except ValueError:
            raise ValueError(
                f"checkpoint {path} carries no tokenizer (it was not trained through a zoo data module): pass the "
                "tokenizer.json it was trained with, e.g. --tokenizer path/to/tokenizer.json"
            ) from None
    eos_id = text_tokenizer.token_to_id(eos)
    if eos_id is None:
        raise ValueError(f"the tokenizer has no end-of-text token {eos!r}: pass --eos-token")
    model = build_model(checkpoint, source=f"checkpoint {path}").to(device).eval()
    tokens = checkpoint.get("state_dict", {}).get("tokens_seen")
    return Loaded(model=model, tokenizer=text_tokenizer, eos=eos, eos_id=eos_id,
                  step=int(checkpoint.get("global_step", 0)), hyper_parameters=dict(checkpoint["hyper_parameters"]),
                  path=Path(path), tokens=int(tokens) if tokens is not None else None)  # fmt: skip


def objective_class(checkpoint: dict, *, source: str) -> type[LanguageModel]:
    """The objective class a checkpoint (read by :func:`zoo.training.checkpoints.read_checkpoint`, so its class
    paths are checked) records; a ``ValueError`` naming ``source`` when it records none or not an objective."""
    from zoo.objectives.base import LanguageModel

    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not isinstance(class_path, str):
        raise ValueError(
            f"{source} has no recorded objective class (it was not written by `python -m zoo fit`): build the "
            "objective in Python and use load_from_checkpoint(path, backbone=...)"
        )
    module_name, _, name = class_path.rpartition(".")
    target = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(target, type) and issubclass(target, LanguageModel)):
        raise ValueError(f"{source} holds a {class_path}, which is not a {LanguageModel.__name__}")
    return target


def build_model(checkpoint: dict, *, source: str) -> LanguageModel:
    """The objective a checkpoint (read by :func:`zoo.training.checkpoints.read_checkpoint`, so its class paths are
    checked) records, built from its hyper-parameters as Lightning's ``load_from_checkpoint`` builds it, with the
    checkpoint's weights; ``source`` names the file in errors. Nothing is read from disk."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    target = objective_class(checkpoint, source=source)
    hyper_parameters = dict(checkpoint.get("hyper_parameters") or {})
    instantiator = hyper_parameters.pop("_instantiator", None)
    if instantiator is not None and instantiator not in INSTANTIATORS:  # only reachable with trust
        raise ValueError(f"{source} names the instantiator {instantiator!r}, which is not Lightning's own")
    if instantiator is not None:  # LightningCLI built it: the nested class_path entries are parsed the same way
        from lightning.pytorch.cli import instantiate_module

        model = instantiate_module(target, hyper_parameters)
    else:
        model = target(**{k: v for k, v in hyper_parameters.items() if k != "_class_path"})
    if is_overridden("configure_model", model):
        model.configure_model()
    try:
        model.on_load_checkpoint(checkpoint)  # the objective's own migrations and the names-and-shapes check
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(str(err).replace("checkpoint ", f"{source} ", 1)) from None
    with torch.no_grad():
        model.load_state_dict(checkpoint["state_dict"], strict=model.strict_loading)
    return model
