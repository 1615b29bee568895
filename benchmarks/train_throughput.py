"""Training throughput and peak memory: zoo's Llama-style model against HF transformers' ``LlamaForCausalLM``.

Both sides get the identical architecture (shape, GQA, SwiGLU, RMSNorm, RoPE, tied embeddings), the same
batch, the same AdamW step and fp32 (or the --dtype you give), on the same machine. Each measurement runs in
its own subprocess, alternating zoo / HF for --rounds rounds so drift in machine speed hits both alike; the
script prints per-round figures, the medians and the ratio zoo / HF (> 1 means zoo is faster).

    python benchmarks/train_throughput.py                      # CPU defaults: small batch, both shapes
    python benchmarks/train_throughput.py --device cuda --batch-size 16 --seq-len 1024 --dtype bf16

Peak memory is the training step's high-water mark above the built model: ``torch.cuda.max_memory_allocated``
on a GPU; on a CPU the process's peak resident set (``ru_maxrss``) minus its resident set before the first step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name: (layers, dim, q heads, kv heads, ffn hidden, vocab, rope theta)
SHAPES = {
    "gpt-s-5m": (9, 192, 6, 2, 672, 4096, 2500.0),
    "supra-50m": (12, 512, 8, 4, 1408, 32000, 10000.0),
}


def build_zoo(shape, seq_len):
    from zoo.nn import GroupedQueryAttention, PreNormBlock, RMSNorm, Rotary, SwiGLU, Transformer
    from zoo.objectives import CausalLM

    layers, dim, heads, kv, hidden, vocab, theta = shape
    backbone = Transformer(
        vocab_size=vocab, dim=dim, n_layers=layers, max_seq_len=seq_len,
        block=lambda d: PreNormBlock(
            d, attention=lambda d: GroupedQueryAttention(d, n_heads=heads, n_kv_heads=kv),
            ffn=lambda d: SwiGLU(d, hidden_dim=hidden), norm=lambda d: RMSNorm(d, eps=1e-5),
        ),
        norm=lambda d: RMSNorm(d, eps=1e-5), position=lambda *a: Rotary(*a, theta=theta), tie_embeddings=True,
    )
    model = CausalLM(backbone=backbone)
    return model, lambda batch: model.loss(batch)[0]


def build_hf(shape, seq_len):
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, dim, heads, kv, hidden, vocab, theta = shape
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=seq_len, rms_norm_eps=1e-5,
        rope_theta=theta, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    return model, lambda batch: model(input_ids=batch["input_ids"], labels=batch["labels"]).loss


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(args) -> None:
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    shape = SHAPES[args.shape]
    model, loss_fn = (build_zoo if args.impl == "zoo" else build_hf)(shape, args.seq_len)
    model.to(device).train()
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(0, shape[5], (args.batch_size, args.seq_len), device=device)
    batch = {"input_ids": ids, "labels": ids}

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    base_rss = _rss_mb()
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    tokens = args.steps * args.batch_size * args.seq_len
    print(json.dumps({"tokens_per_s": tokens / elapsed, "peak_mb": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="gpt-s-5m,supra-50m", help="comma-separated, from: " + ", ".join(SHAPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="zoo/HF alternations per shape")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--impl", choices=["zoo", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        return worker(args)

    root = Path(__file__).resolve().parents[1]
    common = [f"--device={args.device}", f"--dtype={args.dtype}", f"--batch-size={args.batch_size}",
              f"--seq-len={args.seq_len}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
    common += ["--compile"] if args.compile else []
    print(f"device={args.device} dtype={args.dtype} batch={args.batch_size}x{args.seq_len} steps={args.steps} "
          f"rounds={args.rounds} compile={args.compile} torch={_torch_version()} transformers={_hf_version()}")
    for name in args.shapes.split(","):
        results = {"zoo": [], "hf": []}
        for r in range(args.rounds):
            for impl in ("zoo", "hf"):
                out = subprocess.run(
                    [sys.executable, __file__, f"--impl={impl}", f"--shape={name}", *common],
                    cwd=root, capture_output=True, text=True, check=True,
                )
                results[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  {name} round {r + 1} {impl:>3}: {results[impl][-1]['tokens_per_s']:9.0f} tok/s "
                      f"peak {results[impl][-1]['peak_mb']:8.1f} MB", flush=True)
        med = {k: {m: statistics.median(x[m] for x in v) for m in ("tokens_per_s", "peak_mb")}
               for k, v in results.items()}
        print(f"{name}: zoo {med['zoo']['tokens_per_s']:.0f} tok/s, HF {med['hf']['tokens_per_s']:.0f} tok/s, "
              f"speed ratio zoo/HF {med['zoo']['tokens_per_s'] / med['hf']['tokens_per_s']:.2f}; "
              f"peak zoo {med['zoo']['peak_mb']:.0f} MB, HF {med['hf']['peak_mb']:.0f} MB, "
              f"memory ratio zoo/HF {med['zoo']['peak_mb'] / max(med['hf']['peak_mb'], 1e-9):.2f}")


def _torch_version() -> str:
    import torch

    return torch.__version__


def _hf_version() -> str:
    import transformers

    return transformers.__version__


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
