"""Muon's training step against AdamW's, at the quickstart's batch and at GPT-S-5M's real one.

One training step as ``zoo fit`` runs it: forward and backward of ``--accumulate`` micro-batches under the
precision's autocast, gradient clipping at 1.0, the optimizer step. Each timed step runs one micro-batch's forward
and backward and one optimizer step; the step time is ``--accumulate`` × the micro-batch's forward and backward +
the optimizer's (so GPT-S-5M's 128 × 512-token batch is timed as 16 × 512 micro-batches, 8 per update, without
running all eight). Wall time and the process's CPU time are both reported: on a machine shared with other jobs
(run with ``OMP_NUM_THREADS=1``) CPU time is the steadier figure. The optimizer is built as the configs build
it (``torch.optim.AdamW`` with zoo's fused default and weight-decay groups, or ``zoo.optim.MuonWithAdamW`` with
the quickstart-muon recipe's settings). Each measurement runs in its own subprocess, alternating AdamW / Muon for
--rounds rounds, so drift in the machine's speed hits both alike; the script prints each round's median step
time and its optimizer part, then the medians and Muon / AdamW.

    python benchmarks/muon_step.py --shape quickstart                                   # 8 × 256 tokens
    python benchmarks/muon_step.py --shape gpt-s-5m --micro-batch 16 --accumulate 8     # 128 × 512 tokens
    python benchmarks/muon_step.py --shape gpt-s-5m --micro-batch 16 --optimizer-only   # the optimizer step alone

Token ids are random (fixed seed): the gradients are the model's own for that batch, and no part of the step's
time depends on the tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

# name: (layers, dim, q heads, kv heads, ffn hidden, vocab, rope theta, exclusive attention, seq_len)
SHAPES = {
    "quickstart": (6, 192, 6, 2, 512, 4096, 10000.0, False, 256),  # configs/quickstart.yaml
    "gpt-s-5m": (9, 192, 6, 2, 672, 4096, 2500.0, True, 512),  # configs/models/gpt-s-5m.yaml
    "tiny": (2, 32, 4, 2, 64, 256, 10000.0, False, 32),  # --smoke
}


def build(shape: str, optimizer: str):
    import torch

    from zoo.nn import (
        ExclusiveGroupedQueryAttention,
        GroupedQueryAttention,
        PreNormBlock,
        RMSNorm,
        Rotary,
        SwiGLU,
        Transformer,
    )
    from zoo.objectives import CausalLM
    from zoo.optim import MuonWithAdamW, optimizer_groups, prefer_fused

    layers, dim, heads, kv, hidden, vocab, theta, exclusive, seq_len = SHAPES[shape]
    attention = ExclusiveGroupedQueryAttention if exclusive else GroupedQueryAttention
    torch.manual_seed(0)
    backbone = Transformer(
        vocab_size=vocab, dim=dim, n_layers=layers, max_seq_len=seq_len, tie_embeddings=True, norm=RMSNorm,
        position=lambda d, hd, n: Rotary(d, hd, n, theta=theta),
        block=lambda d: PreNormBlock(d, attention=lambda d: attention(d, n_heads=heads, n_kv_heads=kv),
                                     ffn=lambda d: SwiGLU(d, hidden_dim=hidden), norm=RMSNorm),
    )  # fmt: skip
    model = CausalLM(backbone=backbone)
    groups = optimizer_groups(model.backbone)
    if optimizer == "adamw":
        opt = prefer_fused(torch.optim.AdamW(groups, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1))
    else:
        opt = MuonWithAdamW(groups, lr=0.02, momentum=0.95, weight_decay=0.01, adamw_lr=3e-3,
                            adamw_betas=(0.9, 0.95), adamw_weight_decay=0.1)  # fmt: skip
    return model, opt, vocab, seq_len


def measure(args) -> dict:
    import torch

    model, opt, vocab, seq_len = build(args.shape, args.optimizer)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (args.micro_batch, seq_len), generator=g)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16-mixed" else nullcontext()
    times: dict[str, list[float]] = {"backward": [], "optimizer": [], "backward_cpu": [], "optimizer_cpu": []}
    for step in range(args.steps + 1):  # the first step (allocations, lazy state) is not counted
        clocks = [(time.perf_counter(), time.process_time())]
        if args.optimizer_only and step > 1:  # the first batch's gradients again (the optimizer does not clear them)
            clocks.append(clocks[0])
            opt.step()
            clocks.append((time.perf_counter(), time.process_time()))
            times["optimizer"].append(clocks[2][0] - clocks[1][0])
            times["optimizer_cpu"].append(clocks[2][1] - clocks[1][1])
            continue
        with autocast:
            loss, _ = model.loss({"input_ids": ids, "labels": ids})
        (loss / args.accumulate).backward()
        clocks.append((time.perf_counter(), time.process_time()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if not args.optimizer_only:
            opt.zero_grad(set_to_none=True)
        clocks.append((time.perf_counter(), time.process_time()))
        if step:
            for i, part in enumerate(("backward", "optimizer")):
                times[part].append(clocks[i + 1][0] - clocks[i][0])
                times[part + "_cpu"].append(clocks[i + 1][1] - clocks[i][1])
    if args.optimizer_only:
        times = {k: v for k, v in times.items() if k.startswith("optimizer")}
        times.update(backward=[0.0], backward_cpu=[0.0])
    out = {part: statistics.median(values) for part, values in times.items()}
    for suffix in ("", "_cpu"):  # the step of --accumulate micro-batches: each one's forward and backward, one update
        out["step" + suffix] = args.accumulate * out["backward" + suffix] + out["optimizer" + suffix]
    out["ns_dtype"] = str(opt.muon.ns_dtype) if hasattr(opt, "muon") else None
    out["threads"] = torch.get_num_threads()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="quickstart")
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after one untimed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=["bf16-mixed", "32-true"], default="bf16-mixed")
    parser.add_argument("--optimizer-only", action="store_true",
                        help="after one step, time the optimizer step alone on that batch's gradients")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="every code path at a tiny shape (figures mean nothing)")
    parser.add_argument("--optimizer", choices=["adamw", "muon"], help=argparse.SUPPRESS)  # one subprocess's side
    args = parser.parse_args()
    if args.smoke:
        args.shape, args.micro_batch, args.accumulate, args.steps, args.rounds = "tiny", 2, 2, 1, 1
    if args.optimizer:
        print(json.dumps(measure(args)))
        return
    flags = ["--shape", args.shape, "--micro-batch", str(args.micro_batch), "--accumulate", str(args.accumulate),
             "--steps", str(args.steps), "--precision", args.precision]  # fmt: skip
    flags += ["--optimizer-only"] if args.optimizer_only else []
    tokens = args.micro_batch * args.accumulate * SHAPES[args.shape][-1]
    print(f"{args.shape}: {args.micro_batch} × {args.accumulate} rows × {SHAPES[args.shape][-1]} tokens = {tokens} "
          f"tokens per step, {args.precision}, {args.steps} timed steps per measurement")  # fmt: skip
    results: dict[str, list[dict]] = {"adamw": [], "muon": []}
    for round_ in range(args.rounds):
        for side in ("adamw", "muon") if round_ % 2 == 0 else ("muon", "adamw"):
            out = subprocess.run([sys.executable, __file__, *flags, "--optimizer", side], check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            result = json.loads(out.strip().splitlines()[-1])
            results[side].append(result)
            ns = f" (Newton–Schulz in {result['ns_dtype']})" if result["ns_dtype"] else ""
            r = result
            print(f"round {round_ + 1} {side:5s}: step {r['step']:.3f} s (CPU {r['step_cpu']:.3f} s), "
                  f"optimizer {r['optimizer']:.4f} s (CPU {r['optimizer_cpu']:.4f} s){ns}", flush=True)  # fmt: skip
    keys = ("step", "optimizer", "step_cpu", "optimizer_cpu")
    median = {side: {k: statistics.median(r[k] for r in rs) for k in keys} for side, rs in results.items()}
    for side in ("adamw", "muon"):
        m = median[side]
        print(f"median {side:5s}: step {m['step']:.3f} s ({tokens / m['step']:.0f} tokens/s; "
              f"CPU {m['step_cpu']:.3f} s), "
              f"optimizer {m['optimizer']:.4f} s (CPU {m['optimizer_cpu']:.4f} s)")  # fmt: skip
    ratio = {k: median["muon"][k] / median["adamw"][k] for k in keys}
    print(f"Muon / AdamW step time: {ratio['step']:.3f}× wall, {ratio['step_cpu']:.3f}× CPU; optimizer alone: "
          f"{ratio['optimizer']:.1f}× wall, {ratio['optimizer_cpu']:.1f}× CPU")


if __name__ == "__main__":
    main()
