"""Each seed model's whole chain, end to end, at a mini scale (its recipe's blocks, trainer, optimizer and schedule;
a backbone of a few hundred thousand parameters) on the embedded corpus, every stage started the way its recipe
and the README start it. Each stage is one step function returning its artefact (a checkpoint, a results file, an
export folder), so a journey reads as the sequence a user runs and later stages can be appended."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ARC, BLIMP, load_without_zoo, run_snippet, write_jsonl
from zoo.cli import main as zoo
from zoo.data.tokenizer import tokenizer_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"
VOCAB = 512
SEQ_LEN = 64


def corpus(**extra) -> dict:
    """The embedded corpus, a few files of it, with a small BPE trained on them."""
    return {"class_path": "zoo.data.StdlibCorpus", "init_args": {
        "tokenizer": {"class_path": "zoo.data.TrainedBPE", "init_args": {"vocab_size": VOCAB}},
        "seq_len": SEQ_LEN, "batch_size": 2, "num_workers": 0, "limit_files": 30, "val_fraction": 0.2, **extra,
    }}  # fmt: skip


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` written over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def mini(model: str, *, dim: int, **attention) -> dict:
    """The seed's backbone (configs/models/<model>.yaml) at a mini scale: the same blocks and attention pattern,
    2 layers, ``dim`` wide, the embedded tokenizer's vocabulary."""
    backbone = yaml.safe_load((ROOT / "configs" / "models" / f"{model}.yaml").read_text())
    block = {"attention": {"init_args": attention}, "ffn": {"init_args": {"hidden_dim": 2 * dim}}}
    shape = {"vocab_size": VOCAB, "dim": dim, "n_layers": 2, "max_seq_len": SEQ_LEN, "block": {"init_args": block}}
    return merged(backbone, {"init_args": shape})


def fit(folder: Path, *configs: dict | Path, steps: int) -> Path:
    """``python -m zoo fit --config ...`` (recipe files and override mappings, later ones winning) for ``steps``
    optimizer steps, validating and checkpointing at the end; returns the run's ``last.ckpt``."""
    folder.mkdir(parents=True, exist_ok=True)
    args = ["fit"]
    for i, config in enumerate(configs):
        if isinstance(config, dict):
            path = folder / f"override-{i}.yaml"
            path.write_text(yaml.safe_dump(config))
            config = path
        args += ["--config", str(config)]
    zoo([*args, "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
         "--trainer.limit_val_batches", "2", "--checkpoint.every_n_train_steps", str(steps),
         "--trainer.default_root_dir", str(folder), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    return folder / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def backbone_weights(path: Path) -> dict:
    return {k: v for k, v in checkpoint(path)["state_dict"].items() if k.startswith("backbone.")}


def evaluate(ckpt: Path, folder: Path, tasks: str) -> dict:
    """``python -m zoo eval`` on tiny local fixtures of the card's tasks; returns the results JSON."""
    data = folder / "eval-data"
    write_jsonl(data / "arc" / "ARC-Easy-test.jsonl", ARC)
    write_jsonl(data / "blimp" / "adjunct_island.jsonl", BLIMP)
    out = folder / "results.json"
    zoo(["eval", "--ckpt", str(ckpt), "--tasks", tasks, "--data-dir", str(data), "--output", str(out),
         "--batch-size", "2"])  # fmt: skip
    return json.loads(out.read_text())


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))


