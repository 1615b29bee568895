"""What several test modules share: tiny models and runs, the callbacks runs take by class path, files the tests
write, and the processes they start. Plain functions, classes and constants (fixtures live in conftest.py); a test
module imports from here, never from another test module (tests/test_contract.py checks)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import datasets
import lightning as L
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from zoo.data.base import TextDataModule
from zoo.data.tokenizer import EOS, TokenizerSource
from zoo.nn import GroupedQueryAttention, PreNormBlock, RMSNorm, Rotary, SwiGLU, Transformer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# ---- groups the README's `python -m pytest -q` skips, each skip saying what runs it (conftest.py applies them) -----
# marker: (environment variable that makes the group run, and a missing requirement fail instead of skip; the
# requirement's check, or None; what the skip says). .ci/run sets every variable and selects every marker.
GROUPS = {
    "slow": ("ZOO_TEST_SLOW", None, "slow: ZOO_TEST_SLOW=1 runs it (CI does)"),
    "needs_llama_cpp": (
        "ZOO_TEST_LLAMA_CPP",
        lambda: importlib.util.find_spec("llama_cpp") is not None,
        'llama-cpp-python is not installed: pip install -e ".[gguf]" runs it (ZOO_TEST_LLAMA_CPP=1 requires it)',
    ),
    "needs_bwrap": (
        "ZOO_TEST_NAMESPACES",
        lambda: importlib.import_module("zoo.eval.sandbox").namespaces_available(),
        "the code sandbox cannot create namespaces here: apt-get install bubblewrap runs it (ZOO_TEST_NAMESPACES=1 "
        "requires it)",
    ),
}


# ---- tiny models ---------------------------------------------------------------------------------------------------
def tiny_backbone(*, vocab_size=64, dim=32, n_layers=2, max_seq_len=64, attention=None, ffn=None, norm=None,
                  position=None, canon_a=None, canon_c=None, tie_embeddings=True) -> Transformer:
    """A 2-layer, width-32 Llama-style backbone; any component can be replaced by a factory."""
    attention = attention or (lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2))
    return Transformer(
        vocab_size=vocab_size,
        dim=dim,
        n_layers=n_layers,
        max_seq_len=max_seq_len,
        block=lambda d: PreNormBlock(
            d,
            attention=attention,
            ffn=ffn or (lambda d: SwiGLU(d, hidden_dim=64)),
            norm=norm or RMSNorm,
            canon_a=canon_a,
            canon_c=canon_c,
        ),
        norm=norm or RMSNorm,
        position=position or Rotary,
        tie_embeddings=tie_embeddings,
    )


def tiny_model_config(*, vocab_size: int, lr: float = 1e-2) -> dict:
    """The ``model:`` section of a run config: :func:`tiny_backbone`'s model (32 positions) under ``CausalLM``."""
    return {"class_path": "zoo.objectives.CausalLM", "init_args": {
        "backbone": {"vocab_size": vocab_size, "dim": 32, "n_layers": 2, "max_seq_len": 32,
                     "norm": {"class_path": "zoo.nn.RMSNorm"}, "position": {"class_path": "zoo.nn.Rotary"},
                     "block": {"class_path": "zoo.nn.PreNormBlock", "init_args": {
                         "norm": {"class_path": "zoo.nn.RMSNorm"},
                         "attention": {"class_path": "zoo.nn.GroupedQueryAttention",
                                       "init_args": {"n_heads": 4, "n_kv_heads": 2}},
                         "ffn": {"class_path": "zoo.nn.SwiGLU", "init_args": {"hidden_dim": 64}}}}},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": lr}}}}  # fmt: skip


# ---- tiny runs of configs/quickstart.yaml ----------------------------------------------------------------------
# the quickstart at width 32 and 2 layers, a 300-token tokenizer, 32-token rows of 2, on 30 stdlib files
SMALL = [
    "--model.backbone.dim", "32",
    "--model.backbone.n_layers", "2",
    "--model.backbone.vocab_size", "300",
    "--model.backbone.block.init_args.ffn.init_args.hidden_dim", "64",
    "--model.backbone.block.init_args.attention.init_args.n_heads", "4",
    "--model.schedule.init_args.warmup_steps", "1",
    "--data.tokenizer.init_args.vocab_size", "300",
    "--data.seq_len", "32",
    "--data.batch_size", "2",
    "--data.limit_files", "30",
    "--data.val_fraction", "0.2",
]  # fmt: skip
# 3 steps, validated (2 batches) at the end, every step logged
TINY = [
    "--config", "configs/quickstart.yaml",
    "--trainer.max_steps", "3",
    "--trainer.val_check_interval", "3",
    "--trainer.limit_val_batches", "2",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    *SMALL,
]  # fmt: skip
# 3 fp32 steps, validated (1 batch) at the end, the config by its absolute path (runs that change folders)
TINY_CHAIN = [
    "--config", str(CONFIGS / "quickstart.yaml"),
    "--trainer.max_steps", "3",
    "--trainer.val_check_interval", "3",
    "--trainer.limit_val_batches", "1",
    "--trainer.precision", "32-true",
    *SMALL,
]  # fmt: skip
# never validated, no summary: the caller gives --trainer.max_steps (runs that are killed, cut and resumed)
TINY_UNVALIDATED = [
    "--config", "configs/quickstart.yaml",
    "--trainer.val_check_interval", "1000",
    "--trainer.limit_val_batches", "0",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    *SMALL,
]  # fmt: skip


def zoo_process(*args: str, cache: Path) -> subprocess.Popen:
    """``python -m zoo fit`` of :data:`TINY_UNVALIDATED` and ``args`` in a subprocess (output and errors in one
    pipe); ``cache`` is its ``ZOO_CACHE`` and ``HOME``."""
    env = {"ZOO_CACHE": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "zoo", "fit", *TINY_UNVALIDATED, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """The exit status and the output of ``process``, once it ends."""
    out, _ = process.communicate(timeout=900)
    return process.returncode, out


def fit(tmp: Path, cache: Path, *args: str, monkeypatch):
    """``python -m zoo fit`` of :data:`TINY_UNVALIDATED` in this process (cheaper than a subprocess where no
    process has to die), run folder ``tmp``; the ``ZooCLI``."""
    from zoo.commands.fit import ZooCLI

    monkeypatch.setenv("ZOO_CACHE", str(cache))
    monkeypatch.setattr(sys, "argv", ["zoo"])
    return ZooCLI(args=["fit", *TINY_UNVALIDATED, "--trainer.default_root_dir", str(tmp), *args])


def tiny_fit(root: Path, tokenizer_cache: Path, *extra: str) -> Path:
    """A 2-step `python -m zoo fit` run (in process) on the embedded stdlib corpus; returns its last checkpoint."""
    from zoo.commands.fit import ZooCLI

    swap = ["--data.tokenizer.init_args.cache_dir", str(tokenizer_cache), "--trainer.max_steps", "2",
            "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(root),
            "--trainer.logger", "false"]  # fmt: skip
    with patch.object(sys, "argv", ["zoo"]):  # the run's arguments are `args` alone, not pytest's command line
        ZooCLI(args=["fit", *TINY, *swap, *extra])
    return next(root.rglob("last.ckpt"))


# ---- callbacks a run takes by class path (--trainer.callbacks+=...) ----------------------------------------------
def callback(cls: type | str, **init_args) -> str:
    """The ``--trainer.callbacks+=`` argument that adds ``cls`` (a class, or the name of one in this module)."""
    path = f"{__name__}.{cls}" if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return "--trainer.callbacks+=" + json.dumps({"class_path": path, "init_args": init_args})


class LossLog(L.Callback):
    """Appends ``step loss`` (the step counted from 1, the loss as ``repr``) to ``path`` after every training step,
    flushed at once; with ``kill_at`` the process sends itself ``signal`` (a name: SIGKILL, SIGTERM, SIGINT) when
    step ``kill_at`` is about to start."""

    def __init__(self, path: str, kill_at: int | None = None, signal: str = "SIGKILL") -> None:
        self.path, self.kill_at, self.signal = path, kill_at, signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.kill_at is not None and trainer.global_step + 1 == self.kill_at:
            os.kill(os.getpid(), getattr(signal, self.signal))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {outputs['loss'].item()!r}\n")


def losses(path: Path) -> dict[int, float]:
    """A :class:`LossLog` file as ``{step: loss}`` (a later line for a step replaces an earlier one)."""
    out = {}
    for line in path.read_text().split("\n"):
        if line:
            step, loss = line.split()
            out[int(step)] = float(loss)
    return out


class NaNAt(L.Callback):
    """Makes the backbone's output NaN during step ``step`` (``trainer.global_step == step``, counted from 0)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_fit_start(self, trainer, pl_module) -> None:
        def hook(module, args, output):
            return output * float("nan") if trainer.training and trainer.global_step == self.step else output

        pl_module.backbone.register_forward_hook(hook)


class BatchLog(L.Callback):
    """Writes each training step of this rank to ``{path}.rank{global_rank}`` as a JSON line: the step (from 1),
    the rank's loss and the first token of each row (its document)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        line = {"step": trainer.global_step, "loss": outputs["loss"].item(), "rows": batch["input_ids"][:, 0].tolist()}
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(line) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().split("\n") if line]


# ---- several processes as one run (DDP, nodes on loopback) ---------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(node: int, nodes: int, port: str, run_id: str) -> dict[str, str]:
    """The environment ``torchrun --nnodes=<nodes> --nproc-per-node=1 --node-rank=<node>`` sets on a node."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(node), "GROUP_RANK": str(node),
            "RANK": str(node), "LOCAL_RANK": "0", "WORLD_SIZE": str(nodes), "LOCAL_WORLD_SIZE": "1",
            "TORCHELASTIC_RUN_ID": run_id}  # fmt: skip


def communicate_all(procs: list[subprocess.Popen]) -> list[str]:
    """The output of each process once all have ended; one node failing leaves the others waiting at a collective,
    so those still running at the end (a timeout, an error here) are killed."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=900)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


WORDS = 60


class Numbered(TextDataModule):
    """``documents`` texts of ``seq_len - 1`` words each (with the end-of-text token: exactly one row per
    document), document i starting with the word ``d{i}``, so every row names its document.

    Args:
        tokenizer: a word-level tokenizer over the words ``d0…`` and ``w0…`` (see :func:`word_tokenizer`).
        seq_len: tokens per row.
        batch_size: rows per batch on each device.
        documents: how many documents the training stream holds.
    """

    def __init__(self, *, tokenizer: TokenizerSource, seq_len: int, batch_size: int, documents: int = 64) -> None:
        super().__init__(tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size, shuffle_buffer=0)
        self.documents = documents

    def sources(self, split: str) -> list[tuple[datasets.IterableDataset, float]]:
        n, length = self.documents, self.seq_len - 1

        def generate():
            for i in range(n):
                yield {"text": " ".join([f"d{i}", *(f"w{(i * 7 + 3 * k) % WORDS}" for k in range(length - 1))])}

        return [(datasets.IterableDataset.from_generator(generate), 1.0)]

    def fingerprint(self) -> str:
        return f"numbered-{self.documents}-{self.seq_len}"


def word_tokenizer(path: Path, documents: int) -> None:
    vocab = {EOS: 0, **{f"w{i}": 1 + i for i in range(WORDS)}, **{f"d{i}": 1 + WORDS + i for i in range(documents)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))


def run_config(tmp: Path, name: str, *, batch_size: int, documents: int = 64, **trainer) -> dict:
    """The tiny DDP-comparison run: a 2-layer Llama-style model on :class:`Numbered` documents, one process per
    device (``devices``) or node (``num_nodes``) as ``trainer`` says, rows logged by :class:`BatchLog`."""
    processes = trainer.get("devices", 1) * trainer.get("num_nodes", 1)
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "strategy": "ddp" if processes > 1 else "auto",
            # fp32 on every CPU: the trajectories agree to fp32 rounding, and bf16 (chosen where the CPU has bf16
            # units) rounds differently when the batch is split over processes
            "precision": "32-true",
            "max_steps": 6, "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "enable_model_summary": False, "logger": False, "default_root_dir": str(tmp / name),
            "callbacks": [{"class_path": f"{__name__}.BatchLog", "init_args": {"path": str(tmp / name)}}],
            **trainer,
        },
        "model": tiny_model_config(vocab_size=128),
        "data": {
            "class_path": f"{__name__}.Numbered",
            "init_args": {
                "tokenizer": {"class_path": "zoo.data.PretrainedTokenizer", "init_args": {"path": str(tmp / "t.json")}},
                "seq_len": 32, "batch_size": batch_size, "documents": documents,
            },
        },
        "checkpoint": {"save_last": False, "save_top_k": 0},
    }  # fmt: skip


