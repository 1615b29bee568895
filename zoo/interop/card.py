"""The model card (``README.md``) every export writes: the Hugging Face Hub's format, filled from the checkpoint.

The YAML front matter carries what the Hub indexes (``library_name``, ``pipeline_tag``, ``license`` when given,
``datasets`` of the run's hub sources, ``tags``); the body gives the architecture, the parameter count, the
training steps and tokens recorded in the checkpoint, the data mixture of the run's ``config.yaml`` (Lightning
writes it beside ``checkpoints/``), the scores of a ``zoo eval --output`` file, and a usage snippet for the
export's format (the tests run that snippet against the export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from zoo.nn import Transformer

if TYPE_CHECKING:
    from zoo.training.loading import Loaded


@dataclass
class CardFacts:
    """What a card says about a model, gathered by :func:`card_facts`.

    Args:
        name: the model's name (the export directory's name by default).
        objective: the objective class that trained it (e.g. ``CausalLM``).
        steps: optimizer steps recorded in the checkpoint.
        tokens: training tokens seen, recorded in the checkpoint.
        data: the run's ``data:`` section (``None`` when no ``config.yaml`` was found beside the checkpoint).
        eval_results: a ``zoo eval --output`` report, or ``None``.
        license: the license id for the front matter, or ``None``.
    """

    name: str
    objective: str
    steps: int | None
    tokens: int | None
    data: dict | None = None
    eval_results: dict | None = None
    license: str | None = None
    extra_tags: list[str] = field(default_factory=list)


def run_data_config(ckpt: str | Path) -> dict | None:
    """The ``data:`` section of the run's ``config.yaml`` (``version_N/config.yaml`` beside ``checkpoints/``)."""
    ckpt = Path(ckpt)
    for folder in (ckpt.parent, ckpt.parent.parent):
        path = folder / "config.yaml"
        if path.is_file():
            config = yaml.safe_load(path.read_text())
            if isinstance(config, dict) and isinstance(config.get("data"), dict):
                return config["data"]
    return None


def read_eval_results(path: str | Path) -> dict:
    """A ``zoo eval --output`` report, checked to hold its ``results`` table."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"--eval-results {path} is not a readable JSON file ({err}): give the file `zoo eval --output` writes"
        ) from err
    if not isinstance(report, dict) or not isinstance(report.get("results"), dict):
        raise ValueError(f"--eval-results {path} has no 'results' table: give the JSON `zoo eval --output` writes")
    return report


def card_facts(loaded: Loaded, *, name: str, license: str | None = None,
               eval_results: dict | None = None) -> CardFacts:  # fmt: skip
    """The facts of a card from a loaded checkpoint (:func:`zoo.training.loading.load_checkpoint`: its step, tokens
    and objective) and the run folder around its file (``config.yaml``)."""
    return CardFacts(
        name=name, objective=loaded.objective or "unknown", steps=loaded.step, tokens=loaded.tokens,
        data=run_data_config(loaded.path), eval_results=eval_results, license=license,
    )  # fmt: skip


def _mixture(data: dict | None) -> tuple[list[tuple[str, str, float]], list[str]]:
    """(source, subset, weight) rows of the run's data and the hub dataset ids among them."""
    if data is None:
        return [], []
    args = data.get("init_args") or {}
    rows: list[tuple[str, str, float]] = []
    if isinstance(args.get("sources"), list):  # zoo.data.Mixture and the SFT modules
        for source in args["sources"]:
            source = source.get("init_args", source) if isinstance(source, dict) else {}
            rows.append((str(source.get("path")), str(source.get("name") or ""), float(source.get("weight", 1.0))))
    elif data.get("class_path", "").endswith("StdlibCorpus"):
        rows = [("stdlib (Python's documentation)", "prose", float(args.get("prose_weight", 0.5))),
                ("stdlib (Python's source code)", "code", float(args.get("code_weight", 0.5)))]  # fmt: skip
    local = (".", "/", "~", "stdlib")
    datasets = sorted({path for path, _, _ in rows if "/" in path and not path.startswith(local)})
    return rows, datasets


