"""Generation speed: masked-diffusion sampling against autoregressive decoding with a KV cache.

Same model size, batch 1, the same number of new tokens (100 by default; EOS ignored, so every setting writes them
all), the same machine, one process: after a warm-up, each round runs the AR baseline and then every diffusion
setting once (alternating, so drifts in clock speed or load hit all settings alike); the median over ``--rounds``
is reported. Each row shows tokens/s, the ratio to AR, the forward passes, and quality next to speed:

* ``val loss``: the model's loss on the validation split of the stdlib corpus (``zoo.data.StdlibCorpus``, the
  quickstart's data) with the checkpoint's tokenizer — the AR model's next-token NLL, the diffusion model's negative
  ELBO per token (its ``val/loss``, an upper bound on the NLL, evaluated fully bidirectional as it is sampled).
* ``judge NLL``: the generated tokens' NLL per token under the AR model ("generative perplexity", MDLM): how
  plausible what each setting wrote is, so a fast setting that writes noise shows it.

::

    python benchmarks/generation_speed.py                                  # random weights, quickstart shape
    python benchmarks/generation_speed.py --ar-ckpt runs/quickstart/.../last.ckpt \\
        --diffusion-ckpt runs/diffusion-quickstart/.../last.ckpt
    python benchmarks/generation_speed.py --device cuda --dtype bf16 --dim 384 --layers 32 --heads 8 \\
        --kv-heads 4 --ffn 1024 --vocab 50304 --context 1024                 # a Dhara-70M-like shape

With random weights quality is "n/a (random weights)": only the speed is meaningful then.
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


def random_pair(args):
    """An AR and a diffusion backbone of one shape with random weights (the diffusion one bidirectional)."""
    return {"ar": random_backbone(args), "diffusion": random_backbone(args, causal=False), "mask_id": args.vocab - 1,
            "shift": False}  # fmt: skip


def load_pair(args):
    from zoo.data.tokenizer import tokenizer_from_checkpoint
    from zoo.objectives import LanguageModel

    ar = LanguageModel.from_checkpoint(args.ar_ckpt, map_location="cpu")
    diffusion = LanguageModel.from_checkpoint(args.diffusion_ckpt, map_location="cpu")
    tokenizer, eos = tokenizer_from_checkpoint(args.ar_ckpt)
    return {"ar": ar.backbone, "diffusion": diffusion.backbone, "mask_id": diffusion.mask_id,
            "shift": getattr(diffusion, "shift", False), "tokenizer": tokenizer, "eos": eos,
            "models": (ar, diffusion)}  # fmt: skip


@torch.no_grad()
def val_loss(model, tokenizer, eos: str, args, device) -> float:
    """Token-weighted mean of the objective's own loss over ``--val-batches`` validation batches."""
    from zoo.data import PretrainedTokenizer, StdlibCorpus

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        tokenizer.save(str(path))
        data = StdlibCorpus(tokenizer=PretrainedTokenizer(path=str(path), eos_token=eos),
                            seq_len=min(args.val_seq_len, model.backbone.max_seq_len), batch_size=8)  # fmt: skip
        total = count = 0.0
        for i, batch in enumerate(data.val_dataloader()):
            if i == args.val_batches:
                break
            batch = {key: batch[key].to(device) for key in ("input_ids", "labels")}
            if hasattr(model, "mask_id"):  # diffusion: seeded noise, as its validation_step
                generator = torch.Generator(device=device).manual_seed(getattr(model, "val_seed", 0) + i)
                loss, n = model.loss(batch, generator=generator)
            else:
                loss, n = model.loss(batch)
            total, count = total + loss.item() * n.item(), count + n.item()
    return total / count


