"""Each of zoo's hooks into a private part of torch, Lightning or jsonargparse (``zoo/compat.py``) still finds what it
hooks in the installed versions, and no other module of zoo touches a private name of those libraries.

A failure names the hook, the library's installed version and the version it was checked against
(``zoo.compat.CHECKED``): run this file after an upgrade."""

import argparse
import ast
import importlib.metadata
import inspect
import io
import tokenize
from pathlib import Path

import torch

from zoo import compat

ZOO = Path(compat.__file__).parent
LIBRARIES = ("torch", "lightning", "jsonargparse")


def _require(hook: str, condition: bool, what: str) -> None:
    """Fail, naming the hook and the versions, unless ``condition``."""
    library = next(h.library for h in compat.HOOKS if h.name == hook)
    installed = importlib.metadata.version(library)
    assert condition, (
        f"zoo.compat.{hook}: {what} is gone or changed in {library} {installed} (checked against "
        f"{library} {compat.CHECKED[library]}); update the hook in zoo/compat.py, or use a public API that replaces it"
    )


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _calls(cls, method: str, name: str) -> bool:
    return f"self.{name}(" in inspect.getsource(getattr(cls, method))


def test_every_hook_is_checked_and_named_once():
    names = [h.name for h in compat.HOOKS]
    assert len(names) == len(set(names))
    assert all(hasattr(compat, name) for name in names)
    assert {h.library for h in compat.HOOKS} <= set(compat.CHECKED) == set(LIBRARIES)
    tested = {name.removeprefix("test_hook_") for name, _ in globals().items() if name.startswith("test_hook_")}
    assert tested == set(names), f"hooks without a test here: {sorted(set(names) - tested)}"


# ---- torch ------------------------------------------------------------------------------------------------------
def test_hook_onednn_bf16_supported():
    fn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    _require("onednn_bf16_supported", fn is not None, "torch.ops.mkldnn._is_mkldnn_bf16_supported")
    _require("onednn_bf16_supported", isinstance(compat.onednn_bf16_supported(), bool), "its boolean answer")


def test_hook_cpu_has_amx_tiles():
    _require("cpu_has_amx_tiles", callable(getattr(torch.cpu, "_is_amx_tile_supported", None)),
             "torch.cpu._is_amx_tile_supported")  # fmt: skip
    _require("cpu_has_amx_tiles", isinstance(compat.cpu_has_amx_tiles(), bool), "its boolean answer")


def test_hook_cpu_has_avx512_bf16():
    _require("cpu_has_avx512_bf16", callable(getattr(torch.cpu, "_is_avx512_bf16_supported", None)),
             "torch.cpu._is_avx512_bf16_supported")  # fmt: skip
    _require("cpu_has_avx512_bf16", isinstance(compat.cpu_has_avx512_bf16(), bool), "its boolean answer")


def test_hook_fused_adam_devices():
    import torch.optim.optimizer as optimizer

    fn = getattr(optimizer, "_get_fused_kernels_supported_devices", None)
    _require("fused_adam_devices", fn is not None and _params(fn) == [],
             "torch.optim.optimizer._get_fused_kernels_supported_devices()")  # fmt: skip
    _require("fused_adam_devices", {"cpu", "cuda"} <= set(compat.fused_adam_devices()), "its list of device types")


def test_hook_unscales_in_step():
    weight = torch.nn.Parameter(torch.zeros(2))
    fused, plain = torch.optim.AdamW([weight], fused=True), torch.optim.AdamW([weight])
    _require("unscales_in_step", getattr(fused, "_step_supports_amp_scaling", None) is True,
             "fused AdamW's _step_supports_amp_scaling")  # fmt: skip
    _require("unscales_in_step", "_step_supports_amp_scaling" in inspect.getsource(torch.amp.GradScaler.step),
             "GradScaler.step's reading of _step_supports_amp_scaling")  # fmt: skip
    assert compat.unscales_in_step(fused) and not compat.unscales_in_step(plain)


def test_hook_AfterConversion():
    _require("AfterConversion", _params(torch.nn.Module._apply)[:3] == ["self", "fn", "recurse"],
             "nn.Module._apply(fn, recurse)")  # fmt: skip

    class Counted(compat.AfterConversion):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.Linear(2, 2)
            self.conversions = 0

        def after_conversion(self) -> None:
            self.conversions += 1

    module = Counted()
    module.to(torch.float64)
    module.float()
    module.inner.double()  # a child's own conversion is the child's
    _require("AfterConversion", module.conversions == 2, "the route of .to()/.float() through nn.Module._apply")


# ---- Lightning --------------------------------------------------------------------------------------------------
def test_hook_eager_call():
    _require("eager_call", callable(getattr(torch.nn.Module, "_call_impl", None)), "nn.Module._call_impl")
    layer = torch.nn.Linear(2, 2)
    seen = []
    layer.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    compat.compiled_call_slot(layer, lambda x: torch.zeros(1))  # the eager call ignores a compiled one
    assert compat.eager_call(layer)(torch.ones(3, 2)).shape == (3, 2) and seen == [(3, 2)]