def _architecture(backbone: Transformer) -> list[tuple[str, str]]:
    block = backbone.blocks[0]
    attn, ffn = block.attention, block.ffn
    rows = [
        ("block", f"{type(block).__name__} × {backbone.n_layers}"),
        ("width", str(backbone.dim)),
        ("attention", f"{type(attn).__name__}: {attn.n_heads} heads, {attn.n_kv_heads} key/value heads, "
                      f"head size {attn.head_dim}, {'causal' if attn.causal else 'bidirectional'}"),
        ("feed-forward", f"{type(ffn).__name__}, hidden {getattr(ffn, 'hidden_dim', '?')}"),
        ("norm", repr(backbone.norm)),
        ("position", repr(backbone.position)),
        ("vocabulary", f"{backbone.vocab_size:,}"),
        ("context", f"{backbone.max_seq_len:,}"),
        ("embeddings", "tied to the LM head" if backbone.tie_embeddings else "untied"),
    ]  # fmt: skip
    for name in ("canon_a", "canon_c"):
        if getattr(block, name, None) is not None:
            rows.append((name.replace("_", " ").title(), repr(getattr(block, name))))
    return rows


def render_card(model, facts: CardFacts, *, library_name: str, usage: str, files: str) -> str:
    """The card's Markdown for ``model`` (the trained objective: its backbone and its description). ``usage`` is a
    Python snippet that loads the export; ``files`` says what it holds."""
    rows, datasets = _mixture(facts.data)
    backbone: Transformer = model.backbone
    diffusion = model.description.diffusion
    front = {"library_name": library_name, "pipeline_tag": "text-generation"}
    if facts.license:
        front["license"] = facts.license
    if datasets:
        front["datasets"] = datasets
    front["tags"] = ["zoo", "masked-diffusion" if diffusion else "causal-lm", *facts.extra_tags]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {facts.name}", ""]
    lines += [f"A {backbone.num_parameters():,}-parameter "
              f"({backbone.num_parameters(embeddings=False):,} non-embedding) "
              f"{'masked-diffusion' if diffusion else 'autoregressive'} language model trained with zoo "
              f"({facts.objective}). {files}", ""]  # fmt: skip
    lines += ["## Architecture", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in _architecture(backbone))]
    lines += ["", "## Training", ""]
    lines.append(f"- steps: {facts.steps:,}" if facts.steps is not None else "- steps: not recorded")
    lines.append(f"- tokens: {facts.tokens:,}" if facts.tokens is not None else "- tokens: not recorded")
    lines += ["", "### Data", ""]
    if rows:
        lines += ["| source | subset | weight |", "|---|---|---:|", *(f"| {p} | {n} | {w:g} |" for p, n, w in rows)]
    elif facts.data is not None:
        lines.append(f"`{facts.data.get('class_path', 'unknown')}` (see the run's config.yaml)")
    else:
        lines.append("The run's config.yaml was not found beside the checkpoint, so the data is not recorded here.")
    if facts.eval_results is not None:
        lines += ["", "## Evaluation", "", "| task | metric | value | stderr | n |", "|---|---|---:|---:|---:|"]
        for task, metrics in facts.eval_results["results"].items():
            for metric, entry in metrics.items():
                if metric == "n" or not isinstance(entry, dict):
                    continue
                stderr = entry.get("stderr")
                lines.append(f"| {task} | {metric} | {entry.get('value', float('nan')):.4f} | "
                             f"{'' if stderr is None else f'{stderr:.4f}'} | {metrics.get('n', '')} |")  # fmt: skip
        step = facts.eval_results.get("global_step")
        if step is not None:
            lines += ["", f"Scored by `zoo eval` at step {step:,}."]
    lines += ["", "## Usage", "", "```python", usage.strip(), "```", ""]
    return "\n".join(lines)


def usage_snippet(card: str) -> str:
    """The Python code of a card's usage section (the tests run it)."""
    body = card.split("## Usage", 1)[1]
    return body.split("```python\n", 1)[1].split("```", 1)[0]


def transformers_card(model, *, remote: bool) -> dict:
    """What the card of a transformers directory says: its library, files and a usage snippet (run by the tests)."""
    diffusion = model.description.diffusion
    trust = ", trust_remote_code=True" if remote else ""
    call = ("model.generate(ids)  # masked-diffusion sampling, settings from generation_config.json" if diffusion
            else "model.generate(ids, max_new_tokens=16, do_sample=False)")  # fmt: skip
    usage = f"""
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "."  # this directory (or its Hub repository id)
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path{trust})
ids = tokenizer("def parse(", return_tensors="pt").input_ids
out = {call}
print(tokenizer.decode(out[0, ids.shape[1]:]))
"""
    if remote:
        files = ("This directory carries its own modeling code (`modeling_zoo.py`): load it with "
                 "`trust_remote_code=True`.")  # fmt: skip
        tags = ["custom_code"]
    else:
        files = "This directory loads with transformers' stock classes (no remote code)."
        tags = []
    return {"library_name": "transformers", "usage": usage, "files": files, "tags": tags}
