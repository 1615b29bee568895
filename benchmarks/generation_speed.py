"""Generation speed with quality beside it: masked-diffusion samplers against autoregressive decoding with a KV cache.

One process, one machine, the same prompts for every setting (``--prompts`` of ``--prompt-tokens`` tokens cut from
the validation split of the stdlib corpus, the quickstart's data; random ids with random weights), the same number
of new tokens (EOS ignored, so every setting writes them all), at each batch size in ``--batches``. After a
warm-up, each round runs every setting once in turn (so drifts in clock speed or load hit all alike); the median
over ``--rounds`` is reported. Settings:

* ``AR, KV cache``: :func:`zoo.generation.generate`, greedy.
* ``vanilla, N steps``: LLaDA's sampler, :func:`zoo.generation.low_confidence_remasking` (a full pass per step).
* ``prefix|dual cache, N steps [, threshold T]``: :func:`zoo.generation.diffusion_generate` with Fast-dLLM's
  block-wise KV cache refreshed once per block, optionally with confidence-threshold parallel decoding on top of
  the same ``N`` steps (each step unmasks at least its share, and every position at least ``T`` confident).

Columns: tokens/s (all rows' new tokens per second), the ratio to AR and to the vanilla sampler with the same steps
(measured in the same run), forward passes per new token of a row, and quality:

* ``judge NLL``: the new tokens' mean NLL under the AR model ("generative perplexity", MDLM);
* ``= AR``: the fraction of new tokens equal to the AR model's greedy continuation at the same position;
* ``= vanilla``: the fraction equal to the vanilla sampler's with the same steps (how far the cache moves it).

::

    python benchmarks/generation_speed.py --smoke                          # random tiny weights, seconds (CI)
    python benchmarks/generation_speed.py --ar-ckpt runs/quickstart/.../last.ckpt \\
        --diffusion-ckpt runs/diffusion-quickstart/.../last.ckpt
    python benchmarks/generation_speed.py --device cuda --dtype bf16 --dim 384 --layers 32 --heads 8 \\
        --kv-heads 4 --ffn 1024 --vocab 50304 --context 1024                 # a Dhara-70M-like shape, random weights

With random weights quality is "n/a": only the speed is meaningful then.

``--compile`` adds a compiled twin of every setting (``generate(compile=True)``: a static KV cache and a compiled
one-token step; ``diffusion_generate(compile=True)``: each pass a compiled graph, :mod:`zoo.generation.compiled`),
timed in the same rounds, with its speed over its eager twin's (``vs eager``), the fraction of its tokens equal to
the twin's (``= eager``: 1 unless rounding decides between two near-equal predictions, which random weights make
common in the diffusion samplers' confidence ranking) and the time of its first call, which compiles (``first
call``, excluded from the timing). ``--smoke`` traces the compiled passes with the ``aot_eager``
backend (the same graphs, no C++ to build).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def add_shape_arguments(p: argparse.ArgumentParser, *, vocab_help: str = "random weights: vocabulary") -> None:
    """The random-weights model shape (default: the quickstart's, configs/quickstart.yaml)."""
    p.add_argument("--dim", type=int, default=192, help="random weights: model width (quickstart: 192)")
    p.add_argument("--layers", type=int, default=6, help="random weights: blocks")
    p.add_argument("--heads", type=int, default=6, help="random weights: query heads")
    p.add_argument("--kv-heads", type=int, default=2, help="random weights: key/value heads")
    p.add_argument("--ffn", type=int, default=512, help="random weights: SwiGLU hidden size")
    p.add_argument("--vocab", type=int, default=4096, help=vocab_help)
    p.add_argument("--context", type=int, default=256, help="random weights: max_seq_len")


def random_backbone(args, *, causal: bool = True):
    """A Llama-style backbone of the shape in ``args`` (:func:`add_shape_arguments`) with random weights."""
    from zoo.nn import GroupedQueryAttention, PreNormBlock, RMSNorm, Rotary, SwiGLU, Transformer

    return Transformer(
        vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, max_seq_len=args.context, norm=RMSNorm,
        position=Rotary,
        block=lambda d: PreNormBlock(
            d, attention=lambda d: GroupedQueryAttention(d, n_heads=args.heads, n_kv_heads=args.kv_heads,
                                                         causal=causal),
            ffn=lambda d: SwiGLU(d, hidden_dim=args.ffn), norm=RMSNorm,
        ),
    )  # fmt: skip


def timed(fn, device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def provenance(args, device) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return (
        f"date={datetime.date.today()} commit={commit} device={device} ({machine}, {torch.get_num_threads()} "
        f"threads) dtype={args.dtype} torch={torch.__version__}\n"
        f"command: python {' '.join(sys.argv)}"
    )


def load_models(args) -> dict:
    """AR and diffusion backbones, the mask id, the shift, and (checkpoints) the tokenizer."""
    if not args.ar_ckpt:
        return {"ar": random_backbone(args), "diffusion": random_backbone(args, causal=False),
                "mask_id": args.vocab - 1, "shift": False, "block_causal": None}  # fmt: skip
    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.objectives import LanguageModel

    ar = LanguageModel.from_checkpoint(args.ar_ckpt, map_location="cpu")
    diffusion = LanguageModel.from_checkpoint(args.diffusion_ckpt, map_location="cpu")
    tokenizer, eos = tokenizer_from_checkpoint(args.ar_ckpt)
    described = diffusion.description
    return {"ar": ar.backbone, "diffusion": diffusion.backbone, "mask_id": described.mask_id,
            "shift": described.shift, "block_causal": described.block_size,
            "tokenizer": tokenizer, "eos": eos}  # fmt: skip


def validation_prompts(tokenizer, eos: str, *, n: int, length: int) -> list[list[int]]:
    """``n`` prompts of ``length`` tokens: the start of successive validation rows of the stdlib corpus."""
    from zoo.data import PretrainedTokenizer, StdlibCorpus

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        tokenizer.save(str(path))
        data = StdlibCorpus(tokenizer=PretrainedTokenizer(path=str(path), eos_token=eos), seq_len=64, batch_size=n)
        batch = next(iter(data.val_dataloader()))
    return batch["input_ids"][:, :length].tolist()


@torch.no_grad()
def judge_nll(ar, prompts: torch.Tensor, new: torch.Tensor) -> float:
    """Mean NLL per new token under the AR model. prompts (B, P), new (B, N)."""
    ids = torch.cat([prompts, new], dim=1)
    logits = ar(ids)[:, prompts.shape[1] - 1 : -1].float()  # (B, N, V)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), new.flatten()).item()


def settings(args) -> list[tuple[str, dict | None]]:
    out: list[tuple[str, dict | None]] = [("AR, KV cache", None)]
    for steps in (int(s) for s in args.steps.split(",") if s):
        out.append((f"vanilla, {steps} steps", {"steps": steps, "cache": "vanilla"}))
        for cache in args.caches.split(","):
            out.append((f"{cache} cache, {steps} steps", {"steps": steps, "cache": cache}))
        for threshold in (float(t) for t in args.thresholds.split(",") if t):
            out.append((f"dual cache, {steps} steps, thr {threshold}",
                        {"steps": steps, "cache": "dual", "threshold": threshold}))  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ar-ckpt", help="AR checkpoint (python -m zoo fit); with --diffusion-ckpt")
    p.add_argument("--diffusion-ckpt", help="masked-diffusion checkpoint of the same size and tokenizer")
    add_shape_arguments(p, vocab_help="random weights: vocabulary (the last id is the mask)")
    p.add_argument("--prompts", type=int, default=8, help="prompts (the largest batch); batch 1 uses the first")
    p.add_argument("--prompt-tokens", type=int, default=16, help="prompt length")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens every setting generates per prompt")
    p.add_argument("--block-length", type=int, default=8, help="diffusion block; divides --new-tokens")
    p.add_argument("--steps", default="64,32", help="diffusion step counts (multiples of the block count)")
    p.add_argument("--caches", default="prefix,dual", help="cached samplers at each step count")
    p.add_argument("--thresholds", default="0.9", help="thresholds for the dual-cache sampler at each step count")
    p.add_argument("--batches", default="1,8", help="batch sizes")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "bf16-mixed"],
                   help="bf16: weights in bf16 (cuda only); bf16-mixed: fp32 weights under bf16 autocast (a CPU with "
                   "bf16 units, or cuda), with the AR decoder also timed in fp32")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 is steadiest on a shared machine")
    p.add_argument("--compile", action="store_true", help="add each setting's compiled twin (see above)")
    p.add_argument("--smoke", action="store_true", help="a tiny random model and few tokens: runs in seconds (CI)")
    args = p.parse_args()
    if bool(args.ar_ckpt) != bool(args.diffusion_ckpt):
        raise SystemExit("give both --ar-ckpt and --diffusion-ckpt, or neither (random weights)")
    if args.dtype == "bf16" and args.device != "cuda":
        raise SystemExit("--dtype bf16 is for --device cuda; on a CPU with bf16 units use --dtype bf16-mixed")
    if args.smoke:
        args.dim, args.layers, args.heads, args.kv_heads, args.ffn, args.vocab, args.context = 32, 2, 4, 2, 64, 64, 64
        args.prompts, args.prompt_tokens, args.new_tokens, args.block_length = 2, 4, 8, 4
        args.steps, args.batches, args.rounds, args.compile = "8", "1,2", 1, True
        from zoo.generation import compiled

        compiled.BACKEND = "aot_eager"  # the compiled code paths without a C++ build
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from zoo.generation import diffusion_generate, generate, low_confidence_remasking

    device = torch.device(args.device)
    models = load_models(args)
    tokenizer = models.get("tokenizer")
    if tokenizer is not None:
        prompts = validation_prompts(tokenizer, models["eos"], n=args.prompts, length=args.prompt_tokens)
    else:
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, args.vocab - 1, (args.prompts, args.prompt_tokens), generator=g).tolist()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16-mixed")
    ar, diffusion = models["ar"].to(device, dtype).eval(), models["diffusion"].to(device, dtype).eval()
    n, mask_id = args.new_tokens, models["mask_id"]
    common = {"mask_id": mask_id, "gen_length": n, "block_length": args.block_length, "shift": models["shift"],
              "stop_at_eos": False, "block_causal": models["block_causal"] is not None}  # fmt: skip

    def run(setting, batch: list[list[int]]) -> tuple[torch.Tensor, int, str]:  # new tokens (B, n), passes, cache
        if setting is not None and setting.get("fp32"):  # the AR decoder without autocast
            return run_setting({k: v for k, v in setting.items() if k != "fp32"}, batch)
        with autocast:
            return run_setting(setting, batch)

    def run_setting(setting, batch: list[list[int]]) -> tuple[torch.Tensor, int, str]:
        if setting is None or "steps" not in setting:
            out = generate(ar, batch, max_new_tokens=n, compile=bool(setting and setting.get("compile")))
            return torch.tensor(out.tokens, device=device), out.forward_passes, "KV"
        x = torch.tensor(batch, device=device)
        if setting["cache"] == "vanilla" and not common["block_causal"]:
            out = low_confidence_remasking(diffusion, x, steps=setting["steps"],
                                           **{k: v for k, v in common.items() if k != "block_causal"})  # fmt: skip
        else:  # a block-causal model's vanilla sampler is the block-causal mask without a cache
            cache = "none" if setting["cache"] == "vanilla" else setting["cache"]
            out = diffusion_generate(diffusion, x, steps=setting["steps"], threshold=setting.get("threshold"),
                                     cache=cache, compile=setting.get("compile", False), **common)  # fmt: skip
        return out.answer, out.forward_passes, out.cache

    print(provenance(args, device))
    print(f"new_tokens={n} prompt_tokens={args.prompt_tokens} block_length={args.block_length} rounds={args.rounds} "
          f"(median) shape: dim={ar.dim} layers={ar.n_layers} vocab={ar.vocab_size}"
          f"{'' if tokenizer is not None else ' random weights: quality n/a'}"
          f"{'' if models['block_causal'] is None else ' block-causal diffusion model'}")  # fmt: skip
    for batch_size in (int(b) for b in args.batches.split(",")):
        batch = prompts[:batch_size]
        plan = settings(args)
        if args.dtype == "bf16-mixed":
            plan.insert(1, ("AR, KV cache, fp32", {"fp32": True}))
        if args.compile:  # a compiled twin after each setting (LLaDA's vanilla sampler has no compiled path)
            plan = [row for name, setting in plan for row in [(name, setting)] + (
                [] if setting is not None and setting.get("cache") == "vanilla" and not common["block_causal"]
                else [(f"{name}, compiled", {**(setting or {}), "compile": True})])]
        times: dict[str, list[float]] = {name: [] for name, _ in plan}
        results, first = {}, {}
        for name, setting in plan:  # warm-up: allocations, kernel selection, compiling
            first[name], _ = timed(lambda setting=setting, batch=batch: run(setting, batch), device)
        for _ in range(args.rounds):
            for name, setting in plan:
                seconds, results[name] = timed(lambda setting=setting, batch=batch: run(setting, batch), device)
                times[name].append(seconds)
        speed = {name: batch_size * n / statistics.median(times[name]) for name, _ in plan}
        fastest_ar = max((name for name in speed if name.startswith("AR")), key=speed.get)
        prompt_ids = torch.tensor(batch, device=device)
        ar_tokens = results["AR, KV cache"][0]
        print(f"\nbatch={batch_size} (vs AR: against {fastest_ar})")
        print("| setting | cache | tokens/s | vs AR | vs vanilla | vs eager | = eager | first call | passes/token | "
              "judge NLL | = AR | = vanilla |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, setting in plan:
            tokens, passes, cache = results[name]
            vanilla = f"vanilla, {setting['steps']} steps" if setting is not None and "steps" in setting else None
            if tokenizer is not None:
                judge = f"{judge_nll(ar.float(), prompt_ids, tokens):.3f}"
                same_ar = f"{(tokens == ar_tokens).float().mean().item():.3f}"
            else:
                judge = same_ar = "n/a"
            same_vanilla = f"{(tokens == results[vanilla][0]).float().mean().item():.3f}" if vanilla else "-"
            ratio = f"{speed[name] / speed[vanilla]:.2f}x" if vanilla else "-"
            twin = name.removesuffix(", compiled") if name.endswith(", compiled") else None
            eager = f"{speed[name] / speed[twin]:.2f}x" if twin else "-"
            same_eager = f"{(tokens == results[twin][0]).float().mean().item():.3f}" if twin else "-"
            print(f"| {name} | {cache} | {speed[name]:.1f} | {speed[name] / speed[fastest_ar]:.2f}x | {ratio} | "
                  f"{eager} | {same_eager} | {first[name]:.1f} s | {passes / n:.2f} | {judge} | {same_ar} | "
                  f"{same_vanilla} |")  # fmt: skip


if __name__ == "__main__":
    main()
