"""Every use zoo makes of a private part of torch, Lightning or jsonargparse, in one place.

Each hook below is one function or class, says why no public API does the job, and is listed in :data:`HOOKS`
with the private names it touches and the versions it was checked against; ``tests/test_compat.py`` checks each
one against the installed libraries (it fails naming the hook when a name is gone or its signature changed) and
that no other module of zoo touches these names. An upgrade of torch, Lightning or jsonargparse is checked by
running that one test file.

Checked against torch 2.13.0, lightning 2.6.6, jsonargparse 4.53.0.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

CHECKED = {"torch": "2.13.0", "lightning": "2.6.6", "jsonargparse": "4.53.0"}


@dataclass(frozen=True)
class Hook:
    """One hook: where it is used, the private names it touches, and the library whose upgrade may break it."""

    name: str
    library: str
    private: tuple[str, ...]
    used_by: str


HOOKS = [
    Hook("onednn_bf16_supported", "torch", ("_is_mkldnn_bf16_supported",), "zoo.training.devices"),
    Hook("cpu_has_amx_tiles", "torch", ("_is_amx_tile_supported",), "zoo.training.devices"),
    Hook("cpu_has_avx512_bf16", "torch", ("_is_avx512_bf16_supported",), "zoo.training.devices"),
    Hook("fused_adam_devices", "torch", ("_get_fused_kernels_supported_devices",), "zoo.optim.fused"),
    Hook("unscales_in_step", "torch", ("_step_supports_amp_scaling",), "zoo.training.precision"),
    Hook("AfterConversion", "torch", ("_apply",), "zoo.nn.transformer"),
    Hook("eager_call", "torch", ("_call_impl",), "zoo.training.compile"),
    Hook("compiled_call_slot", "torch", ("_compiled_call_impl",), "zoo.training.compile"),
    Hook("inductor_cpp_compiler", "torch", ("_inductor",), "zoo.training.compile"),
    Hook("triton_available", "torch", ("_triton",), "zoo.training.compile"),
    Hook("attached_trainer", "lightning", ("_trainer",), "zoo.objectives"),
    Hook("peak_flops_lookup", "lightning", ("get_available_flops",), "zoo.training.throughput"),
    Hook("stage_throughputs", "lightning", ("_throughputs",), "zoo.training.throughput"),
    Hook("summary_max_depth", "lightning", ("_max_depth",), "zoo.commands.fit"),
    Hook("format_summary_table", "lightning", ("_format_summary_table",), "zoo.training.display"),
    Hook("CLIHooks", "lightning", ("_parse_ckpt_path", "_set_seed"), "zoo.commands.fit"),
    Hook("replace_lists", "jsonargparse", ("_typehints", "adapt_typehints"), "zoo.commands.fit"),
    Hook("option_strings", "jsonargparse", ("_option_string_actions", "_subcommands_action"), "zoo.commands.fit"),
    Hook("subcommand_parsers", "jsonargparse", ("_subcommands_action",), "zoo.commands.options"),
    Hook("add_option_string", "jsonargparse", ("_option_string_actions",), "zoo.commands.options"),
    Hook("HelpTextFormatter", "jsonargparse", ("_get_help_string",), "zoo.commands.fit"),
]


# ---- torch ------------------------------------------------------------------------------------------------------
def onednn_bf16_supported() -> bool:
    """oneDNN's own test for bf16 kernels (on Arm: the BF16 extension). torch exposes no public one."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_amx_tiles() -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and newer): torch's cpuinfo answer, private in torch."""
    return bool(torch.cpu._is_amx_tile_supported())


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 (Cooper Lake, Zen 4 and newer): torch's cpuinfo answer, private in torch."""
    return bool(torch.cpu._is_avx512_bf16_supported())


def fused_adam_devices() -> list[str]:
    """The device types torch's fused Adam/AdamW kernels run on (its own list; torch keeps it private)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return list(_get_fused_kernels_supported_devices())


def unscales_in_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` unscales its gradients inside ``step`` (torch's fused Adam/AdamW): the attribute torch's
    ``GradScaler.step`` and Lightning's mixed-precision plugin read themselves."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class AfterConversion(nn.Module):
    """A module whose :meth:`after_conversion` runs after every conversion of its tensors (``.to``, ``.cuda``,
    ``.half``, a move to an XLA device): torch routes them all through the private ``nn.Module._apply`` and has no
    public hook after it."""

    def after_conversion(self) -> None:
        """Called once the module's tensors have been converted; subclasses restore what conversion broke."""

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.after_conversion()
        return self


