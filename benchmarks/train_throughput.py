"""Training throughput and peak memory: zoo's Llama-style model against HF transformers' ``LlamaForCausalLM``
and LitGPT's ``GPT``.

All sides get the identical architecture (shape, GQA, SwiGLU, RMSNorm, RoPE, tied embeddings), the same
batch, the same fused AdamW step and fp32 (or the --dtype you give), on the same machine, each computing its
loss as its own training code does (zoo: ``CausalLM.loss``; HF: ``labels=``; LitGPT: its
``chunked_cross_entropy``, as in ``litgpt pretrain``). Each measurement runs in its own subprocess, alternating
zoo / HF / LitGPT for --rounds rounds so drift in machine speed hits all alike; the script prints per-round
figures, the medians and the ratios zoo / HF and LitGPT / HF (> 1 means faster than HF).

    python benchmarks/train_throughput.py                      # CPU defaults: small batch, three shapes
    python benchmarks/train_throughput.py --device cuda --batch-size 16 --seq-len 1024 --dtype bf16

``gpt2-124m`` is GPT-2 small's shape (12 × 768, 12 heads, vocabulary 50,257) in the same Llama block on all
sides (LitGPT has no learned absolute positions); its SwiGLU width 2048 matches GELU-3072's parameters.
``dhara-70m`` and ``smallcoder-303m`` are the seeds' own backbone configs (``configs/models/``: Dhara-70M's Canon
layers, SmallCoder-303M's untied head), built as ``zoo fit`` builds them, on zoo's sides only.

The roofline is measured in the same run, in its own subprocess before each shape's rounds: the sustained
FLOP/s of the training step's own matrix products at this shape (for every linear layer of the model and the LM
head: the forward product and both backward ones, rows = batch × sequence length), weighted by how often the
step runs each, in fp32 and in bf16. Each side's achieved FLOP/s is its tokens/s × ``Transformer.flops_per_token``
(the same architecture on every side), printed with its fraction of the roofline of the --dtype it trains in.

``--smoke`` runs every code path at a tiny shape in seconds (for CI; its figures mean nothing).

``--compile`` adds a side, ``zoo-compiled``: zoo's backbone compiled as ``model.compile: true`` compiles it in training
(:func:`zoo.training.compile.compile_for_training`, inductor: each block on its own), alternating with the eager sides
(HF and LitGPT stay eager, their default); ``--compile-scope blocks,model`` adds ``zoo-compiled-model`` too, the whole
backbone as one graph (``model.compile: model``). The first round's compiled measurement starts from an empty inductor
cache, so its compile time is a cold one, as a first run pays it; later rounds at that shape reuse the cache (a warm
compile, as a rerun or a resume pays it). Both are reported apart (the first step's time less a compiled step's), with
the steps that repay the cold one (compile time / seconds saved per step against zoo eager). ``--dtype bf16,fp32``
measures both in one run.

    python benchmarks/train_throughput.py --compile --compile-scope blocks,model --dtype bf16,fp32 \
        --shapes quickstart,gpt-s-5m,supra-50m,dhara-70m,gpt2-124m,smallcoder-303m

LitGPT cannot share an environment with transformers 5 / datasets 5 (its releases pin numpy < 2 or
huggingface-hub < 1.4), so its side runs in an environment of its own that ``benchmarks/_litgpt_env.py`` creates
on first use (the same torch, LitGPT pinned), under ``$ZOO_CACHE``; ``--litgpt-python`` points at another one.

Peak memory is the training step's high-water mark above the built model: ``torch.cuda.max_memory_allocated``
on a GPU; on a CPU the process's peak resident set (``ru_maxrss``) minus its resident set before the first step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _train_models import CONFIG_SHAPES, SHAPES, build_hf, build_litgpt, build_zoo

IMPLS = ("zoo", "hf", "litgpt")
COMPILED = "zoo-compiled"  # the --compile side (scope blocks, what `compile: true` does)
SCOPES = {"blocks": COMPILED, "model": "zoo-compiled-model"}  # --compile-scope: the side of each scope


BUILDERS = {"zoo": build_zoo, "hf": build_hf, "litgpt": build_litgpt, **{side: build_zoo for side in SCOPES.values()}}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def linear_products(shape, rows: int) -> list[tuple[int, int, int, int]]:
    """The training step's matrix products as ``(count, M, K, N)`` (an (M, K) @ (K, N) product run ``count``
    times per step): each linear layer's forward ``x W^T`` and its two backward products (input gradient
    ``dy W``, weight gradient ``dy^T x``), for every layer and the LM head."""
    layers, dim, heads, kv, hidden, vocab, _ = shape
    head_dim = dim // heads
    linears = [  # (count, in, out)
        (2 * layers, dim, heads * head_dim),  # query, output projections
        (2 * layers, dim, kv * head_dim),  # key, value
        (2 * layers, dim, hidden),  # SwiGLU gate, up
        (layers, hidden, dim),  # SwiGLU down
        (1, dim, vocab),  # LM head
    ]
    products = []
    for count, k, n in linears:
        products += [(count, rows, k, n), (count, rows, n, k), (count, n, rows, k)]
    return products


def roofline(args) -> dict[str, float]:
    """Sustained matmul FLOP/s over :func:`linear_products`: total FLOPs / total time of one step's products."""
    import torch

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {}
    for name in args.roofline_dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        flops = seconds = 0.0
        for count, m, k, n in linear_products(SHAPES[args.shape], args.batch_size * args.seq_len):
            a = torch.randn(m, k, device=device, dtype=dtype)
            b = torch.randn(k, n, device=device, dtype=dtype)
            torch.mm(a, b)  # warm-up: kernel selection, first-touch allocation
            sync()
            reps, elapsed = 0, 0.0
            start = time.perf_counter()
            while elapsed < args.roofline_seconds or reps < 2:
                torch.mm(a, b)
                sync()
                reps += 1
                elapsed = time.perf_counter() - start
            flops += count * 2.0 * m * k * n
            seconds += count * elapsed / reps
        out[name] = flops / seconds
    return out