def test_hook_compiled_call_slot():
    layer = torch.nn.Linear(2, 2)
    _require("compiled_call_slot", hasattr(layer, "_compiled_call_impl"), "nn.Module._compiled_call_impl")
    assert compat.compiled_call_slot(layer) is None
    compat.compiled_call_slot(layer, lambda x: torch.full((1,), 7.0))
    _require("compiled_call_slot", layer(torch.ones(1, 2)).item() == 7.0, "module(...) running the compiled slot")
    assert compat.compiled_call_slot(layer, None) is None and layer(torch.ones(1, 2)).shape == (1, 2)


def test_hook_inductor_cpp_compiler():
    config = importlib.import_module("torch._inductor.config")
    cxx = getattr(getattr(config, "cpp", None), "cxx", None)
    _require("inductor_cpp_compiler", isinstance(cxx, tuple) and len(cxx) == 2, "torch._inductor.config.cpp.cxx")
    assert isinstance(compat.inductor_cpp_compiler(), str) and compat.inductor_cpp_compiler()


def test_hook_triton_available():
    triton = importlib.import_module("torch.utils._triton")
    _require("triton_available", callable(getattr(triton, "has_triton", None)), "torch.utils._triton.has_triton")
    assert compat.triton_available() in (True, False)


def test_hook_attached_trainer():
    import lightning as L

    module = L.LightningModule()
    _require("attached_trainer", "_trainer" in vars(module), "LightningModule._trainer")
    assert compat.attached_trainer(module) is None
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    _require("attached_trainer", compat.attached_trainer(module) is trainer, "the trainer setter's _trainer")


def test_hook_peak_flops_lookup():
    import lightning.pytorch.callbacks.throughput_monitor as monitor
    from lightning.pytorch.callbacks import ThroughputMonitor

    _require("peak_flops_lookup", callable(getattr(monitor, "get_available_flops", None)),
             "lightning.pytorch.callbacks.throughput_monitor.get_available_flops")  # fmt: skip
    _require("peak_flops_lookup", "get_available_flops(" in inspect.getsource(ThroughputMonitor.setup),
             "ThroughputMonitor.setup's lookup through get_available_flops")  # fmt: skip
    original = monitor.get_available_flops
    with compat.peak_flops_lookup(lambda device, dtype, lookup: 1.0e12):
        assert monitor.get_available_flops(torch.device("cpu"), torch.float32) == 1.0e12
    assert monitor.get_available_flops is original


def test_hook_stage_throughputs():
    from lightning.pytorch.callbacks import ThroughputMonitor

    callback = ThroughputMonitor(batch_size_fn=len)
    _require("stage_throughputs", isinstance(getattr(callback, "_throughputs", None), dict),
             "ThroughputMonitor._throughputs")  # fmt: skip
    _require("stage_throughputs", "self._throughputs[stage] = throughput" in inspect.getsource(ThroughputMonitor),
             "ThroughputMonitor.setup's Throughput per stage")  # fmt: skip
    assert compat.stage_throughputs(callback) is callback._throughputs


def test_hook_summary_max_depth():
    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

    for cls in (ModelSummary, RichModelSummary):
        _require("summary_max_depth", compat.summary_max_depth(cls(max_depth=3)) == 3, f"{cls.__name__}._max_depth")


def test_hook_format_summary_table():
    from lightning.pytorch.utilities.model_summary import model_summary

    fn = getattr(model_summary, "_format_summary_table", None)
    _require("format_summary_table", fn is not None and _params(fn) == [
        "total_parameters", "trainable_parameters", "model_size", "total_training_modes", "total_flops", "cols"],
        "lightning.pytorch.utilities.model_summary.model_summary._format_summary_table's arguments")  # fmt: skip
    table = compat.format_summary_table(10, 10, 0.01, {"train": 1, "eval": 0}, 0, ("Name", ["backbone"]))
    assert "backbone" in table and "Total params" in table


def test_hook_CLIHooks():
    from lightning.pytorch.cli import LightningCLI

    for name in ("_parse_ckpt_path", "_set_seed"):
        _require("CLIHooks", callable(getattr(LightningCLI, name, None)) and _params(getattr(LightningCLI, name)) ==
                 ["self"], f"LightningCLI.{name}()")  # fmt: skip
        _require("CLIHooks", _calls(LightningCLI, "__init__", name), f"LightningCLI.__init__'s call of {name}")
    assert issubclass(compat.CLIHooks, LightningCLI)


def test_hook_replace_lists():
    from jsonargparse import _typehints

    params = _params(_typehints.adapt_typehints)
    _require("replace_lists", params[:2] == ["val", "typehint"] and {"prev_val", "append", "serialize"} <= set(params),
             "jsonargparse._typehints.adapt_typehints(val, typehint, prev_val=, append=, serialize=)")  # fmt: skip
    _require("replace_lists", list in _typehints.sequence_origin_types and callable(_typehints.get_typehint_origin),
             "jsonargparse._typehints.sequence_origin_types / get_typehint_origin")  # fmt: skip
    compat.replace_lists()
    compat.replace_lists()  # idempotent: wrapped once
    assert _typehints.adapt_typehints.zoo_replaces_lists
    assert not getattr(_typehints.adapt_typehints.__wrapped__, "zoo_replaces_lists", False)
    # what it does for a user: tests/commands/test_overrides.py


