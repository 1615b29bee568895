"""LitGPT in an environment of its own, for the benchmarks that compare against it.

LitGPT cannot be installed beside zoo's benchmark extra: litgpt 0.5.9–0.5.12 pin ``numpy < 2`` (and pyarrow,
which ``datasets`` imports, needs numpy ≥ 2), and 0.5.13 pins ``huggingface-hub < 1.4`` while transformers 5 and
datasets 5 need a newer one. The benchmarks only need its model code, so they run LitGPT's side in a subprocess
with the Python of a separate virtual environment holding the same torch release as the caller and LitGPT pinned
(:data:`LITGPT`), created on first use under ``$ZOO_CACHE`` (default ``~/.cache/zoo``):

    python benchmarks/_litgpt_env.py          # create it now (else the first benchmark run does) and print its Python

The environment is keyed by both versions, so a torch upgrade makes a new one; a half-made one (an
interrupted install) is completed by the next call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

LITGPT = "0.5.13"  # the newest release; its model code runs on torch 2.13


def _torch_version() -> str:
    from importlib.metadata import version

    return version("torch").split("+")[0]  # 2.13.0+cpu -> 2.13.0: the same pin CI installs torch with


def env_dir() -> Path:
    cache = Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))
    return cache / f"litgpt-{LITGPT}-torch-{_torch_version()}"


def litgpt_python() -> Path:
    """The Python of the LitGPT environment, created (a minute or two, once) when missing."""
    root = env_dir()
    python = root / "bin" / "python"
    ready = root / "ready"
    if ready.exists():
        return python
    print(f"creating LitGPT's environment in {root} (once) ...", file=sys.stderr, flush=True)
    if not python.exists():
        venv.create(root, with_pip=True)
    packages = [f"torch=={_torch_version()}", f"litgpt=={LITGPT}"]
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"installing {' '.join(packages)} into {root} failed:\n{result.stderr[-3000:]}")
    check = subprocess.run([str(python), "-c", "import litgpt.model"], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"LitGPT does not import in {root}:\n{check.stderr[-3000:]}")
    ready.write_text(f"torch=={_torch_version()} litgpt=={LITGPT}\n")
    return python


if __name__ == "__main__":
    print(litgpt_python())
