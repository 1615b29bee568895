"""Every figure that needs a GPU, in one command (under 8 minutes on one H100/H200), written to a dated results
file with the machine, commit and command:

1. training: GPT-2 124M and Supra-50M shapes, bf16 autocast + ``torch.compile``, zoo against HF transformers and
   LitGPT (``train_throughput.py``: alternating subprocesses, same batch and optimizer), tokens/s and MFU
   (tokens/s × ``Transformer.flops_per_token`` / the GPU's dense bf16 peak, :data:`PEAK_BF16`), and the fraction
   of the bf16 matmul roofline measured at the same shapes;
2. FSDP on every GPU present (``configs/trainer/fsdp.yaml``) with sharded checkpoints in Lightning's distributed
   checkpoint format (``state_dict_type: sharded``): a run saves at step 10 and goes on to step 20; a second run
   resumes the step-10 checkpoint, and its steps 11–20 must read the same rows (the data position) and reach
   the same losses (to bf16 reduction-order noise);
3. decoding at the Dhara-70M shape (random weights): autoregressive (KV cache, greedy) against every
   masked-diffusion sampler zoo exports (and every remasking rule, cache and parallel option they take), new
   tokens/s and forward passes, ratio to AR;
4. eval throughput: log-likelihood requests scored per second (:class:`zoo.eval.scoring.CausalScorer`, shared
   contexts on and off) at the same shape.

::

    python benchmarks/gpu_suite.py           # on a GPU machine: benchmarks/results/gpu-suite-<gpu>-<date>.md
    python benchmarks/gpu_suite.py --smoke   # every code path on the CPU at tiny shapes, seconds (CI)

On the CPU (``--smoke``) the FSDP part is skipped with its reason printed: Lightning's ``FSDPStrategy`` runs on
CUDA devices only and refuses the CPU accelerator.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core FLOP/s (NVIDIA datasheets, SXM)


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def machine() -> str:
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} × {names[0]}, CUDA {torch.version.cuda}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


# ---- 1. training -----------------------------------------------------------------------------------------------
def training(args, report: list[str]) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "train.json"
        command = [sys.executable, str(HERE / "train_throughput.py"), f"--json={out}", f"--impls={args.impls}"]
        if args.smoke:
            command += ["--smoke", "--roofline-dtypes=bf16"]
        else:
            command += [f"--device={device}", "--dtype=bf16", "--compile", "--shapes=gpt2-124m,supra-50m",
                        f"--batch-size={args.batch_size}", "--seq-len=1024", "--steps=20", "--warmup=5",
                        "--rounds=1", "--roofline-dtypes=bf16"]
        subprocess.run(command, cwd=ROOT, check=True)
        summary = json.loads(out.read_text())
    peak = peak_flops(torch.cuda.get_device_name(0)) if device == "cuda" else None
    report += ["## Training (bf16 autocast" + ("" if args.smoke else " + torch.compile") + ")", "",
               "| shape | side | tok/s | vs HF | TFLOP/s | MFU | of bf16 roofline |",
               "|---|---|---:|---:|---:|---:|---:|"]
    for shape, s in summary.items():
        hf = s["median"].get("hf", {}).get("tokens_per_s")
        for side, m in s["median"].items():
            flops = m["tokens_per_s"] * s["flops_per_token"]
            mfu = f"{flops / peak:.1%}" if peak else "n/a (no peak for this device)"
            ratio = f"{m['tokens_per_s'] / hf:.2f}" if hf else "–"
            report.append(f"| {shape} | {side} | {m['tokens_per_s']:,.0f} | {ratio} | {flops / 1e12:.2f} | {mfu} | "
                          f"{flops / s['roofline']['bf16']:.0%} |")
        report.append(f"| {shape} | bf16 matmul roofline | | | {s['roofline']['bf16'] / 1e12:.1f} | | |")
    report.append("")


# ---- 2. FSDP with sharded checkpoints ----------------------------------------------------------------------------
class LossLog(L.Callback):
    """Writes each training step's loss and its rows' first tokens (rank 0) to ``path`` as JSON lines.

    Args:
        path: the file appended to.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == 0:
            rows = batch["input_ids"][:, 0].tolist()
            line = {"step": trainer.global_step, "loss": outputs["loss"].item(), "rows": rows}
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")