@torch.no_grad()
def judge_nll(ar, prompt: list[int], new: list[int], device) -> float:
    ids = torch.tensor([prompt + new], device=device)
    logits = ar(ids)[0, len(prompt) - 1 : -1].float()
    return torch.nn.functional.cross_entropy(logits, ids[0, len(prompt) :]).item()


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ar-ckpt", help="AR checkpoint (python -m zoo fit); with --diffusion-ckpt")
    p.add_argument("--diffusion-ckpt", help="masked-diffusion checkpoint of the same size and tokenizer")
    add_shape_arguments(p, vocab_help="random weights: vocabulary (the last id is the mask)")
    p.add_argument("--prompt-tokens", type=int, default=16, help="random weights: prompt length")
    p.add_argument("--prompt", default="def read_config(path):\n    ", help="checkpoints: prompt text")
    p.add_argument("--new-tokens", type=int, default=100, help="tokens every setting generates")
    p.add_argument("--block-length", type=int, default=20, help="diffusion block; divides --new-tokens")
    p.add_argument("--steps", default="100,50,20,10", help="diffusion step counts (multiples of the block count)")
    p.add_argument("--thresholds", default="0.9,0.7,0.5", help="confidence thresholds")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported")
    p.add_argument("--val-batches", type=int, default=10, help="checkpoints: validation batches of 8 rows")
    p.add_argument("--val-seq-len", type=int, default=256, help="checkpoints: validation row length")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: cuda only")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 is steadiest on a shared machine")
    p.add_argument("--show", action="store_true", help="checkpoints: print the start of each setting's text")
    args = p.parse_args()
    if bool(args.ar_ckpt) != bool(args.diffusion_ckpt):
        raise SystemExit("give both --ar-ckpt and --diffusion-ckpt, or neither (random weights)")
    if args.dtype == "bf16" and args.device != "cuda":
        raise SystemExit("--dtype bf16 is for --device cuda; on CPU measure fp32")

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from zoo.generation import confidence_threshold, generate, low_confidence_remasking

    device = torch.device(args.device)
    pair = load_pair(args) if args.ar_ckpt else random_pair(args)
    ar, diffusion, mask_id, shift = pair["ar"], pair["diffusion"], pair["mask_id"], pair["shift"]
    tokenizer = pair.get("tokenizer")
    quality: dict[str, str] = {}
    if tokenizer is not None:  # fp32 quality first, then the timed models in the chosen dtype
        ar_model, diffusion_model = (m.to(device).eval() for m in pair["models"])
        diffusion_model.conversion = None  # evaluated fully bidirectional, as it is sampled
        quality["ar"] = f"{val_loss(ar_model, tokenizer, pair['eos'], args, device):.3f}"
        quality["diffusion"] = f"{val_loss(diffusion_model, tokenizer, pair['eos'], args, device):.3f}"
        prompt = tokenizer.encode(args.prompt, add_special_tokens=False).ids
    else:
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, args.vocab - 1, (args.prompt_tokens,), generator=g).tolist()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    ar, diffusion = ar.to(device, dtype).eval(), diffusion.to(device, dtype).eval()
    n = args.new_tokens
    settings = [("AR, KV cache", None)]
    settings += [(f"diffusion, {s} steps", ("steps", int(s))) for s in args.steps.split(",") if s]
    settings += [(f"diffusion, threshold {t}", ("threshold", float(t))) for t in args.thresholds.split(",") if t]

    def run(setting):
        if setting is None:
            out = generate(ar, [prompt], max_new_tokens=n)
            return out.tokens[0], out.forward_passes
        common = {"mask_id": mask_id, "gen_length": n, "block_length": args.block_length, "shift": shift,
                  "stop_at_eos": False}  # fmt: skip
        x = torch.tensor([prompt], device=device)
        if setting[0] == "steps":
            out = low_confidence_remasking(diffusion, x, steps=setting[1], **common)
        else:
            out = confidence_threshold(diffusion, x, threshold=setting[1], **common)
        return out.answer[0].tolist(), out.forward_passes

    times: dict[str, list[float]] = {name: [] for name, _ in settings}
    results = {}
    for _, setting in settings:  # warm-up: allocations, kernel selection
        run(setting)
    for _ in range(args.rounds):
        for name, setting in settings:
            seconds, results[name] = timed(lambda setting=setting: run(setting), device)
            times[name].append(seconds)
    ar_speed = n / statistics.median(times["AR, KV cache"])
    print(provenance(args, device))
    print(f"batch=1 new_tokens={n} prompt_tokens={len(prompt)} block_length={args.block_length} rounds={args.rounds} "
          f"(median) shape: dim={ar.dim} layers={ar.n_layers} vocab={ar.vocab_size}")  # fmt: skip
    if tokenizer is None:
        print("quality: n/a (random weights)")
    print(f"| {'setting':<26} | {'tokens/s':>9} | {'vs AR':>6} | {'passes':>6} | {'val loss':>8} | {'judge NLL':>9} |")
    print(f"|{'-' * 28}|{'-' * 10}:|{'-' * 7}:|{'-' * 7}:|{'-' * 9}:|{'-' * 10}:|")
    for name, setting in settings:
        speed = n / statistics.median(times[name])
        tokens, passes = results[name]
        loss = quality.get("ar" if setting is None else "diffusion", "n/a")
        judge = f"{judge_nll(ar.float(), prompt, tokens, device):.3f}" if tokenizer is not None else "n/a"
        print(f"| {name:<26} | {speed:>9.1f} | {speed / ar_speed:>5.2f}x | {passes:>6} | {loss:>8} | {judge:>9} |")
    if args.show and tokenizer is not None:
        for name, _ in settings:
            print(f"{name}: {tokenizer.decode(results[name][0])[:80]!r}")


if __name__ == "__main__":
    main()
