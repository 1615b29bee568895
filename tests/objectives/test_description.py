""""What kind of model is this?" is answered once, by the objective's description: each shipped objective's answer,
and a reading of the source that nothing outside zoo/objectives/ asks another way (a kind string, isinstance of an
objective class, getattr into an objective)."""

import ast
import dataclasses
from pathlib import Path

import pytest

import zoo.objectives
from tests.helpers import tiny_backbone
from zoo.nn import GroupedQueryAttention
from zoo.objectives import (
    AUTOREGRESSIVE,
    MASKED_DIFFUSION,
    BlockWarmupStableDecay,
    CausalLM,
    LanguageModel,
    MaskedDiffusionLM,
    ModelKind,
    Scoring,
)

ROOT = Path(__file__).resolve().parents[2]


def bidirectional():
    return tiny_backbone(attention=lambda d: GroupedQueryAttention(d, n_heads=4, causal=False))


def test_each_objective_describes_its_kind_sampler_scoring_and_precision():
    ar = CausalLM(backbone=tiny_backbone()).description
    assert (ar.kind, ar.sampler, ar.scoring, ar.diffusion) == (ModelKind.AUTOREGRESSIVE, AUTOREGRESSIVE,
                                                               Scoring.LOG_LIKELIHOOD, False)  # fmt: skip
    assert ar.mask_id is None and ar.block_size is None and ar.shift
    assert ar.preferred_precision("cpu") == "32-true" and ar.preferred_precision("cuda") is None
    schedule = BlockWarmupStableDecay(warmup_blocks=[2], warmup_steps=2, stable_steps=2, decay_block=4)
    diffusion = MaskedDiffusionLM(backbone=bidirectional(), mask_id=63, conversion=schedule).description
    assert (diffusion.kind, diffusion.sampler, diffusion.scoring) == (ModelKind.MASKED_DIFFUSION, MASKED_DIFFUSION,
                                                                      Scoring.ELBO)  # fmt: skip
    assert (diffusion.mask_id, diffusion.shift, diffusion.block_size, diffusion.diffusion) == (63, False, 4, True)
    assert diffusion.preferred_precision("cpu") is None  # whole blocks per pass: the CPU's fastest
    with pytest.raises(dataclasses.FrozenInstanceError):
        diffusion.mask_id = 1


def test_a_sampler_family_builds_its_options_by_name_and_refuses_others_naming_its_own():
    assert MASKED_DIFFUSION.make_options(max_new_tokens=8, steps=4).gen_length == 8  # the family's answer length
    assert AUTOREGRESSIVE.make_options(top_k=3) == AUTOREGRESSIVE.options(top_k=3)
    with pytest.raises(ValueError, match="steps: not options of autoregressive sampling; its options are max_new_tok"):
        CausalLM(backbone=tiny_backbone()).sample([[1, 2]], max_new_tokens=2, steps=4)


# ---- nothing outside zoo/objectives/ asks what kind of model it holds ------------------------------------------------
# the objectives zoo ships (asking whether something is an objective at all, a LanguageModel, is not asking its kind)
OBJECTIVE_CLASSES = {
    cls.__name__
    for cls in vars(zoo.objectives).values()
    if isinstance(cls, type) and issubclass(cls, LanguageModel) and cls is not LanguageModel
}
# what the objectives hold beyond a LightningModule's own attributes: only the description gives them out
OBJECTIVE_ATTRIBUTES = {"sampler_kind", "mask_id", "shift", "conversion", "eps", "antithetic", "val_seed",
                        "decay_block", "block_diffusion"}  # fmt: skip
# the names objectives go by where they are used (the harness's self.model, the eval callback's pl_module, ...)
OBJECTIVE_NAMES = {"model", "pl_module", "objective", "lm", "diffusion", "ar"}


def kind_questions(path: Path, root: Path = ROOT) -> list[str]:
    """Each place in ``path`` that asks what kind of model it holds other than through ``model.description``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Name) and node.id == "sampler_kind" or (
            isinstance(node, ast.keyword) and node.arg == "sampler_kind"
        ):
            found.append(f"{where}: sampler_kind")
        elif isinstance(node, ast.Constant) and node.value == "sampler_kind":
            found.append(f"{where}: 'sampler_kind'")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            if node.func.id in ("isinstance", "issubclass") and len(node.args) == 2:
                names = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node.args[1])
                         if isinstance(n, (ast.Name, ast.Attribute))}  # fmt: skip
                if names & OBJECTIVE_CLASSES:
                    found.append(f"{where}: {node.func.id}(…, {', '.join(sorted(names & OBJECTIVE_CLASSES))})")
            if node.func.id in ("getattr", "hasattr") and len(node.args) >= 2:
                name = node.args[1]
                if isinstance(name, ast.Constant) and name.value in OBJECTIVE_ATTRIBUTES:
                    found.append(f"{where}: {node.func.id}(…, {name.value!r})")
        elif isinstance(node, ast.Attribute) and node.attr in OBJECTIVE_ATTRIBUTES:
            owner = node.value
            base = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
            if base in OBJECTIVE_NAMES:
                found.append(f"{where}: {base}.{node.attr}")
    return found


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")
                  if "objectives" not in p.relative_to(ROOT).parts[:2] and "hub_code" not in p.parts)  # fmt: skip


def test_nothing_outside_the_objectives_asks_what_kind_of_model_it_holds():
    """No kind string, no isinstance of an objective class, no getattr into an objective: the description answers
    (zoo/interop/hub_code is the exported model's own code, which runs without zoo)."""
    assert OBJECTIVE_CLASSES == {"CausalLM", "MaskedDiffusionLM"}
    files = sources("zoo", "benchmarks")
    assert any(p.name == "generate.py" for p in files) and not any("objectives" in p.parts for p in files)
    found = [hit for path in files for hit in kind_questions(path)]
    assert not found, "ask model.description instead:\n" + "\n".join(found)


def test_the_reading_finds_each_way_of_asking(tmp_path):
    """The reading above is not vacuous: each way of asking it refuses is found."""
    asking = tmp_path / "asking.py"
    asking.write_text(
        "def f(model, block):\n"
        "    a = model.sampler_kind == 'diffusion'\n"
        "    b = isinstance(model, zoo.objectives.MaskedDiffusionLM)\n"
        "    c = getattr(model, 'mask_id', None)\n"
        "    d = self.model.shift\n"
        "    e = inference_autocast('auto', 'cpu', sampler_kind='autoregressive')\n"
        "    return getattr(block, 'vocab_size'), model.description.mask_id\n"
    )
    found = kind_questions(asking, root=tmp_path)
    assert sorted(hit.split(": ", 1)[1] for hit in found) == [
        "getattr(…, 'mask_id')", "isinstance(…, MaskedDiffusionLM)", "model.sampler_kind", "model.shift",
        "sampler_kind",
    ], found  # fmt: skip
