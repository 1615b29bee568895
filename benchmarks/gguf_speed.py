"""Decoding speed of llama.cpp on zoo's GGUF export against zoo's own ``generate``, eager and compiled, on the CPU.

What the export buys a user on a CPU: the same model (a checkpoint, or random weights of the quickstart's shape),
the same prompts (16 tokens of the stdlib corpus) and the same number of new tokens (greedy, EOS ignored), the same
number of threads for torch and llama.cpp (``--threads``), one process. At each batch size (``--batch-sizes``),
each round runs zoo eager (``generate(compile=False)``), zoo compiled (``compile=True``: a static KV cache and a
``torch.compile``d step; its first call, which compiles, is a warm-up timed apart) and llama.cpp at every GGUF type
(f32, f16, q8_0), the order of the sides reversed every other round, so drifts in clock speed or load hit all
alike; the median tokens/s over ``--rounds`` is reported (prompt processing included on every side), with the
ratios to zoo eager and to llama.cpp f32 and how many rows gave exactly zoo eager's greedy tokens. Batch 1 decodes
``--prompts`` prompts one at a time; batch B decodes B prompts in one call of zoo's ``generate``, and one after
another in llama.cpp (``Llama.generate`` decodes one sequence)::

    python benchmarks/gguf_speed.py                                          # random weights, quickstart shape
    python benchmarks/gguf_speed.py --ckpt runs/quickstart/lightning_logs/version_0/checkpoints/last.ckpt
    python benchmarks/gguf_speed.py --smoke                                  # seconds: a tiny model, CI

The smoke mode traces the compiled step with the ``aot_eager`` backend (the same graph, no C++ to build), so it
checks the code paths in seconds, not inductor's speed.

Needs llama-cpp-python (``pip install -e ".[gguf]"``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/gguf_speed.py` from a checkout

from benchmarks.generation_speed import add_shape_arguments, random_backbone  # noqa: E402

OUTTYPES = ("f32", "f16", "q8_0")


def model_and_tokenizer(args):
    """(backbone, tokenizer, eos, what the weights are) from ``--ckpt``, or random weights with a BPE trained on a
    slice of the stdlib corpus."""
    from zoo.data.corpus import stdlib_documents, stdlib_shards
    from zoo.data.tokenizer import EOS, tokenizer_from_checkpoint, train_bpe

    if args.ckpt:
        from zoo.objectives import LanguageModel

        model = LanguageModel.from_checkpoint(args.ckpt, map_location="cpu")
        tokenizer, eos = tokenizer_from_checkpoint(args.ckpt)
        return model.backbone.eval(), tokenizer, eos, f"checkpoint {args.ckpt}"
    texts = [d["text"] for d in stdlib_documents("code", stdlib_shards("code", limit=40))]
    tokenizer = train_bpe(texts, vocab_size=args.vocab)
    torch.manual_seed(0)
    return random_backbone(args).eval(), tokenizer, EOS, "random weights"


def prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    from zoo.data.corpus import stdlib_documents, stdlib_shards

    out = []
    for doc in stdlib_documents("code", stdlib_shards("code", limit=200)[100:]):
        ids = tokenizer.encode(doc["text"]).ids
        if len(ids) >= length:
            out.append(ids[:length])
        if len(out) == n:
            return out
    raise RuntimeError("the stdlib corpus gave too few prompts")


def zoo_run(backbone, rows: list[list[int]], new: int, *, compile: bool) -> list[list[int]]:
    from zoo.generation import generate

    return generate(backbone, rows, max_new_tokens=new, temperature=0.0, compile=compile).tokens


def llama_run(llm, ids: list[int], new: int) -> list[int]:
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == new:
            return out
    return out


def cpu_description() -> tuple[str, str]:
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile")
    return name, " ".join(f for f in wanted if f in flags)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a `python -m zoo fit` checkpoint of a Llama-shaped model (default: random)")
    add_shape_arguments(p)
    p.add_argument("--threads", type=int, default=1, help="threads for torch and llama.cpp alike (default 1)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per round")
    p.add_argument("--prompt-tokens", type=int, default=16, help="tokens per prompt")
    p.add_argument("--new-tokens", type=int, default=100, help="new tokens per prompt (greedy, EOS ignored)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    p.add_argument("--smoke", action="store_true", help="a tiny model, 2 prompts, 8 tokens, 1 round (CI)")
    args = p.parse_args()
    if args.smoke:
        args.dim, args.layers, args.heads, args.kv_heads, args.ffn, args.vocab, args.context = 32, 2, 4, 2, 64, 300, 64
        args.prompts, args.prompt_tokens, args.new_tokens, args.rounds, args.ckpt = 2, 8, 8, 1, None
        args.batch_sizes = "1,2"
    import llama_cpp

    from zoo.generation import compiled
    from zoo.interop.gguf import write_gguf

    if args.smoke:
        compiled.BACKEND = "aot_eager"
    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    backbone, tokenizer, eos, weights = model_and_tokenizer(args)
    all_rows = prompts(tokenizer, max(args.prompts, *batch_sizes), args.prompt_tokens)
    if args.prompt_tokens + args.new_tokens > backbone.max_seq_len:
        raise SystemExit(f"--prompt-tokens + --new-tokens exceed the model's context {backbone.max_seq_len}")
    load = [f"{os.getloadavg()[0]:.1f}"]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        llms = {}
        for outtype in OUTTYPES:
            path = write_gguf(backbone, tokenizer, Path(folder) / f"m-{outtype}.gguf", eos=eos, outtype=outtype)
            llms[outtype] = llama_cpp.Llama(model_path=str(path), n_ctx=backbone.max_seq_len, n_threads=args.threads,
                                            n_threads_batch=args.threads, verbose=False)  # fmt: skip
        for batch in batch_sizes:
            chunks = [all_rows[:batch]] if batch > 1 else [[row] for row in all_rows[: args.prompts]]
            n_rows = sum(len(c) for c in chunks)
            runners = {
                "zoo eager": lambda chunk: zoo_run(backbone, chunk, args.new_tokens, compile=False),
                "zoo compiled": lambda chunk: zoo_run(backbone, chunk, args.new_tokens, compile=True),
            }
            runners |= {
                f"llama.cpp {t}": (lambda chunk, llm=llm: [llama_run(llm, ids, args.new_tokens) for ids in chunk])
                for t, llm in llms.items()
            }
            start = time.perf_counter()
            runners["zoo compiled"](chunks[0])  # compiles (or reuses the step compiled for these shapes)
            compile_seconds = time.perf_counter() - start
            for run in runners.values():  # warm-up: first-call allocations and caches
                run(chunks[0])
            speeds: dict[str, list[float]] = {name: [] for name in runners}
            tokens: dict[str, list[list[int]]] = {}
            for r in range(args.rounds):
                order = list(runners) if r % 2 == 0 else list(reversed(runners))
                for name in order:
                    start = time.perf_counter()
                    outs = [row for chunk in chunks for row in runners[name](chunk)]
                    speeds[name].append(n_rows * args.new_tokens / (time.perf_counter() - start))
                    tokens.setdefault(name, outs)
                load.append(f"{os.getloadavg()[0]:.1f}")
            results.append((batch, n_rows, compile_seconds, speeds, tokens))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    cpu, flags = cpu_description()
    print(f"# llama.cpp on zoo's GGUF export vs zoo `generate` (eager, compiled), {datetime.date.today()}")
    print(f"machine: {cpu}, {torch.get_num_threads()} torch thread(s), llama.cpp n_threads={args.threads}; "
          f"CPU flags: {flags}; load average (1 min) at the start and after each round: {' '.join(load)}")  # fmt: skip
    print(f"torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, commit {commit.stdout.strip()}, "
          f"compile backend {compiled.BACKEND if isinstance(compiled.BACKEND, str) else 'custom'}")  # fmt: skip
    print(f"model: {weights}, {backbone.num_parameters():,} parameters ({backbone.n_layers} × {backbone.dim}, "
          f"vocab {backbone.vocab_size}); prompts of {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
          f"greedy; median of {args.rounds} alternating round(s)")  # fmt: skip
    print(f"command: python benchmarks/gguf_speed.py {' '.join(sys.argv[1:])}\n")
    print("| batch | engine | tokens/s | × zoo eager | × llama.cpp f32 | rows with zoo eager's greedy tokens |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch, n_rows, compile_seconds, speeds, tokens in results:
        base, peer = statistics.median(speeds["zoo eager"]), statistics.median(speeds["llama.cpp f32"])
        for name in speeds:
            speed = statistics.median(speeds[name])
            same = sum(a == b for a, b in zip(tokens[name], tokens["zoo eager"]))
            print(f"| {batch} | {name} | {speed:,.1f} | {speed / base:.2f}× | {speed / peer:.2f}× | {same}/{n_rows} |")
        print(f"| {batch} | (zoo compiled: first call, compiling included) | {compile_seconds:.1f} s | | | |")


if __name__ == "__main__":
    main()
