"""The automatic precision choice (``trainer.precision`` unset), with the CPU's bf16 units faked both ways, its
note, and the refusal of what a device cannot run."""

from types import SimpleNamespace

import pytest
import torch

from tests.helpers import TINY
from zoo.commands.fit import ZooCLI
from zoo.training import precision as zp


@pytest.mark.parametrize(
    ("units", "expected"), [("AVX512-BF16", "bf16-mixed"), ("AMX", "bf16-mixed"), (None, "32-true")]
)
def test_cpu_choice_follows_the_bf16_units(monkeypatch, units, expected):
    monkeypatch.setattr(zp, "cpu_bf16_units", lambda: units)
    choice = zp.choose_precision("cpu")
    assert choice.precision == expected
    assert (units or "no bf16 units") in choice.reason
    assert choice.note().startswith(f"trainer.precision={expected}, chosen automatically")


def test_this_machine_gets_the_choice_its_cpu_supports():
    units = zp.cpu_bf16_units()
    assert zp.choose_precision("cpu").precision == ("bf16-mixed" if units else "32-true")
    assert zp.choose_precision("auto").precision == zp.choose_precision("cpu").precision  # no GPU in tests


def test_gpu_choice_follows_the_bf16_units(monkeypatch):
    monkeypatch.setattr(zp, "device_kind", lambda accelerator: "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(zp, "gpu_bf16_units", lambda: False)
    assert zp.choose_precision("gpu").precision == "32-true"
    monkeypatch.setattr(zp, "gpu_bf16_units", lambda: True)
    assert zp.choose_precision("gpu").precision == "bf16-mixed"


def _cli(monkeypatch, units, *flags) -> ZooCLI:
    monkeypatch.setattr(zp, "cpu_bf16_units", lambda: units)
    return ZooCLI(args=[*TINY, "--trainer.accelerator", "cpu", *flags], run=False)  # parsed and built, not run


@pytest.mark.parametrize(("units", "expected"), [("AMX", "bf16-mixed"), (None, "32-true")])
def test_unset_precision_is_chosen_and_noted(monkeypatch, units, expected):
    cli = _cli(monkeypatch, units)
    assert cli.config.trainer.precision == expected  # what config.yaml records
    assert cli.trainer.precision == expected
    (note,) = cli.save_config_kwargs["notes"]  # written at the top of config.yaml
    assert note.startswith(f"trainer.precision={expected}, chosen automatically")


@pytest.mark.parametrize(("units", "expected"), [("AMX", "bf16-mixed"), (None, "32-true")])
def test_the_cli_installs_zoos_precision_plugin(monkeypatch, units, expected):
    from lightning.pytorch.plugins.precision import Precision

    plugin = _cli(monkeypatch, units).trainer.precision_plugin
    # bf16 autocast runs in zoo's plugin (clipping fused optimizers), 32-true in Lightning's own
    assert type(plugin) is (zp.MixedPrecision if expected == "bf16-mixed" else Precision)


@pytest.mark.parametrize(("units", "forced"), [("AMX", "32-true"), (None, "bf16-mixed")])
def test_a_given_precision_is_kept(monkeypatch, units, forced):
    cli = _cli(monkeypatch, units, "--trainer.precision", forced)
    assert cli.trainer.precision == forced
    assert not cli.save_config_kwargs.get("notes")


def _trainer(precision: str, device: str, strategy: str = "SingleDeviceStrategy", clip: float | None = 1.0):
    from lightning.pytorch import strategies
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    # a strategy of the named Lightning class (checked by type), with nothing set up but its device
    strategy_class = type(strategy, (getattr(strategies, strategy),), {"root_device": torch.device(device)})
    accelerator = CUDAAccelerator() if device == "cuda" else CPUAccelerator()
    return SimpleNamespace(precision=precision, strategy=strategy_class(), accelerator=accelerator,
                           gradient_clip_val=clip, gradient_clip_algorithm=None)  # fmt: skip


def test_bf16_on_a_gpu_without_bf16_units_is_refused_naming_16_mixed(monkeypatch):
    monkeypatch.setattr(zp, "gpu_bf16_units", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(ValueError, match=r"trainer.precision=bf16-mixed: this GPU \(Tesla T4\).*16-mixed"):
        zp.check_precision(_trainer("bf16-mixed", "cuda"))
    zp.check_precision(_trainer("16-mixed", "cuda"))  # the alternative it names passes
    monkeypatch.setattr(zp, "gpu_bf16_units", lambda: True)
    zp.check_precision(_trainer("bf16-mixed", "cuda"))


def test_bf16_on_a_cpu_without_units_runs_with_a_warning(monkeypatch):
    monkeypatch.setattr(zp, "cpu_bf16_units", lambda: None)
    with pytest.warns(UserWarning, match="without bf16 units.*32-true"):
        zp.check_precision(_trainer("bf16-mixed", "cpu"))


def test_fsdp_with_norm_clipping_is_refused_before_training():
    with pytest.raises(ValueError, match=r"gradient_clip_val=1.0 with FSDPStrategy.*gradient_clip_algorithm value"):
        zp.check_precision(_trainer("32-true", "cpu", strategy="FSDPStrategy"))
    zp.check_precision(_trainer("32-true", "cpu", strategy="FSDPStrategy", clip=None))


def test_installing_the_plugin_refuses_before_training_only(monkeypatch, recwarn):
    import lightning as L

    monkeypatch.setattr(zp, "cpu_bf16_units", lambda: None)
    settings = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    zp.install_precision(L.Trainer(precision="bf16-mixed", **settings), training=False)  # zoo validate: no check
    assert not [w for w in recwarn if "without bf16 units" in str(w.message)]
    trainer = L.Trainer(precision="bf16-mixed", **settings)
    with pytest.warns(UserWarning, match="without bf16 units.*32-true"):
        zp.install_precision(trainer)  # zoo fit
    assert type(trainer.precision_plugin) is zp.MixedPrecision and trainer.precision == "bf16-mixed"
