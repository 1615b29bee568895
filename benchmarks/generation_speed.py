"""Generation speed: masked-diffusion sampling against autoregressive decoding with a KV cache.

Same model size, batch 1, the same number of new tokens (100 by default), the same machine, one run: each
setting is timed over ``--rounds`` rounds, alternating with the AR baseline, and the script prints tokens/s, the
ratio to AR, the forward passes, and a quality measure next to each: the generative NLL (nats/token) of the new
tokens under the AR model used as judge (MDLM's "generative perplexity"), so speed is never read without quality.

    python benchmarks/generation_speed.py                                   # random weights, quickstart shape
    python benchmarks/generation_speed.py --ar-ckpt runs/quickstart/.../last.ckpt \\
        --diffusion-ckpt runs/diffusion-quickstart/.../last.ckpt
    python benchmarks/generation_speed.py --device cuda --dim 384 --layers 32 --heads 8 --kv-heads 4 --ffn 1024 \\
        --vocab 50304                                                     # the Dhara-70M shape, random weights

With random weights the quality column is "n/a": only the speed is meaningful then.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def random_pair(args):
    from zoo.nn import GroupedQueryAttention, PreNormBlock, RMSNorm, Rotary, SwiGLU, Transformer

    def build(causal: bool) -> Transformer:
        return Transformer(
            vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, max_seq_len=args.context, norm=RMSNorm,
            position=Rotary,
            block=lambda d: PreNormBlock(
                d, attention=lambda d: GroupedQueryAttention(d, n_heads=args.heads, n_kv_heads=args.kv_heads,
                                                             causal=causal),
                ffn=lambda d: SwiGLU(d, hidden_dim=args.ffn), norm=RMSNorm,
            ),
        )  # fmt: skip

    return build(True), build(False), args.vocab - 1, False, None


def load_pair(args):
    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.objectives import LanguageModel

    ar = LanguageModel.from_checkpoint(args.ar_ckpt, map_location="cpu")
    diffusion = LanguageModel.from_checkpoint(args.diffusion_ckpt, map_location="cpu")
    tokenizer, _ = tokenizer_from_checkpoint(args.ar_ckpt)
    return ar.backbone, diffusion.backbone, diffusion.mask_id, diffusion.shift, tokenizer


def timed(fn, device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


@torch.no_grad()
def judge_nll(ar, prompt: list[int], new: list[int], device) -> float:
    ids = torch.tensor([prompt + new], device=device)
    logits = ar(ids)[0, len(prompt) - 1 : -1].float()
    return torch.nn.functional.cross_entropy(logits, ids[0, len(prompt) :]).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ar-ckpt")
    p.add_argument("--diffusion-ckpt")
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=512)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--block-length", type=int, default=25)
    p.add_argument("--steps", default="100,50,20", help="diffusion steps to try (multiples of the block count)")
    p.add_argument("--thresholds", default="0.9,0.7", help="confidence thresholds to try")
    p.add_argument("--prompt", default="def read_config(path):\n    ")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args()
    if bool(args.ar_ckpt) != bool(args.diffusion_ckpt):
        raise SystemExit("give both --ar-ckpt and --diffusion-ckpt, or neither (random weights)")

    from zoo.generation import confidence_threshold, generate, low_confidence_remasking

    device = torch.device(args.device)
    ar, diffusion, mask_id, shift, tokenizer = load_pair(args) if args.ar_ckpt else random_pair(args)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    ar, diffusion = ar.to(device, dtype).eval(), diffusion.to(device, dtype).eval()
    if tokenizer is not None:
        prompt = tokenizer.encode(args.prompt, add_special_tokens=False).ids
    else:
        prompt = torch.randint(0, args.vocab - 1, (16,), generator=torch.Generator().manual_seed(0)).tolist()
    n = args.new_tokens
    settings = [("AR, KV cache", None)]
    settings += [(f"diffusion, {s} steps", ("steps", int(s))) for s in args.steps.split(",") if s]
    settings += [(f"diffusion, threshold {t}", ("threshold", float(t))) for t in args.thresholds.split(",") if t]

    def run(setting):
        if setting is None:
            out = generate(ar, prompt, max_new_tokens=n)
            return out.tokens, out.forward_passes
        common = {"mask_id": mask_id, "vocab_size": diffusion.vocab_size, "gen_length": n,
                  "block_length": args.block_length, "shift": shift, "stop_at_eos": False}  # fmt: skip
        x = torch.tensor([prompt], device=device)
        if setting[0] == "steps":
            out = low_confidence_remasking(diffusion, x, steps=setting[1], **common)
        else:
            out = confidence_threshold(diffusion, x, threshold=setting[1], **common)
        return out.tokens[0, len(prompt) :].tolist(), out.forward_passes

    times: dict[str, list[float]] = {name: [] for name, _ in settings}
    results = {}
    for _name, setting in settings:  # warm-up (allocations, kernel selection)
        run(setting)
    for _ in range(args.rounds):
        for name, setting in settings:
            seconds, results[name] = timed(lambda setting=setting: run(setting), device)
            times[name].append(seconds)
    ar_speed = n / statistics.median(times["AR, KV cache"])
    print(f"device={device} dtype={args.dtype} torch={torch.__version__} batch=1 new_tokens={n} "
          f"block_length={args.block_length} rounds={args.rounds} prompt_tokens={len(prompt)}")  # fmt: skip
    print(f"{'setting':<28} {'tokens/s':>10} {'vs AR':>7} {'passes':>7} {'judge NLL':>10}")
    for name, _ in settings:
        speed = n / statistics.median(times[name])
        tokens, passes = results[name]
        quality = f"{judge_nll(ar, prompt, tokens, device):.3f}" if tokenizer is not None else "n/a"
        print(f"{name:<28} {speed:>10.1f} {speed / ar_speed:>6.2f}x {passes:>7} {quality:>10}")


if __name__ == "__main__":
    main()