def fsdp(args, report: list[str]) -> None:
    report += ["## FSDP, sharded checkpoints (Lightning's distributed checkpoint format)", ""]
    if not torch.cuda.is_available():
        reason = ("skipped: no CUDA device. Lightning's FSDPStrategy runs on CUDA devices only and refuses the CPU "
                  "accelerator, so this part runs only on a GPU machine")
        print(f"FSDP: {reason}", flush=True)
        report += [reason, ""]
        return
    gpus = torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def fit(name: str, *extra: str) -> list[dict]:
            log = tmp / f"{name}.jsonl"
            command = [
                sys.executable, "-m", "zoo", "fit", "--config", "configs/quickstart.yaml",
                "--config", "configs/trainer/fsdp.yaml", f"--trainer.devices={gpus}",
                "--trainer.strategy.init_args.state_dict_type=sharded", "--trainer.max_steps=20",
                "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp / name}",
                "--trainer.enable_progress_bar=false", "--checkpoint.every_n_train_steps=10",
                "--checkpoint.save_top_k=-1", "--checkpoint.save_last=false", "--checkpoint.filename={step}",
                f"--checkpoint.dirpath={tmp / 'checkpoints'}",
                "--trainer.callbacks+=gpu_suite.LossLog", f"--trainer.callbacks.path={log}", *extra,
            ]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
            start = time.perf_counter()
            subprocess.run(command, cwd=ROOT, env=env, check=True)
            print(f"FSDP {name}: {time.perf_counter() - start:.0f} s", flush=True)
            return [json.loads(line) for line in log.read_text().splitlines()]

        full = fit("full")
        ckpt = tmp / "checkpoints" / "step=10.ckpt"
        kind = "a directory of .distcp shards" if ckpt.is_dir() else "NOT a sharded directory"
        resumed = fit("resumed", f"--ckpt_path={ckpt}")
    after = [s for s in full if s["step"] > 10]
    same_rows = [s["rows"] for s in resumed] == [s["rows"] for s in after]
    diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(resumed, after))
    report += [f"{gpus} GPU(s), FULL_SHARD; step-10 checkpoint is {kind}; resumed steps "
               f"{[s['step'] for s in resumed][:1]}…{[s['step'] for s in resumed][-1:]}: same rows as the "
               f"uninterrupted run: {same_rows}; largest loss difference {diff:.2e}", ""]


# ---- 3. decoding -------------------------------------------------------------------------------------------------
def dhara_backbone(*, causal: bool, smoke: bool, device: str):
    from jsonargparse import ArgumentParser

    from zoo.nn import Transformer

    parser = ArgumentParser()
    parser.add_argument("--backbone", type=Transformer, sub_configs=True)
    argv = ["--backbone", str(ROOT / "configs/models/dhara-70m.yaml"),
            f"--backbone.block.init_args.attention.init_args.causal={causal}"]
    if smoke:
        argv += ["--backbone.dim=32", "--backbone.n_layers=2", "--backbone.vocab_size=128",
                 "--backbone.block.init_args.ffn.init_args.hidden_dim=64"]
    torch.manual_seed(0)
    backbone = parser.instantiate(parser.parse_args(argv)).backbone
    return backbone.to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32).eval()


def diffusion_samplers() -> list[tuple[str, object, dict]]:
    """Every masked-diffusion sampler zoo.generation exports (a public function taking ``prompt`` and
    ``mask_id``), once per remasking rule it offers and per cache / parallel switch it takes (found by name, so a
    sampler or option added later is measured without a change here)."""
    import zoo.generation
    from zoo.generation import diffusion

    runs = []
    for name in zoo.generation.__all__:
        fn = getattr(zoo.generation, name)
        if not callable(fn) or inspect.isclass(fn):
            continue
        params = inspect.signature(fn).parameters
        if not {"prompt", "mask_id"} <= params.keys():
            continue
        variants = [{}]
        if "remasking" in params:
            variants = [{"remasking": rule} for rule in diffusion.REMASKING]
        for option, p in params.items():
            if ("cache" in option or "parallel" in option) and isinstance(p.default, bool):
                variants = [{**v, option: flag} for v in variants for flag in (False, True)]
        runs += [(name, fn, v) for v in variants]
    return runs


