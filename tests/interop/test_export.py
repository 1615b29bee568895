"""``python -m zoo export`` end to end: a fitted checkpoint to GGUF (run by llama.cpp) and to transformers, the
model card of every export (front matter, tables, a usage snippet run in a process without zoo), bad input."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import llama_logits, run_snippet, tiny_fit
from zoo.commands.export import main
from zoo.data.tokenizer import tokenizer_from_checkpoint
from zoo.generation import generate
from zoo.interop.gguf import tensor_types
from zoo.objectives import LanguageModel

try:
    import llama_cpp
except ImportError:  # the gguf extra: pip install -e ".[gguf]"; tests marked needs_llama_cpp skip without it
    llama_cpp = None

SCORES = {"results": {"arc_easy": {"n": 40, "acc": {"value": 0.3, "stderr": 0.07},
                                   "acc_norm": {"value": 0.325, "stderr": 0.074}}},
          "elbo": False, "checkpoint": "last.ckpt", "global_step": 2, "limit": 40, "mc_num": None}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Llama-style model fitted for 2 steps (the run folder keeps its config.yaml beside checkpoints/)."""
    root = tmp_path_factory.mktemp("fit")
    return tiny_fit(root, tmp_path_factory.mktemp("tok"))


def _export(checkpoint, out, *args):
    main(["--ckpt", str(checkpoint), "--out", str(out), *args])
    return out


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def untied_mha_checkpoint(tmp_path_factory):
    """SmallCoder's shape in miniature: multi-head attention (4 key/value heads) and an untied head."""
    return tiny_fit(tmp_path_factory.mktemp("fit-mha"), tmp_path_factory.mktemp("tok"),
                    "--model.backbone.tie_embeddings", "false",
                    "--model.backbone.block.init_args.attention.init_args.n_kv_heads", "4")  # fmt: skip


@pytest.mark.needs_llama_cpp
@pytest.mark.parametrize("style", ["checkpoint", "untied_mha_checkpoint"])  # Supra-50M- and SmallCoder-like
def test_fit_then_gguf_export_generates_zoos_greedy_tokens_in_llama_cpp(style, request, tmp_path):
    checkpoint = request.getfixturevalue(style)
    out = _export(checkpoint, tmp_path / "gguf", "--format", "gguf")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model-f32.gguf"]
    assert ("output.weight" in tensor_types(out / "model-f32.gguf")) == (style == "untied_mha_checkpoint")
    backbone = LanguageModel.from_checkpoint(str(checkpoint), map_location="cpu").backbone.eval()
    tokenizer, _ = tokenizer_from_checkpoint(str(checkpoint))
    llm = llama_cpp.Llama(model_path=str(out / "model-f32.gguf"), n_ctx=64, n_threads=1, verbose=False)
    for prompt in ("def parse(", "The module", "    return x"):
        ids = tokenizer.encode(prompt).ids
        assert llm.tokenize(prompt.encode(), add_bos=False) == ids
        expected = generate(backbone, [ids], max_new_tokens=12, temperature=0.0).tokens[0]
        got = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            got.append(token)
            if len(got) == len(expected):
                break
        assert got == expected, prompt


@pytest.mark.needs_llama_cpp
def test_the_gguf_cards_usage_snippet_runs_without_zoo(checkpoint, tmp_path):
    out = _export(checkpoint, tmp_path / "gguf", "--format", "gguf", "--outtype", "q8_0")
    card = (out / "README.md").read_text()
    assert _front_matter(card)["library_name"] == "gguf" and "model-q8_0.gguf" in card
    run_snippet(out)


@pytest.mark.needs_llama_cpp
def test_a_masked_diffusion_checkpoint_exports_as_llada_with_zoos_logits(tmp_path_factory, tmp_path):
    root = tmp_path_factory.mktemp("fit-diffusion")
    ckpt = tiny_fit(root, tmp_path_factory.mktemp("tok"), "--model", "zoo.objectives.MaskedDiffusionLM",
                    "--model.backbone.vocab_size", "301",
                    "--model.backbone.block.init_args.attention.init_args.causal", "false")  # fmt: skip
    out = _export(ckpt, tmp_path / "gguf", "--format", "gguf")
    model = LanguageModel.from_checkpoint(str(ckpt), map_location="cpu").eval()
    card = (out / "README.md").read_text()
    assert "`llada` architecture" in card and "masked-diffusion" in _front_matter(card)["tags"]
    llm = llama_cpp.Llama(model_path=str(out / "model-f32.gguf"), n_ctx=64, n_batch=64, n_threads=1, verbose=False)
    ids = llm.tokenize(b"def parse(", add_bos=False) + [model.mask_id] * 6
    with torch.no_grad():
        expected = model.backbone(torch.tensor([ids]))[0]
    torch.testing.assert_close(torch.from_numpy(llama_logits(llm, ids)), expected, atol=2e-3, rtol=1e-3)
    run_snippet(out)