def worker(args) -> None:
    import torch

    if args.impl == "roofline":
        print(json.dumps(roofline(args)))
        return
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    shape = SHAPES[args.shape]
    config = {"config": CONFIG_SHAPES[args.shape]} if args.shape in CONFIG_SHAPES else {}
    model, loss_fn = BUILDERS[args.impl](shape, args.seq_len, **config)
    model.to(device).train()
    compiled = None
    if args.impl in SCOPES.values():  # in place, so loss_fn calls the compiled module
        # the backbone, as `compile: true` does in training (the fused head + loss stays eager)
        import warnings

        from zoo.training.compile import compile_for_training, compiled_call

        warnings.filterwarnings("error", message="torch.compile (could not|is not)")  # eager would be measured: stop
        scope = next(scope for scope, side in SCOPES.items() if side == args.impl)
        compile_for_training(model.backbone, scope=scope)
        compiled = compiled_call(model.backbone)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # zoo's default where the device has it
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
    start_warmup = time.perf_counter()
    step()
    sync()
    first_step = time.perf_counter() - start_warmup  # includes compilation for zoo-compiled
    for _ in range(args.warmup - 1):
        step()
    sync()
    first_steps = time.perf_counter() - start_warmup
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    profiler = contextlib.nullcontext()
    if args.profile:  # the timed steps' operators, by self time (the profiler's overhead is in the timing then)
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    start = time.perf_counter()
    with profiler:
        for _ in range(args.steps):
            step()
        sync()
    elapsed = time.perf_counter() - start
    if args.profile:
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
        Path(args.profile, f"{args.shape}-{args.dtype}-{args.impl}.txt").write_text(table)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    tokens = args.steps * args.batch_size * args.seq_len
    result = {"tokens_per_s": tokens / elapsed, "peak_mb": peak, "warmup_s": first_steps,
              "step_s": elapsed / args.steps, "compile_s": max(first_step - elapsed / args.steps, 0.0)}
    if compiled is not None:
        assert compiled.signature is not None and compiled.eager_calls == 0, "the compiled graph did not run"
        from torch._dynamo.utils import counters

        result["graphs"] = counters["stats"]["unique_graphs"]  # 1: no graph break, no recompile
    print(json.dumps(result))