def eager_call(module: nn.Module) -> Callable:
    """``module``'s call with its hooks, never a compiled one (``nn.Module._call_impl``; ``module(...)`` takes the
    compiled call once one is set, and no public name reaches the eager one)."""
    return module._call_impl


_UNSET = object()


def compiled_call_slot(module: nn.Module, call: Callable | None | object = _UNSET) -> Callable | None:
    """Read (no ``call``) or set ``nn.Module``'s slot for a compiled call (``_compiled_call_impl``, which
    ``nn.Module.compile`` fills): ``module(...)`` then runs ``call`` while the parameters keep their names.
    ``None`` empties it. Returns what the slot holds."""
    if call is not _UNSET:
        module._compiled_call_impl = call
    return getattr(module, "_compiled_call_impl", None)


def inductor_cpp_compiler() -> str:
    """The C++ compiler inductor builds CPU kernels with: ``$CXX`` where set, else ``g++`` (inductor's own choice,
    kept in its private ``torch._inductor.config``, which has no public reader)."""
    from torch._inductor import config

    return config.cpp.cxx[1] or "g++"


def triton_available() -> bool:
    """Whether Triton, which inductor needs for CUDA kernels, can be imported and used (``torch.utils._triton``:
    torch's own check, which also looks at the device; no public function answers it)."""
    from torch.utils._triton import has_triton

    return has_triton()


# ---- Lightning --------------------------------------------------------------------------------------------------
def attached_trainer(module) -> object | None:
    """The trainer a LightningModule is attached to, or ``None`` (built in Python, not fitted yet): Lightning's
    public ``module.trainer`` raises instead of answering ``None``."""
    return module._trainer


@contextlib.contextmanager
def peak_flops_lookup(lookup: Callable[[torch.device, torch.dtype], float | None]) -> Iterator[None]:
    """Within the block, Lightning's ``ThroughputMonitor.setup`` asks ``lookup(device, dtype)`` for a device's peak
    FLOP/s instead of its own table (``get_available_flops``, which has no setting to replace it). ``lookup``
    receives Lightning's own function as its third argument."""
    import lightning.pytorch.callbacks.throughput_monitor as monitor

    original = monitor.get_available_flops
    monitor.get_available_flops = lambda device, dtype: lookup(device, dtype, original)
    try:
        yield
    finally:
        monitor.get_available_flops = original


def stage_throughputs(monitor) -> dict:
    """A ``ThroughputMonitor``'s per-stage ``Throughput`` objects (set up by its ``setup``), whose ``compute``
    gives the figures it logs; Lightning keeps them private."""
    return monitor._throughputs


def summary_max_depth(callback) -> int:
    """The ``max_depth`` a ``ModelSummary`` (or ``RichModelSummary``) was built with; Lightning keeps it private."""
    return callback._max_depth


def format_summary_table(*args, **kwargs) -> str:
    """Lightning's model-summary table (the one ``ModelSummary.summarize`` prints), for a summary that prints
    other rows; private in Lightning."""
    from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

    return _format_summary_table(*args, **kwargs)


def _cli_hooks() -> type:
    from lightning.pytorch.cli import LightningCLI

    class CLIHooks(LightningCLI):
        """``LightningCLI`` with two of its private steps behind switches.

        Attributes:
            reads_checkpoint_hyperparameters: ``False``: a ``--ckpt_path`` file's hyperparameters never replace the
                model's config (``LightningCLI._parse_ckpt_path`` does that before anything else can intervene).
            seeds: ``False``: ``seed_everything`` is not applied (``LightningCLI._set_seed``), for a CLI that only
                parses.
        """

        reads_checkpoint_hyperparameters: bool = True
        seeds: bool = True

        def _parse_ckpt_path(self) -> None:
            if self.reads_checkpoint_hyperparameters:
                super()._parse_ckpt_path()

        def _set_seed(self) -> None:
            if self.seeds:
                super()._set_seed()

    CLIHooks.__qualname__ = "CLIHooks"
    return CLIHooks