# ---- files the tests write --------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# two arc_easy questions and two BLiMP pairs, in the release files' formats (zoo eval --data-dir)
ARC = [{"id": "q1", "question": "Which is a gas?", "answerKey": "C",
        "choices": {"text": ["rock", "iron", "oxygen"], "label": ["A", "B", "C"]}},
       {"id": "q2", "question": "What do plants need?", "answerKey": "1",
        "choices": {"text": ["light", "noise"], "label": ["1", "2"]}}]  # fmt: skip
BLIMP = [{"sentence_good": "The cat sleeps.", "sentence_bad": "The cat sleep."},
         {"sentence_good": "Who ran?", "sentence_bad": "Ran who?"}]  # fmt: skip
BAD_LINES = ["not json", '{"text": null}']


def write_corpus(folder: Path, files: int = 30) -> Path:
    """``prose.jsonl`` and ``code.jsonl`` from the embedded corpus (each with one malformed and one null row) and a
    512-id BPE trained on them."""
    from zoo.data.corpus import stdlib_documents, stdlib_shards
    from zoo.data.tokenizer import train_bpe

    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for kind in ("prose", "code"):
        with open(folder / f"{kind}.jsonl", "w") as f:
            for doc in stdlib_documents(kind, stdlib_shards(kind, files)):
                f.write(json.dumps({"text": doc["text"]}) + "\n")
                texts.append(doc["text"])
            f.write("\n".join(BAD_LINES) + "\n")
    train_bpe(texts, vocab_size=512).save(str(folder / "tokenizer.json"))
    return folder