def test_hook_option_strings():
    from jsonargparse import ArgumentParser

    parser, sub = ArgumentParser(), ArgumentParser()
    parser.add_argument("--top")
    sub.add_argument("--inner")
    parser.add_subcommands().add_subcommand("fit", sub)
    _require("option_strings", isinstance(getattr(parser, "_option_string_actions", None), dict),
             "argparse's ArgumentParser._option_string_actions")  # fmt: skip
    _require("option_strings", getattr(parser, "_subcommands_action", None) is not None,
             "jsonargparse's ArgumentParser._subcommands_action")  # fmt: skip
    assert {"--top", "--inner"} <= set(compat.option_strings(parser))


def test_hook_subcommand_parsers():
    from jsonargparse import ArgumentParser

    parser, sub = ArgumentParser(), ArgumentParser()
    parser.add_subcommands().add_subcommand("train", sub)
    _require("subcommand_parsers", getattr(parser, "_subcommands_action", None) is not None,
             "jsonargparse's ArgumentParser._subcommands_action")  # fmt: skip
    assert compat.subcommand_parsers(parser) == {"train": sub}
    assert compat.subcommand_parsers(ArgumentParser()) == {}


def test_hook_add_option_string():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    action = parser.add_argument("--max_new_tokens", type=int, default=1)
    _require("add_option_string", isinstance(getattr(parser, "_option_string_actions", None), dict),
             "argparse's ArgumentParser._option_string_actions")  # fmt: skip
    compat.add_option_string(parser, action, "--max-new-tokens")
    assert parser.parse_args(["--max-new-tokens", "7"]).max_new_tokens == 7
    assert "--max_new_tokens MAX_NEW_TOKENS, --max-new-tokens MAX_NEW_TOKENS" in parser.format_help()


def test_hook_HelpTextFormatter():
    from jsonargparse import ArgumentParser

    _require("HelpTextFormatter", _params(argparse.HelpFormatter._get_help_string) == ["self", "action"],
             "argparse.HelpFormatter._get_help_string(action)")  # fmt: skip

    class Shouting(compat.HelpTextFormatter):
        def help_text(self, text: str) -> str:
            return text.upper()

    parser = ArgumentParser(formatter_class=Shouting)
    parser.add_argument("--steps", type=int, help="number of steps")
    _require("HelpTextFormatter", "NUMBER OF STEPS" in parser.format_help(), "help text through _get_help_string")


# ---- nothing else touches them ----------------------------------------------------------------------------------
def _private_uses(path: Path) -> list[str]:
    """Where ``path`` names a private name a hook covers, imports a private name of torch/Lightning/jsonargparse,
    or reaches one through an attribute of such a module (``torch.cpu._is_…``); comments and docstrings aside."""
    source = path.read_text()
    hooked = {name for hook in compat.HOOKS for name in hook.private}
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.string in hooked:
            found.append(f"{path}:{token.start[0]}: {token.string}")
        if token.type == tokenize.STRING and token.string.strip("'\"") in hooked:  # getattr(x, "_name")
            found.append(f"{path}:{token.start[0]}: {token.string}")
    aliases = set(LIBRARIES) | {"L"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
            parts = node.module.split(".") + [a.name for a in node.names]
            if any(p.startswith("_") and not p.startswith("__") for p in parts):
                found.append(f"{path}:{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    aliases.add(alias.asname or alias.name.split(".")[0])
                    if any(p.startswith("_") for p in alias.name.split(".")):
                        found.append(f"{path}:{node.lineno}: import {alias.name}")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_outside_compat_touches_a_private_name():
    offenders = [use for path in sorted(ZOO.rglob("*.py")) if path.name != "compat.py" or path.parent != ZOO
                 for use in _private_uses(path)]  # fmt: skip
    assert not offenders, "private names of torch/Lightning/jsonargparse outside zoo/compat.py:\n" + "\n".join(
        offenders
    )


def test_the_private_name_check_finds_each_kind_of_use(tmp_path):
    """The check above fails on what it is meant to catch (here: the uses zoo made before zoo/compat.py)."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\nimport torch.optim._muon as m\nfrom jsonargparse import _typehints\n"
        "from torch.optim.optimizer import _get_fused_kernels_supported_devices\n"
        "x = torch.cpu._is_amx_tile_supported()\ny = getattr(o, '_step_supports_amp_scaling', False)\n"
        "z = callback._max_depth\n# a comment naming _throughputs is fine\n"
    )
    assert {int(use.split(":")[-2]) for use in _private_uses(bad)} == {2, 3, 4, 5, 6, 7}  # not the comment's line 8