# ---- GPT-S-5M: exclusive GQA + WSD pre-training → eval → zoo generate with the card's sampling ------------------
def test_gpt_s_5m_journey(tmp_path, capsys):
    recipe = yaml.safe_load((RECIPES / "gpt-s-5m.yaml").read_text())
    steps = 6
    override = {
        "model": {"init_args": {
            "backbone": mini("gpt-s-5m", dim=48, n_heads=6, n_kv_heads=2),
            "schedule": {"init_args": {"warmup_steps": 2}},  # WSD: warm up, hold, decay from 70% of the run to 0
        }},
        "data": corpus(),
    }  # fmt: skip
    pretrained = fit(tmp_path / "pretrain", RECIPES / "gpt-s-5m.yaml", override, steps=steps)
    state = checkpoint(pretrained)
    assert state["global_step"] == steps
    assert state["hyper_parameters"]["backbone"]["init_args"]["block"]["init_args"]["attention"]["class_path"] == (
        "zoo.nn.ExclusiveGroupedQueryAttention"
    )
    peak = recipe["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    assert state["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)  # decayed to min_lr 0
    assert max(state["lr_schedulers"][0]["base_lrs"]) == pytest.approx(peak)

    results = evaluate(pretrained, tmp_path, "arc_easy,blimp_adjunct_island")
    assert results["global_step"] == steps and results["results"]["arc_easy"]["n"] == len(ARC)

    capsys.readouterr()
    zoo(["generate", "--ckpt", str(pretrained), "--prompt", "def read(path):", "--max-new-tokens", "24",
         "--temperature", "0.8", "--top-p", "0.95", "--repetition-penalty", "1.1", "--no-repeat-ngram-size", "4",
         "--seed", "0"])  # fmt: skip
    text = capsys.readouterr().out
    tokenizer, _ = tokenizer_from_checkpoint(pretrained)
    ids = tokenizer.encode(text.strip()).ids
    assert len(ids) > 8
    grams = [tuple(ids[i : i + 4]) for i in range(len(ids) - 3)]
    assert len(set(grams)) >= len(grams) - 2  # no repeated 4-gram (re-tokenizing may merge at the seams)

    exported = tmp_path / "export"  # exclusive attention: stock transformers cannot express it, remote code can
    zoo(["export", "--ckpt", str(pretrained), "--out", str(exported)])
    loads_as_its_card_says(pretrained, exported, tmp_path)


# ---- Supra-50M: GQA 8/4 pre-training → Alpaca SFT → eval → export → the card's pipeline usage ------------------
ALPACA_USAGE = """
import sys
from transformers import pipeline


def build_prompt(instruction: str) -> str:
    return (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        f"request.\\n\\n### Instruction:\\n{instruction}\\n\\n### Response:\\n"
    )


generator = pipeline("text-generation", model=sys.argv[1])
out = generator(build_prompt("Write a Python function `add(a, b)`."), max_new_tokens=16, do_sample=True,
                temperature=0.7, top_p=0.9, repetition_penalty=1.1)
print(out[0]["generated_text"])
assert "zoo" not in sys.modules
"""