def data_config(corpus: Path, *, weights=(0.7, 0.3), **init) -> dict:
    """A ``Mixture`` over :func:`write_corpus`'s two files, with its tokenizer."""
    sources = [{"data_files": str(corpus / f"{kind}.jsonl"), "weight": w, "val_documents": 5}
               for kind, w in zip(("prose", "code"), weights)]  # fmt: skip
    tokenizer = {"class_path": "zoo.data.PretrainedTokenizer", "init_args": {"path": str(corpus / "tokenizer.json")}}
    init = {"sources": sources, "tokenizer": tokenizer, "seq_len": 32, "batch_size": 4, **init}
    return {"class_path": "zoo.data.Mixture", "init_args": init}


# a run config without data: 8 fp32 steps of a tiny model for :func:`data_config`'s 512-token tokenizer
TINY_RUN = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": 8, "limit_val_batches": 0,
                "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_progress_bar": False,
                "enable_model_summary": False, "logger": False},
    "checkpoint": {"every_n_train_steps": 2, "save_last": True},
    "model": tiny_model_config(vocab_size=512),
}  # fmt: skip


# ---- configs ----------------------------------------------------------------------------------------------------
def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def stated_count(path: Path) -> int:
    """The `# parameters: N` line every model config carries in its header."""
    for line in path.read_text().splitlines():
        if line.startswith("# parameters:"):
            return int(line.split(":")[1].split("(")[0].replace(",", ""))
    raise AssertionError(f"{path} states no parameter count")