def decoding(args, report: list[str]) -> None:
    from zoo.generation import generate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    batch, prompt_len, new = (2, 8, 16) if args.smoke else (8, 64, 256)
    block = 8 if args.smoke else 32
    ar = dhara_backbone(causal=True, smoke=args.smoke, device=device)
    vocab = ar.vocab_size
    prompts = torch.randint(0, vocab - 1, (batch, prompt_len), generator=torch.Generator().manual_seed(0))

    def timed(fn):
        fn()  # warm-up
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - start

    out, seconds = timed(lambda: generate(ar, prompts.tolist(), max_new_tokens=new))
    ar_rate = batch * new / seconds
    report += [f"## Decoding at the Dhara-70M shape (random weights, batch {batch}, prompt {prompt_len}, {new} new "
               f"tokens, diffusion blocks of {block})", "",
               "| sampler | options | new tok/s | forward passes | vs AR |", "|---|---|---:|---:|---:|",
               f"| autoregressive (KV cache, greedy) | | {ar_rate:,.0f} | {out.forward_passes} | 1.00 |"]
    diff = dhara_backbone(causal=False, smoke=args.smoke, device=device)
    prompt = prompts.to(device)
    for name, fn, options in diffusion_samplers():
        params = inspect.signature(fn).parameters
        kwargs = {"mask_id": vocab - 1, "gen_length": new, "block_length": block, **options}
        if "steps" in params:
            kwargs["steps"] = new
        result, seconds = timed(lambda fn=fn, kwargs=kwargs: fn(diff, prompt, **kwargs))
        passes = getattr(result, "forward_passes", getattr(result, "steps", "?"))
        rate = batch * new / seconds
        report.append(f"| {name} | {json.dumps(options) if options else ''} | {rate:,.0f} | {passes} | "
                      f"{rate / ar_rate:.2f} |")
    report.append("")


# ---- 4. eval throughput ------------------------------------------------------------------------------------------
def evaluation(args, report: list[str]) -> None:
    from tokenizers import Tokenizer, models

    from zoo.eval.scoring import CausalScorer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = dhara_backbone(causal=True, smoke=args.smoke, device=device)
    n, context, options, cont = (8, 16, 2, 4) if args.smoke else (512, 256, 4, 16)
    g = torch.Generator().manual_seed(0)
    pairs = []  # multiple-choice shaped: each context with `options` continuations
    for _ in range(n // options):
        ctx = torch.randint(0, backbone.vocab_size, (context,), generator=g).tolist()
        pairs += [(ctx, torch.randint(0, backbone.vocab_size, (cont,), generator=g).tolist()) for _ in range(options)]
    tokenizer = Tokenizer(models.WordLevel({"<eos>": 0}, unk_token="<eos>"))  # unused: requests come as token ids
    report += ["## Eval throughput (log-likelihood requests at the Dhara-70M shape)", "",
               f"{n} requests: {n // options} contexts of {context} tokens × {options} continuations of {cont}", "",
               "| scorer | requests/s |", "|---|---:|"]
    for share in (False, True):
        scorer = CausalScorer(backbone=backbone, tokenizer=tokenizer, prefix_id=0, max_length=backbone.max_seq_len,
                              batch_size=32, share_contexts=share)
        scorer.score_tokens(pairs[: 2 * options])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        scorer.score_tokens(pairs)
        if device == "cuda":
            torch.cuda.synchronize()
        report.append(f"| CausalScorer, shared contexts {'on' if share else 'off'} | "
                      f"{n / (time.perf_counter() - start):,.1f} |")
    report.append("")


PARTS = {"train": training, "fsdp": fsdp, "decode": decoding, "eval": evaluation}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every code path on the CPU at tiny shapes, in seconds")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated, from: " + ", ".join(PARTS))
    p.add_argument("--impls", default="zoo,hf,litgpt", help="training sides (see train_throughput.py)")
    p.add_argument("--batch-size", type=int, default=16, help="training rows per step (× 1024 tokens)")
    p.add_argument("--out", help="results file (default: benchmarks/results/gpu-suite-<device>-<date>.md)")
    args = p.parse_args()
    parts = args.parts.split(",")
    for name in parts:
        if name not in PARTS:
            p.error(f"--parts: unknown part {name!r}; choose from {', '.join(PARTS)}")
    if not args.smoke and not torch.cuda.is_available():
        p.error("no CUDA device: the suite measures GPUs (run --smoke to exercise its code on the CPU)")
    start = time.perf_counter()
    date = datetime.date.today().isoformat()
    report = [f"# GPU suite{' (smoke: tiny shapes, figures mean nothing)' if args.smoke else ''}, {date}", "",
              f"- machine: {machine()}", f"- torch {torch.__version__}, commit {commit()}",
              f"- command: `python {' '.join(sys.argv)}`", ""]
    for name in parts:
        PARTS[name](args, report)
        print(f"[{name} done at {time.perf_counter() - start:.0f} s]", flush=True)
    report.append(f"Total wall time {time.perf_counter() - start:.0f} s.")
    text = "\n".join(report) + "\n"
    print(text)
    if args.smoke and not args.out:
        return
    device = torch.cuda.get_device_name(0).split()[-1].lower() if torch.cuda.is_available() else "cpu"
    out = Path(args.out or ROOT / "benchmarks/results" / f"gpu-suite-{device}-{date}.md")
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.path[1:1] = [str(ROOT), str(HERE)]
    main()