def flops_per_token(name: str, seq_len: int) -> float:
    """zoo's ``Transformer.flops_per_token`` for this shape (built on the meta device: no memory, no time)."""
    import torch

    with torch.device("meta"):
        model, _ = build_zoo(SHAPES[name], seq_len, CONFIG_SHAPES.get(name))
    return model.backbone.flops_per_token(seq_len)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="gpt-s-5m,supra-50m,gpt2-124m",
                   help="comma-separated, from: " + ", ".join(SHAPES) + f" ({', '.join(CONFIG_SHAPES)}: zoo's sides "
                        "only)")
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated, from: " + ", ".join(IMPLS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16, or both comma-separated (measured one after the other)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="zoo/HF/LitGPT alternations per shape")
    p.add_argument("--compile", action="store_true", help=f"add the side {COMPILED}: zoo's training compile")
    p.add_argument("--compile-scope", default="blocks",
                   help="with --compile, comma-separated, from: blocks (each block compiled, the default scope; side "
                        f"{COMPILED}), model (the whole backbone as one graph; side {SCOPES['model']})")
    p.add_argument("--roofline-dtypes", default="fp32,bf16", help="comma-separated, from: fp32, bf16")
    p.add_argument("--roofline-seconds", type=float, default=0.3, help="timing per matrix product of the roofline")
    p.add_argument("--litgpt-python", help="a Python with LitGPT and torch (default: benchmarks/_litgpt_env.py's)")
    p.add_argument("--profile", help="write each measurement's operator profile (torch.profiler) to this folder")
    p.add_argument("--json", help="also write the medians, rooflines and FLOPs per token to this file")
    p.add_argument("--smoke", action="store_true", help="every code path at a tiny shape, in seconds (for CI)")
    p.add_argument("--impl", choices=(*IMPLS, *SCOPES.values(), "roofline"), help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.shapes, args.batch_size, args.seq_len, args.steps, args.warmup, args.rounds = "tiny", 2, 32, 1, 1, 1
        args.roofline_seconds = 0.0
    for name in args.shapes.split(","):
        if name not in SHAPES:
            p.error(f"--shapes: unknown shape {name!r}; choose from {', '.join(SHAPES)}")
    for name in args.dtype.split(","):
        if name not in ("fp32", "bf16"):
            p.error(f"--dtype: unknown {name!r}; choose from fp32, bf16")
    for name in args.compile_scope.split(","):
        if name not in SCOPES:
            p.error(f"--compile-scope: unknown scope {name!r}; choose from {', '.join(SCOPES)}")
    for name in args.impls.split(","):
        if name not in IMPLS:
            p.error(f"--impls: unknown side {name!r}; choose from {', '.join(IMPLS)}")
    return args


def main() -> None:
    args = parse_args()
    if args.impl:
        return worker(args)

    root = Path(__file__).resolve().parents[1]
    dtypes = args.dtype.split(",")
    common = [f"--device={args.device}", f"--batch-size={args.batch_size}", f"--seq-len={args.seq_len}",
              f"--steps={args.steps}", f"--warmup={args.warmup}", f"--roofline-dtypes={args.roofline_dtypes}",
              f"--roofline-seconds={args.roofline_seconds}"]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        common.append(f"--profile={Path(args.profile).resolve()}")
    impls = args.impls.split(",")
    if args.compile:  # right after zoo eager, so the zoo sides see the same machine
        at = impls.index("zoo") + 1 if "zoo" in impls else 0
        impls[at:at] = [SCOPES[scope] for scope in args.compile_scope.split(",")]
    python = {impl: sys.executable for impl in impls}
    if "litgpt" in impls:
        from _litgpt_env import litgpt_python

        python["litgpt"] = args.litgpt_python or str(litgpt_python())
    print(f"device={args.device} dtype={args.dtype} batch={args.batch_size}x{args.seq_len} steps={args.steps} "
          f"rounds={args.rounds} compile={args.compile} torch={_version('torch')} "
          f"transformers={_version('transformers')} litgpt={_version('litgpt', python.get('litgpt'))}")

    caches = tempfile.TemporaryDirectory()  # an inductor cache per shape and dtype, empty at its first round

    def run(impl: str, name: str, dtype: str = "fp32") -> dict:
        env = dict(os.environ)
        if impl in SCOPES.values():
            env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(caches.name, f"{name}-{dtype}-{impl}")
        out = subprocess.run(
            [python.get(impl, sys.executable), __file__, f"--impl={impl}", f"--shape={name}",
             f"--dtype={dtype}", *common],
            cwd=root, capture_output=True, text=True, env=env,
        )
        if out.returncode != 0:
            raise SystemExit(f"the {impl} measurement at {name} ({dtype}) failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    if args.smoke:  # the seeds' config shapes still build (on the meta device: no memory, no time)
        for name in CONFIG_SHAPES:
            print(f"  {name}: {flops_per_token(name, args.seq_len) / 1e6:.1f} MFLOP/token", flush=True)
    summary = {}
    for name in args.shapes.split(","):
        roof = run("roofline", name)
        print(f"  {name} roofline (matmul at this shape): "
              + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in roof.items()), flush=True)
        per_token = flops_per_token(name, args.seq_len)
        sides = [impl for impl in impls if impl.startswith("zoo") or name not in CONFIG_SHAPES]
        for dtype in dtypes:
            label = name if len(dtypes) == 1 else f"{name} {dtype}"
            summary[label] = {"roofline": roof, "flops_per_token": per_token, "dtype": dtype,
                              "median": measure(args, run, name, dtype, sides, label, roof, per_token)}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


def measure(args, run, name: str, dtype: str, impls: list[str], label: str, roof: dict, per_token: float) -> dict:
    """``--rounds`` alternations of the sides at one shape and dtype; prints each round and the medians, which it
    returns by side."""
    results = {impl: [] for impl in impls}
    for r in range(args.rounds):
        for impl in impls:
            results[impl].append(run(impl, name, dtype))
            last = results[impl][-1]
            extra = f"  compile {last['compile_s']:.1f} s, graphs {last['graphs']}" if "graphs" in last else ""
            print(f"  {label} round {r + 1} {impl:>18}: {last['tokens_per_s']:9.0f} tok/s "
                  f"peak {last['peak_mb']:8.1f} MB  first {args.warmup} steps {last['warmup_s']:.1f} s{extra}",
                  flush=True)
    keys = ("tokens_per_s", "peak_mb", "warmup_s", "step_s", "compile_s")
    med = {k: {m: statistics.median(x[m] for x in v) for m in keys} for k, v in results.items()}
    compiled_sides = [side for side in SCOPES.values() if side in med]
    for side in compiled_sides:  # the first round's compile was cold, the others warm
        med[side]["cold_compile_s"] = results[side][0]["compile_s"]
        warm = results[side][1:] or results[side]
        med[side]["compile_s"] = statistics.median(x["compile_s"] for x in warm)
    line = ", ".join(f"{k} {v['tokens_per_s']:.0f} tok/s peak {v['peak_mb']:.0f} MB" for k, v in med.items())
    for peer in ("hf", "litgpt"):
        if peer in med:
            line += f"; speed vs {peer} " + ", ".join(
                f"{k}/{peer} {v['tokens_per_s'] / med[peer]['tokens_per_s']:.2f}" for k, v in med.items() if k != peer
            )
    if "hf" in med:
        line += "; memory vs HF " + ", ".join(
            f"{k}/HF {v['peak_mb'] / max(med['hf']['peak_mb'], 1e-9):.2f}" for k, v in med.items() if k != "hf"
        )
    print(f"{label}: {line}", flush=True)
    for side in compiled_sides if "zoo" in med else ():
        eager, compiled = med["zoo"], med[side]
        saved = eager["step_s"] - compiled["step_s"]
        payback = f"the cold one repaid after {compiled['cold_compile_s'] / saved:.0f} steps" if saved > 0 else (
            "never repaid")
        print(f"{label}: {side}/eager {compiled['tokens_per_s'] / eager['tokens_per_s']:.2f}, step "
              f"{eager['step_s']:.3f} s eager, {compiled['step_s']:.3f} s compiled; compile "
              f"{compiled['cold_compile_s']:.1f} s cold, {compiled['compile_s']:.1f} s warm; {payback}", flush=True)
    ceiling = roof.get(dtype)
    print(f"{label}: {per_token / 1e6:.1f} MFLOP/token; achieved " + ", ".join(
        f"{k} {v['tokens_per_s'] * per_token / 1e9:.1f} GFLOP/s"
        + (f" = {v['tokens_per_s'] * per_token / ceiling:.0%} of the {dtype} roofline" if ceiling else "")
        for k, v in med.items()), flush=True)
    return med


def _version(package: str, python: str | None = None) -> str:
    """The installed version of ``package`` here, or in the environment of ``python``."""
    if python and python != sys.executable:
        code = f"from importlib.metadata import version; print(version({package!r}))"
        out = subprocess.run([python, "-c", code], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else "not installed"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.path[1:1] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
    main()