# ---- exports, read by other programs ------------------------------------------------------------------------------
def llama_logits(llm, ids: list[int]):
    """Logits of every position (``(T, V)`` numpy) from one llama.cpp decode of ``ids`` (the C API through
    llama_cpp's bindings: ``Llama.eval`` assumes a KV cache, which llama.cpp's diffusion architectures do not
    have)."""
    import llama_cpp
    import numpy as np

    memory = llama_cpp.llama_get_memory(llm.ctx)
    if memory:  # causal architectures: start from an empty KV cache
        llama_cpp.llama_memory_clear(memory, True)
    batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
    try:
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(ids)
        assert llama_cpp.llama_decode(llm.ctx, batch) == 0
        logits = llama_cpp.llama_get_logits(llm.ctx)
        return np.ctypeslib.as_array(logits, shape=(len(ids), llm.n_vocab())).copy()  # (T, V)
    finally:
        llama_cpp.llama_batch_free(batch)


WITHOUT_ZOO = "import sys; sys.modules['zoo'] = None  # the export must load without zoo\n"


def run_snippet(directory: Path) -> str:
    """Runs the usage snippet of the model card in ``directory`` in a process that cannot import zoo; its output."""
    from zoo.interop.card import usage_snippet

    code = WITHOUT_ZOO + usage_snippet((directory / "README.md").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=directory, capture_output=True, text=True, timeout=300,
                            env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# Runs in a fresh interpreter that cannot import zoo (and has no PYTHONPATH to the repository): loads every job's
# directory as its model card says, and records what the tests compare.
LOADER = r"""
import sys
sys.modules["zoo"] = None  # `import zoo` raises ImportError from here on
import torch, transformers
try:
    import zoo
    raise SystemExit("zoo is importable in the loading process")
except ImportError:
    pass
jobs = torch.load(sys.argv[1])
results = {}
for name, job in jobs.items():
    model = transformers.AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=True)
    out = {"class": type(model).__name__, "module": type(model).__module__, "dtype": model.dtype}
    with torch.no_grad():
        out["logits"] = model(input_ids=job["ids"]).logits
    for key, kwargs in job.get("generate", {}).items():
        kwargs = dict(kwargs)
        seed = kwargs.pop("seed", None)
        if seed is not None:
            kwargs["generator"] = torch.Generator().manual_seed(seed)
        out[key] = model.generate(job["prompt"], **kwargs)
    if "text" in job:
        tokenizer = transformers.AutoTokenizer.from_pretrained(job["dir"], trust_remote_code=True)
        out["encoded"] = tokenizer(job["text"])["input_ids"]
        try:
            pipe = transformers.pipeline("text-generation", model=job["dir"], trust_remote_code=True, device="cpu")
            out["pipeline"] = pipe(job["text"], max_new_tokens=8, do_sample=False)[0]["generated_text"]
            ids = tokenizer(job["text"], return_tensors="pt")["input_ids"]
            out["generated_text"] = tokenizer.decode(model.generate(ids, max_new_tokens=8, do_sample=False)[0],
                                                     skip_special_tokens=True)
        except Exception as err:
            out["pipeline_error"] = f"{type(err).__name__}: {err}"
    if "bad_generate" in job:
        try:
            model.generate(job["prompt"], **job["bad_generate"])
        except ValueError as err:
            out["bad_generate_error"] = str(err)
    results[name] = out
torch.save(results, sys.argv[2])
"""


def load_without_zoo(jobs: dict, tmp: Path) -> dict:
    """Run :data:`LOADER` on ``jobs`` (name -> {"dir", "ids", ...}) in a process without zoo; its results."""
    torch.save(jobs, tmp / "jobs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf-home"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LOADER, str(tmp / "jobs.pt"), str(tmp / "results.pt")], cwd=tmp,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp / "results.pt")
