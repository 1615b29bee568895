"""Generation speed: zoo's KV-cache decoding against transformers' ``generate`` on the same weights.

The zoo backbone is converted with :func:`zoo.interop.to_hf` (a ``LlamaForCausalLM`` for the quickstart shape),
so both sides hold the same weights in the same dtype. Both decode greedily with a KV cache (``use_cache=True``),
from the same prompts, for the same number of new tokens, EOS ignored (transformers: ``min_new_tokens`` =
``max_new_tokens``; zoo: no ``eos_id``), so every row writes all of them. At each batch size, after a warm-up of
each side, every round times zoo then transformers (alternating, so drifts in clock speed or load hit both alike);
the median over ``--rounds`` is reported as new tokens per second (batch × new tokens / seconds), with the ratio
zoo / transformers. The greedy tokens of both are compared too (``same tokens``): equal up to float rounding on near
ties, a check that the two runs did the same work.

::

    python benchmarks/generation_vs_hf.py                                        # random weights, quickstart shape
    python benchmarks/generation_vs_hf.py --ckpt runs/quickstart/.../last.ckpt   # a trained checkpoint
    python benchmarks/generation_vs_hf.py --device cuda --batch-sizes 1,8,32
    python benchmarks/generation_vs_hf.py --smoke      # a tiny model, every code path in seconds (CI)

Prompts: ``--batch-sizes`` rows of ``--prompt-tokens`` tokens (random ids from a seeded generator, or, with a
checkpoint, the tokens of stdlib source lines), all of one length so no padding enters either side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from generation_speed import add_shape_arguments, provenance, random_backbone, timed  # noqa: E402


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
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--smoke", action="store_true", help="a tiny random model, one round: seconds (for CI)")
    args = p.parse_args()
    if args.smoke:
        args.dim, args.layers, args.heads, args.kv_heads, args.ffn, args.vocab, args.context = 32, 2, 4, 2, 64, 128, 64
        args.prompt_tokens, args.new_tokens, args.batch_sizes, args.rounds, args.ckpt = 4, 4, "1,2", 1, None
    if args.dtype == "bf16" and args.device != "cuda":
        raise SystemExit("--dtype bf16 is for --device cuda; on CPU measure fp32")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import transformers

    from zoo.generation import generate
    from zoo.interop import to_hf

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

    def run_zoo(prompts):
        return generate(zoo_model, prompts, max_new_tokens=n).tokens

    @torch.no_grad()
    def run_hf(prompts):
        ids = torch.tensor(prompts, device=device)
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, use_cache=True, pad_token_id=0)  # fmt: skip
        return out[:, ids.shape[1] :].tolist()

    rows = []
    for batch in batch_sizes:
        prompts = all_prompts[:batch]
        run_zoo(prompts), run_hf(prompts)  # warm-up: allocations, kernel selection
        times: dict[str, list[float]] = {"zoo": [], "hf": []}
        outputs = {}
        for _ in range(args.rounds):
            for name, fn in (("zoo", run_zoo), ("hf", run_hf)):
                seconds, outputs[name] = timed(lambda fn=fn, prompts=prompts: fn(prompts), device)
                times[name].append(seconds)
        zoo_speed = batch * n / statistics.median(times["zoo"])
        hf_speed = batch * n / statistics.median(times["hf"])
        same = sum(a == b for a, b in zip(outputs["zoo"], outputs["hf"]))
        rows.append((batch, zoo_speed, hf_speed, same))

    print(provenance(args, device))
    print(f"transformers={transformers.__version__} peer={type(hf_model).__name__}.generate(use_cache=True, greedy) "
          f"new_tokens={n} prompt_tokens={args.prompt_tokens} rounds={args.rounds} (median) "
          f"shape: dim={backbone.dim} layers={backbone.n_layers} vocab={backbone.vocab_size} "
          f"weights={'checkpoint' if args.ckpt else 'random'}")  # fmt: skip
    print(f"| {'batch':>5} | {'zoo tokens/s':>12} | {'HF tokens/s':>11} | {'zoo / HF':>8} | {'same tokens':>11} |")
    print(f"|{'-' * 6}:|{'-' * 13}:|{'-' * 12}:|{'-' * 9}:|{'-' * 12}:|")
    for batch, zoo_speed, hf_speed, same in rows:
        print(f"| {batch:>5} | {zoo_speed:>12.1f} | {hf_speed:>11.1f} | {zoo_speed / hf_speed:>7.2f}x | "
              f"{f'{same}/{batch} rows':>11} |")  # fmt: skip


if __name__ == "__main__":
    main()
