"""Converting a checkpoint written before zoo's checkpoints became weights-only: the same contents as plain data.

::

    functools.partial(torch.optim.AdamW, lr=3e-3)  ──▶ {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}}
    a class or function (the _instantiator, …)      ──▶ "module.qualname"
    argparse / jsonargparse Namespace               ──▶ dict
    numpy array / numpy scalar                      ──▶ tensor / Python number
    NumPy's legacy RNG tuple                        ──▶ RandomState's plain dict (keys as an int64 tensor)

Anything else that is not a tensor, plain container, string or number is refused with its place in the file
named: converting must not guess what an object meant.
"""

from __future__ import annotations

import argparse
import functools
import io
from pathlib import Path
from typing import Any

import torch

from zoo.training.checkpoints import atomic_save, read_checkpoint

_PLAIN = (str, int, float, bool, complex, type(None), bytes, torch.Tensor, torch.dtype, torch.device, torch.Size)


def convert_checkpoint(old: str | Path, new: str | Path) -> list[str]:
    """Read ``old`` by unpickling it in full (this runs whatever code the file names: convert only files you
    trust, such as your own runs' checkpoints from an older zoo), turn its contents into plain data and write
    ``new`` atomically. Checks that ``new`` reads weights-only and returns the places that changed
    (``hyper_parameters/optimizer: functools.partial -> dict``).

    Args:
        old: checkpoint to convert (unpickled in full: only a file you trust).
        new: where to write the converted checkpoint.
    """
    old, new = Path(old), Path(new)
    if old.resolve() == new.resolve():
        raise ValueError(f"convert {old} to a new file (NEW is the same path): the old file is kept until NEW reads")
    checkpoint = read_checkpoint(old, trust=True)
    changes: list[str] = []
    plain = _plain(checkpoint, "", changes)
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    buffer.seek(0)
    torch.load(buffer, map_location="cpu", weights_only=True)  # the point of converting: fail here, not later
    atomic_save(plain, new)
    return changes


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _plain(obj: Any, where: str, changes: list[str]) -> Any:
    """``obj`` as tensors, plain containers, strings and numbers; ``where`` is its place in the file."""
    import numpy as np

    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, dict):  # OrderedDict stays one (weights-only loading accepts it)
        return type(obj)((k, _plain(v, f"{where}/{k}", changes)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        if where.endswith("/numpy") and len(obj) == 5 and isinstance(obj[1], np.ndarray):
            kind, keys, pos, has_gauss, gauss = obj  # NumPy's legacy RNG state, as RandomState now saves it
            changes.append(f"{where}: numpy RNG tuple -> dict")
            return {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip
        return type(obj)(_plain(v, f"{where}[{i}]", changes) for i, v in enumerate(obj))
    if isinstance(obj, np.ndarray):
        changes.append(f"{where}: numpy array -> tensor")
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        changes.append(f"{where}: numpy scalar -> {type(obj.item()).__name__}")
        return obj.item()
    if isinstance(obj, functools.partial):  # an optimizer factory as save_hyperparameters recorded it
        changes.append(f"{where}: functools.partial -> dict")
        init_args = {**({"args": list(obj.args)} if obj.args else {}), **obj.keywords}
        return {"class_path": _name(obj.func), "init_args": _plain(init_args, where, changes)}
    if isinstance(obj, argparse.Namespace) or type(obj).__name__ == "Namespace":  # jsonargparse's is no subclass
        changes.append(f"{where}: {type(obj).__module__}.Namespace -> dict")
        as_dict = obj.as_dict() if hasattr(obj, "as_dict") else vars(obj)
        return _plain(as_dict, where, changes)
    if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
        changes.append(f"{where}: {type(obj).__name__} -> class path string")
        return _name(obj)
    raise ValueError(
        f"cannot convert {where or 'the checkpoint'}: a {type(obj).__module__}.{type(obj).__qualname__} is not "
        "plain data and has no plain form zoo knows; remove it from the checkpoint in Python (torch.load with "
        "weights_only=False, delete the key, torch.save) and convert again"
    )