def test_the_card_carries_the_hub_front_matter_architecture_training_and_scores(checkpoint, tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(SCORES))
    out = _export(checkpoint, tmp_path / "hf", "--license", "apache-2.0", "--eval-results", str(scores))
    card = (out / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    assert front["license"] == "apache-2.0" and {"zoo", "causal-lm"} <= set(front["tags"])
    assert "datasets" not in front  # the embedded corpus is no hub dataset
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    backbone = LanguageModel.from_checkpoint(str(checkpoint), map_location="cpu").backbone
    assert f"- steps: {state['global_step']:,}" in card and state["global_step"] == 2
    assert f"- tokens: {int(state['state_dict']['tokens_seen']):,}" in card
    assert f"A {backbone.num_parameters():,}-parameter" in card
    assert "| attention | GroupedQueryAttention: 4 heads, 2 key/value heads, head size 8, causal |" in card
    assert "| stdlib (Python's source code) | code | 0.5 |" in card
    assert "| arc_easy | acc_norm | 0.3250 | 0.0740 | 40 |" in card


@pytest.mark.parametrize("format", ["hf", "remote-code"])
def test_the_transformers_cards_usage_snippet_runs_without_zoo(format, checkpoint, tmp_path):
    out = _export(checkpoint, tmp_path / format, "--format", format)
    assert ("trust_remote_code=True" in (out / "README.md").read_text()) == (format == "remote-code")
    run_snippet(out)


def test_the_cards_datasets_come_from_the_runs_mixture(checkpoint, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(Path(checkpoint).read_bytes())
    sources = [{"path": "HuggingFaceFW/fineweb-edu", "name": "sample-100BT", "weight": 0.55},
               {"path": "./local/shards", "weight": 0.3},
               {"path": "stdlib", "name": "code", "weight": 0.15}]  # fmt: skip
    config = {"data": {"class_path": "zoo.data.Mixture", "init_args": {"sources": sources}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    card = (_export(ckpt, tmp_path / "hf") / "README.md").read_text()
    assert _front_matter(card)["datasets"] == ["HuggingFaceFW/fineweb-edu"]
    assert "| HuggingFaceFW/fineweb-edu | sample-100BT | 0.55 |" in card and "| ./local/shards |  | 0.3 |" in card


# ---- bad input: a clear error, exit status 2, nothing half-written ------------------------------------------
def _fails(capsys, checkpoint, out, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _export(checkpoint, out, *args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_checkpoint_not_written_by_zoo_is_named(tmp_path, capsys):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    err = _fails(capsys, foreign, tmp_path / "out", "--format", "gguf")
    assert "foreign.ckpt has no recorded objective class" in err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_a_checkpoint_without_a_tokenizer_asks_for_one(checkpoint, tmp_path, capsys):
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del state["StdlibCorpus"]
    bare = tmp_path / "bare.ckpt"
    torch.save(state, bare)
    err = _fails(capsys, bare, tmp_path / "out", "--format", "gguf")
    assert "carries no tokenizer" in err and "--tokenizer" in err and not (tmp_path / "out").exists()
    tokenizer, _ = tokenizer_from_checkpoint(str(checkpoint))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    out = _export(bare, tmp_path / "out", "--format", "gguf", "--tokenizer", str(tmp_path / "tokenizer.json"))
    assert (out / "model-f32.gguf").is_file()


def test_a_non_empty_output_directory_needs_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _fails(capsys, checkpoint, out, "--format", "gguf")
    assert "exists and is not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and _leftovers(tmp_path) == []
    _export(checkpoint, out, "--format", "gguf", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model-f32.gguf"]


@pytest.mark.parametrize(("change", "message"), [
    ({"attention": "zoo.nn.ExclusiveGroupedQueryAttention"}, "blocks.0.attention is ExclusiveGroupedQueryAttention"),
    ({"fraction": 0.5}, "partial rotary (fraction=0.5)"),
])  # fmt: skip
def test_a_block_gguf_cannot_express_is_refused_before_writing(checkpoint, tmp_path, capsys, change, message):
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    attention = state["hyper_parameters"]["backbone"]["init_args"]["block"]["init_args"]["attention"]
    if "attention" in change:
        attention["class_path"] = change["attention"]
    else:
        state["hyper_parameters"]["backbone"]["init_args"]["position"]["init_args"]["fraction"] = change["fraction"]
    bad = tmp_path / "bad.ckpt"
    torch.save(state, bad)
    err = _fails(capsys, bad, tmp_path / "out", "--format", "gguf")
    assert message in err and "GGUF export" in err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