# ---- jsonargparse -----------------------------------------------------------------------------------------------
def replace_lists() -> None:
    """Make a list given later (on the command line or in a later ``--config``) replace the earlier list instead of
    merging into it item by item (idempotent).

    jsonargparse parses a value with the value it replaces at hand (``prev_val``), so that ``--model.lr 1e-3`` keeps
    the rest of ``model``. For a list of dataclasses or ``class_path`` entries it does the same item by item when the
    new list has as many items as the old one (``jsonargparse._typehints.adapt_typehints``, the list branch): a
    recipe's two hub ``sources`` overridden by ``--data.sources configs/data/stdlib.yaml`` (two sources too) kept the
    recipe's ``data_files`` and ``text_field`` in the new entries, which then read nothing. Appending
    (``--data.sources+ ...``) and setting one item's field (a nested key) keep jsonargparse's behaviour. No public
    setting turns the merge off (tests/commands/test_overrides.py fails if the hook stops taking effect)."""
    from jsonargparse import _typehints

    if getattr(_typehints.adapt_typehints, "zoo_replaces_lists", False):
        return
    original = _typehints.adapt_typehints
    sequences = _typehints.sequence_origin_types

    @functools.wraps(original)
    def adapt_typehints(val, typehint, *args, **kwargs):
        if isinstance(val, list) and not kwargs.get("append") and not kwargs.get("serialize"):
            if _typehints.get_typehint_origin(typehint) in sequences and "prev_val" in kwargs:
                kwargs["prev_val"] = None  # the list given now is the whole value: nothing of the old one merges in
        return original(val, typehint, *args, **kwargs)

    adapt_typehints.zoo_replaces_lists = True
    _typehints.adapt_typehints = adapt_typehints


def option_strings(parser) -> list[str]:
    """The option strings of ``parser`` and of its subcommands' parsers (``fit``, ``validate``, ...), which
    argparse and jsonargparse keep in private attributes (an error message names the closest ones)."""
    options = list(parser._option_string_actions)
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in subcommands.choices.values() if subcommands is not None else []:
        options += option_strings(sub)
    return options


def subcommand_parsers(parser) -> dict:
    """A jsonargparse parser's subcommands by name (``{}`` where it has none): the parser keeps them in a private
    attribute and offers no public listing."""
    action = getattr(parser, "_subcommands_action", None)
    return dict(action.choices) if action is not None else {}


def add_option_string(parser, action, option: str) -> None:
    """Give ``action`` of ``parser`` one more spelling (``--max-new-tokens`` beside jsonargparse's
    ``--max_new_tokens``), shown in ``--help`` and accepted on the command line: argparse takes every spelling in
    ``add_argument`` only, and jsonargparse derives an option's one spelling from a parameter's name."""
    if option not in action.option_strings:
        action.option_strings.append(option)
        parser._option_string_actions[option] = action


def _help_text_formatter() -> type:
    from jsonargparse import DefaultHelpFormatter

    class HelpTextFormatter(DefaultHelpFormatter):
        """jsonargparse's help formatter, with each option's help text passed through :meth:`help_text`: argparse's
        formatters offer only the private ``_get_help_string`` to change it (as argparse's own
        ``ArgumentDefaultsHelpFormatter`` does)."""

        def help_text(self, text: str) -> str:
            """The help text to show for an option whose text is ``text``."""
            return text

        def _get_help_string(self, action) -> str:
            return self.help_text(super()._get_help_string(action))

    HelpTextFormatter.__qualname__ = "HelpTextFormatter"
    return HelpTextFormatter


# zoo.nn imports this module for AfterConversion and imports no Lightning, so the two classes built on Lightning's
# and jsonargparse's are made when first asked for (``from zoo.compat import CLIHooks``)
_LAZY = {"CLIHooks": _cli_hooks, "HelpTextFormatter": _help_text_formatter}


@functools.cache
def __getattr__(name: str):
    if name in _LAZY:
        return _LAZY[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
