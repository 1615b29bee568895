"""Generation speed: zoo's KV-cache decoding, eager and compiled, against transformers' ``generate`` on the same
weights (and llama.cpp on the GGUF export, f32, f16 and q8_0).

The zoo backbone is converted with :func:`zoo.interop.to_hf` (a ``LlamaForCausalLM`` for the quickstart shape),
so both sides hold the same weights in the same dtype. Both decode greedily with a KV cache (``use_cache=True``),
from the same prompts, for the same number of new tokens, EOS ignored (transformers: ``min_new_tokens`` =
``max_new_tokens``; zoo: no ``eos_id``), so every row writes all of them. Zoo runs eagerly (``compile=False``) and
compiled (``compile=True``: a static KV cache and a ``torch.compile``d one-token step; the first call, which
compiles, is timed apart). At each batch size, after a warm-up of each side, every round times every side, the order
reversed every other round (so drifts in clock speed or load hit all alike); the median over ``--rounds`` is
reported as new tokens per second (batch × new tokens / seconds), with the ratios to zoo eager and to transformers.
The greedy tokens are compared with zoo eager's (``same tokens``): equal up to float rounding on near ties, a check
that the runs did the same work. On the CPU, when llama-cpp-python is installed, llama.cpp runs the GGUF export at
f32, f16 and q8_0 in the same rounds (``--no-llama-cpp`` leaves it out; random weights get a BPE trained on the
stdlib corpus for the export); it decodes the rows one after another (``Llama.generate`` decodes one sequence).

::

    python benchmarks/generation_vs_hf.py                                        # random weights, quickstart shape
    python benchmarks/generation_vs_hf.py --ckpt runs/quickstart/.../last.ckpt   # a trained checkpoint
    python benchmarks/generation_vs_hf.py --device cuda --batch-sizes 1,8,32
    python benchmarks/generation_vs_hf.py --smoke      # a tiny model, every code path in seconds (CI; the compiled
                                                       # step traced with aot_eager: no C++ to build)

Prompts: ``--batch-sizes`` rows of ``--prompt-tokens`` tokens (random ids from a seeded generator, or, with a
checkpoint, the tokens of stdlib source lines), all of one length so no padding enters either side.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from generation_speed import add_shape_arguments, provenance, random_backbone, timed  # noqa: E402
from gguf_speed import llama_run  # noqa: E402


def checkpoint_prompts(ckpt: str, n_rows: int, n_tokens: int) -> list[list[int]]:
    """``n_rows`` prompts of exactly ``n_tokens`` tokens: consecutive stretches of this file's source, tokenized
    with the checkpoint's tokenizer (real text, so a trained model writes plausible code after it)."""
    from zoo.data.tokenizer import tokenizer_from_checkpoint

    tokenizer, _ = tokenizer_from_checkpoint(ckpt)
    ids = tokenizer.encode(Path(__file__).read_text(), add_special_tokens=False).ids
    if len(ids) < n_rows * n_tokens:
        raise SystemExit(f"--prompt-tokens {n_tokens} × {n_rows} rows is more text than the prompt source holds")
    return [ids[i * n_tokens : (i + 1) * n_tokens] for i in range(n_rows)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="AR checkpoint (python -m zoo fit); default: random weights")
    add_shape_arguments(p)
    p.add_argument("--prompt-tokens", type=int, default=16, help="tokens per prompt")
    p.add_argument("--new-tokens", type=int, default=100, help="tokens every row generates")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per batch size; the median is reported")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: cuda only")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's; llama.cpp gets as many)")
    p.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp out (CPU only anyway)")
    p.add_argument("--smoke", action="store_true", help="a tiny random model, one round: seconds (for CI)")
    args = p.parse_args()
    if args.smoke:
        args.dim, args.layers, args.heads, args.kv_heads, args.ffn, args.vocab, args.context = 32, 2, 4, 2, 64, 128, 64
        args.prompt_tokens, args.new_tokens, args.batch_sizes, args.rounds, args.ckpt = 4, 4, "1,2", 1, None
        args.no_llama_cpp = True  # benchmarks/gguf_speed.py --smoke runs that path
    if args.dtype == "bf16" and args.device != "cuda":
        raise SystemExit("--dtype bf16 is for --device cuda; on CPU measure fp32")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import transformers

    from zoo.generation import compiled, generate
    from zoo.interop import to_hf

    if args.smoke:
        compiled.BACKEND = "aot_eager"  # the same graph traced, no C++ to build: seconds
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if args.ckpt:
        from zoo.objectives import LanguageModel

        backbone = LanguageModel.from_checkpoint(args.ckpt, map_location="cpu").backbone
        all_prompts = checkpoint_prompts(args.ckpt, max(batch_sizes), args.prompt_tokens)
    else:
        backbone = random_backbone(args)
        g = torch.Generator().manual_seed(0)
        all_prompts = torch.randint(0, args.vocab, (max(batch_sizes), args.prompt_tokens), generator=g).tolist()
    zoo_model = backbone.to(device, dtype).eval()
    hf_model = to_hf(backbone, dtype=dtype).to(device).eval()
    n = args.new_tokens

    def run_zoo(prompts, compile=False):
        return generate(zoo_model, prompts, max_new_tokens=n, compile=compile).tokens

    @torch.no_grad()
    def run_hf(prompts):
        ids = torch.tensor(prompts, device=device)
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, use_cache=True, pad_token_id=0)  # fmt: skip
        return out[:, ids.shape[1] :].tolist()

    runners = {"zoo eager": run_zoo, "zoo compiled": lambda prompts: run_zoo(prompts, compile=True), "HF": run_hf}
    llama_note = "llama.cpp: not run (--no-llama-cpp, or not the CPU)"
    if device.type == "cpu" and not args.no_llama_cpp:
        llama_note, llms = llama_cpp_models(args, backbone)
        for outtype, llm in llms.items():
            runners[f"llama.cpp {outtype}"] = lambda prompts, llm=llm: [llama_run(llm, ids, n) for ids in prompts]
    rows, load = [], [f"{os.getloadavg()[0]:.1f}"]
    for batch in batch_sizes:
        prompts = all_prompts[:batch]
        start = time.perf_counter()
        runners["zoo compiled"](prompts)  # compiles (or reuses the step compiled for these shapes)
        compile_seconds = time.perf_counter() - start
        for run in runners.values():  # warm-up: allocations, kernel selection
            run(prompts)
        times: dict[str, list[float]] = {name: [] for name in runners}
        outputs = {}
        for r in range(args.rounds):
            for name in list(runners) if r % 2 == 0 else list(reversed(runners)):
                seconds, out = timed(lambda fn=runners[name], prompts=prompts: fn(prompts), device)
                times[name].append(seconds)
                outputs.setdefault(name, out)
            load.append(f"{os.getloadavg()[0]:.1f}")
        speeds = {name: batch * n / statistics.median(t) for name, t in times.items()}
        same = {name: sum(a == b for a, b in zip(out, outputs["zoo eager"])) for name, out in outputs.items()}
        rows.append((batch, compile_seconds, speeds, same))

    print(provenance(args, device))
    print(f"transformers={transformers.__version__} peer={type(hf_model).__name__}.generate(use_cache=True, greedy) "
          f"new_tokens={n} prompt_tokens={args.prompt_tokens} rounds={args.rounds} (median) "
          f"shape: dim={backbone.dim} layers={backbone.n_layers} vocab={backbone.vocab_size} "
          f"weights={'checkpoint' if args.ckpt else 'random'}")  # fmt: skip
    print(f"{llama_note}; compile backend: {compiled.BACKEND if isinstance(compiled.BACKEND, str) else 'custom'}; "
          f"load average (1 min) at the start and after each round: {' '.join(load)}")  # fmt: skip
    print("| batch | engine | tokens/s | × zoo eager | × HF | same tokens as zoo eager |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch, compile_seconds, speeds, same in rows:
        for name, speed in speeds.items():
            print(f"| {batch} | {name} | {speed:,.1f} | {speed / speeds['zoo eager']:.2f}× | "
                  f"{speed / speeds['HF']:.2f}× | {same[name]}/{batch} rows |")  # fmt: skip
        print(f"| {batch} | (zoo compiled: first call, compiling included) | {compile_seconds:.1f} s | | | |")


def llama_cpp_models(args, backbone) -> tuple[str, dict]:
    """llama.cpp models of the GGUF export at every type, with a line saying what ran (or why nothing did)."""
    try:
        import llama_cpp
    except ImportError:
        return "llama.cpp: not run (llama-cpp-python is not installed: pip install -e '.[gguf]')", {}
    from gguf_speed import OUTTYPES

    from zoo.interop.gguf import write_gguf

    if args.ckpt:
        from zoo.data.tokenizer import tokenizer_from_checkpoint

        tokenizer, eos = tokenizer_from_checkpoint(args.ckpt)
    else:  # the export needs a tokenizer; the prompts are ids, so any BPE of the model's vocabulary size will do
        from zoo.data.corpus import stdlib_documents, stdlib_shards
        from zoo.data.tokenizer import EOS, train_bpe

        texts = [d["text"] for d in stdlib_documents("code", stdlib_shards("code", limit=40))]
        tokenizer, eos = train_bpe(texts, vocab_size=backbone.vocab_size), EOS
    threads = torch.get_num_threads()
    folder = tempfile.mkdtemp(prefix="zoo-gguf-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    llms = {}
    for outtype in OUTTYPES:
        path = write_gguf(backbone, tokenizer, Path(folder) / f"m-{outtype}.gguf", eos=eos, outtype=outtype)
        llms[outtype] = llama_cpp.Llama(model_path=str(path), n_ctx=backbone.max_seq_len, n_threads=threads,
                                        n_threads_batch=threads, verbose=False)  # fmt: skip
    return f"llama.cpp: llama-cpp-python {llama_cpp.__version__}, n_threads={threads}", llms


if __name__ == "__main__":
    main()