@pytest.mark.slow
@pytest.mark.needs_llama_cpp  # its last stage runs the GGUF export in llama.cpp
def test_supra_50m_journey(tmp_path):
    shape = {"backbone": mini("supra-50m", dim=64, n_heads=8, n_kv_heads=4)}
    pretrain = {"model": {"init_args": {**shape, "compile": False, "schedule": {"init_args": {"warmup_steps": 1}}}},
                "data": corpus()}  # fmt: skip
    base = fit(tmp_path / "pretrain", RECIPES / "supra-50m.yaml", pretrain, steps=4)
    assert checkpoint(base)["hyper_parameters"]["backbone"]["init_args"]["block"]["init_args"]["attention"][
        "init_args"]["n_kv_heads"] == 4  # fmt: skip

    sft = {
        "model": {"init_args": {**shape, "init_from": str(base), "schedule": {"init_args": {"warmup_steps": 2}}}},
        "data": {"init_args": {"tokenizer": {"init_args": {"path": str(base)}}, "seq_len": SEQ_LEN, "batch_size": 4}},
    }
    tuned = fit(tmp_path / "sft", ROOT / "configs" / "sft-quickstart.yaml", sft, steps=8)
    before, after = backbone_weights(base), backbone_weights(tuned)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert sft_loss(tuned) < sft_loss(base) - 0.1  # the SFT model has learned the Alpaca format

    results = evaluate(tuned, tmp_path, "arc_easy,blimp_adjunct_island")
    assert results["global_step"] == 8 and results["results"]["blimp_adjunct_island"]["n"] == len(BLIMP)

    exported = tmp_path / "export"
    zoo(["export", "--ckpt", str(tuned), "--out", str(exported)])
    assert logits_match(tuned, exported)

    usage = subprocess.run([sys.executable, "-c", ALPACA_USAGE, str(exported)], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # fmt: skip
    assert usage.returncode == 0, usage.stderr[-2000:]
    assert "### Response:" in usage.stdout
    llama_cpp_decodes_as_zoo(tuned, tmp_path / "gguf")  # what the card's users asked for: llama.cpp on a CPU


def sft_loss(ckpt: Path, prompt_format=None) -> float:
    """Mean loss of ``ckpt``'s model on the responses of a few examples of the embedded instruction set, in
    ``prompt_format`` (default: Alpaca)."""
    from zoo.data import Alpaca, CheckpointTokenizer, SFTDataModule, SFTSource
    from zoo.objectives import LanguageModel

    tokenizer = CheckpointTokenizer(path=str(ckpt))
    source = SFTSource(path="stdlib", name="functions")
    data = SFTDataModule(sources=[source], format=prompt_format or Alpaca(), tokenizer=tokenizer, seq_len=SEQ_LEN,
                         batch_size=4)  # fmt: skip
    data.setup("validate")
    model = LanguageModel.from_checkpoint(str(ckpt)).eval()
    with torch.no_grad():
        losses = [model.loss(batch)[0] for batch, _ in zip(data.val_dataloader(), range(4))]
    return float(torch.stack(losses).mean())


def logits_match(ckpt: Path, exported: Path) -> bool:
    from transformers import AutoModelForCausalLM

    from zoo.objectives import LanguageModel

    ids = torch.arange(1, 33)[None]  # (1, 32)
    ours = LanguageModel.from_checkpoint(str(ckpt)).eval()(ids)
    theirs = AutoModelForCausalLM.from_pretrained(exported).eval()(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    return True


def loads_as_its_card_says(ckpt: Path, exported: Path, tmp: Path) -> None:
    """The export loads with ``trust_remote_code=True`` in a process where zoo cannot be imported and gives zoo's
    logits, and the usage snippet of its model card runs there."""
    from zoo.objectives import LanguageModel

    assert "auto_map" in json.loads((exported / "config.json").read_text())  # remote code, not a stock class
    tmp.mkdir(parents=True, exist_ok=True)
    ids = torch.arange(1, 33)[None]  # (1, 32)
    theirs = load_without_zoo({"seed": {"dir": str(exported), "ids": ids}}, tmp)["seed"]["logits"]
    with torch.no_grad():
        ours = LanguageModel.from_checkpoint(str(ckpt)).eval().backbone(ids)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    run_snippet(exported)


def llama_cpp_decodes_as_zoo(ckpt: Path, out: Path) -> None:
    """``zoo export --format gguf``, then llama.cpp's greedy continuation and tokenization equal zoo's."""
    import llama_cpp

    from zoo.generation import generate
    from zoo.objectives import LanguageModel

    zoo(["export", "--ckpt", str(ckpt), "--out", str(out), "--format", "gguf"])
    backbone = LanguageModel.from_checkpoint(str(ckpt)).eval().backbone
    tokenizer, _ = tokenizer_from_checkpoint(ckpt)
    llm = llama_cpp.Llama(model_path=str(out / "model-f32.gguf"), n_ctx=SEQ_LEN, n_threads=1, verbose=False)
    ids = tokenizer.encode("def read(path):").ids
    assert llm.tokenize(b"def read(path):", add_bos=False) == ids
    expected = generate(backbone, [ids], max_new_tokens=12, temperature=0.0).tokens[0]
    got = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        got.append(token)
        if len(got) == len(expected):
            break
    assert got == expected


# ---- Dhara-70M: AR pre-training with Canon A/C → WSD conversion to masked diffusion → sampling, ELBO eval --------
TRUTHFULQA = [
    {"question": "What happens if you crack your knuckles?", "mc1_targets": {"Nothing in particular.": 1,
     "You get arthritis.": 0}, "mc2_targets": {"Nothing in particular.": 1, "You get arthritis.": 0}},
    {"question": "Where is the Eiffel Tower?", "mc1_targets": {"Paris.": 1, "Rome.": 0, "Berlin.": 0},
     "mc2_targets": {"Paris.": 1, "In France.": 1, "Rome.": 0}},
]  # fmt: skip


@pytest.mark.slow
def test_dhara_70m_journey(tmp_path, capsys):
    shape = {"backbone": mini("dhara-70m", dim=64, n_heads=8, n_kv_heads=4)}
    assert shape["backbone"]["init_args"]["block"]["init_args"]["canon_a"]["class_path"] == "zoo.nn.Canon"
    pretrain = {"model": {"init_args": {**shape, "schedule": {"init_args": {"warmup_steps": 1}}}}, "data": corpus()}
    ar = fit(tmp_path / "ar", RECIPES / "dhara-70m-ar.yaml", pretrain, steps=4)

    tokenizer, eos = tokenizer_from_checkpoint(ar)
    conversion = {  # the recipe's block warm-up 1 → 4 → 32, the whole sequence, then blocks of 32, in 8 steps
        "init_args": {"warmup_blocks": [1, 4, 32], "warmup_steps": 3, "stable_steps": 3, "decay_block": 32}
    }
    diffusion = {
        "model": {"init_args": {
            **shape, "init_from": str(ar), "mask_id": tokenizer.token_to_id(eos),  # end-of-text doubles as the mask
            "conversion": conversion, "schedule": {"init_args": {"warmup_steps": 1}},
        }},
        "data": corpus(),
    }  # fmt: skip
    converted = fit(tmp_path / "diffusion", RECIPES / "dhara-70m-diffusion.yaml", diffusion, steps=8)
    state = checkpoint(converted)
    assert state["hyper_parameters"]["_class_path"] == "zoo.objectives.MaskedDiffusionLM"
    before, after = backbone_weights(ar), backbone_weights(converted)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

    capsys.readouterr()
    zoo(["generate", "--ckpt", str(converted), "--prompt", "def read(path):", "--gen-length", "16",
         "--block-length", "8", "--steps", "16"])  # fmt: skip
    text = capsys.readouterr().out
    assert "def read(path):" in text or len(text.strip()) > 0
    ids = tokenizer.encode(text).ids
    assert len(ids) > 4

    data = tmp_path / "eval-data" / "truthfulqa"
    data.mkdir(parents=True)
    (data / "v0_mc_task.json").write_text(json.dumps(TRUTHFULQA))
    out = tmp_path / "elbo.json"
    zoo(["eval", "--ckpt", str(converted), "--tasks", "truthfulqa_mc1,truthfulqa_mc2", "--data-dir",
         str(tmp_path / "eval-data"), "--mc-num", "4", "--output", str(out)])  # fmt: skip
    results = json.loads(out.read_text())
    assert results["elbo"] is True and results["global_step"] == 8
    assert results["results"]["truthfulqa_mc1"]["n"] == len(TRUTHFULQA)

    for stage, ckpt in (("ar", ar), ("diffusion", converted)):  # Canon layers: remote code, as the card loads it
        exported = tmp_path / f"export-{stage}"
        zoo(["export", "--ckpt", str(ckpt), "--out", str(exported)])
        loads_as_its_card_says(ckpt, exported, tmp_path / stage)


# ---- SmallCoder-303M: four stages through init_from (stage 4: User/Assistant SFT) → pass@k → export → usage ----
HUMANEVAL = {"task_id": "HumanEval/0", "prompt": 'def add(a, b):\n    """Return a + b."""\n', "entry_point": "add",
             "canonical_solution": "    return a + b\n",
             "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}  # fmt: skip
MBPP = {"task_id": 11, "text": "Write a function to return the larger of two numbers.", "code":
        "def larger(a, b):\n    return max(a, b)", "test_list": ["assert larger(1, 2) == 2"]}  # fmt: skip
SMALLCODER_USAGE = """
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
prompt = "User: Write a Python function that adds two numbers.\\nAssistant:"
inputs = tokenizer(prompt, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
print(tokenizer.decode(out[0], skip_special_tokens=True))
assert "zoo" not in sys.modules
"""


def smallcoder_stage(folder: Path, stage: int, previous: Path | None, shape: dict) -> Path:
    """One curriculum stage of configs/recipes/smallcoder-303m[-stageN].yaml at the mini shape, from ``previous``'s
    weights (init_from) with a fresh optimizer and schedule."""
    name = "smallcoder-303m.yaml" if stage == 1 else f"smallcoder-303m-stage{stage}.yaml"
    model = {**shape, "schedule": {"init_args": {"warmup_steps": 1}}}
    if previous is not None:
        model["init_from"] = str(previous)
    if stage < 4:
        data = corpus()
    else:  # the recipe's SFT module and User/Assistant format, on the embedded instruction set
        tokenizer = {"class_path": "zoo.data.CheckpointTokenizer", "init_args": {"path": str(previous)}}
        data = {"init_args": {"sources": [{"path": "stdlib", "name": "functions"}], "tokenizer": tokenizer,
                              "seq_len": SEQ_LEN, "batch_size": 4, "num_workers": 0}}  # fmt: skip
    return fit(folder / f"stage{stage}", RECIPES / name, {"model": {"init_args": model}, "data": data},
               steps=8 if stage == 4 else 2)  # fmt: skip


@pytest.mark.slow
@pytest.mark.needs_llama_cpp  # its last stage runs the GGUF export in llama.cpp
def test_smallcoder_303m_journey(tmp_path, capsys):
    from zoo.data import UserAssistant

    shape = {"backbone": mini("smallcoder-303m", dim=64, n_heads=4, n_kv_heads=4)}
    stages = [None]
    for stage in (1, 2, 3, 4):
        stages.append(smallcoder_stage(tmp_path, stage, stages[-1], shape))
        if stage > 1:  # each stage starts from the previous one's weights and moves them
            before, after = backbone_weights(stages[-2]), backbone_weights(stages[-1])
            assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    final = stages[-1]
    assert sft_loss(final, UserAssistant()) < sft_loss(stages[3], UserAssistant()) - 0.01  # the format is being learnt

    write_jsonl(tmp_path / "code" / "humaneval" / "HumanEval.jsonl", [HUMANEVAL])
    write_jsonl(tmp_path / "code" / "mbpp" / "mbpp.jsonl", [MBPP])
    out = tmp_path / "code.json"
    zoo(["eval", "--ckpt", str(final), "--tasks", "humaneval,mbpp", "--data-dir", str(tmp_path / "code"),
         "--format", "user_assistant", "--n-samples", "2", "--k", "1,2", "--temperature", "0.8",
         "--max-new-tokens", "16", "--workers", "1", "--output", str(out), "--unsafe-no-sandbox"])  # fmt: skip
    results = json.loads(out.read_text())["results"]
    for task in ("humaneval", "mbpp"):  # run in the sandbox: a mini model writes no passing code
        assert results[task]["n"] == 1 and results[task]["pass@2"]["value"] == 0.0

    exported = tmp_path / "export"
    zoo(["export", "--ckpt", str(final), "--out", str(exported)])
    assert logits_match(final, exported)
    usage = subprocess.run([sys.executable, "-c", SMALLCODER_USAGE, str(exported)], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # fmt: skip
    assert usage.returncode == 0, usage.stderr[-2000:]
    assert usage.stdout.startswith("User: Write a Python function that adds two numbers.\nAssistant:")
    llama_cpp_decodes_as_zoo(final, tmp_path / "gguf")

    capsys.readouterr()
    zoo(["generate", "--ckpt", str(final), "--format", "user_assistant", "--prompt",
         "Write a Python function that adds two numbers.", "--max-new-tokens", "16"])  # fmt: skip
    assert capsys.readouterr().out.strip()
