"""``config.yaml`` and ``--print_config`` record the precision a run actually uses: the automatic choice rather
than ``null``, and ``bf16-mixed`` for ``16-mixed`` on a CPU (which Lightning runs as bf16 autocast), each with its
note."""

import sys

import pytest
import yaml

from tests.helpers import TINY, TINY_CHAIN
from zoo.cli import main
from zoo.commands.fit import ZooCLI
from zoo.training import precision as zp


def test_16_mixed_on_a_cpu_is_recorded_as_the_bf16_it_runs(monkeypatch):
    monkeypatch.setattr(zp, "cpu_bf16_units", lambda: "AMX")
    cli = ZooCLI(args=[*TINY, "--trainer.accelerator", "cpu", "--trainer.precision", "16-mixed"], run=False)
    assert cli.config.trainer.precision == "bf16-mixed" and cli.trainer.precision == "bf16-mixed"
    (note,) = cli.save_config_kwargs["notes"]
    assert note.startswith("trainer.precision=bf16-mixed, recorded for the 16-mixed given")


@pytest.mark.parametrize("given", [[], ["--trainer.precision", "16-mixed"]], ids=["unset", "16-mixed"])
def test_print_config_shows_the_precision_used(monkeypatch, capsys, given):
    monkeypatch.setattr(sys, "argv", ["zoo"])
    with pytest.raises(SystemExit):
        ZooCLI(args=[*TINY, "--trainer.accelerator", "cpu", *given, "--print_config"], run=False)
    out = capsys.readouterr().out
    expected = "bf16-mixed" if given else zp.choose_precision("cpu").precision
    assert yaml.safe_load(out)["trainer"]["precision"] == expected  # not null, not 16-mixed
    assert out.startswith(f"# trainer.precision={expected}, ")  # with the reason


def test_config_yaml_of_a_run_records_the_precision_used(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    args = [a if a != "32-true" else "16-mixed" for a in TINY_CHAIN]  # the tiny run, at 16-mixed
    main(["fit", *args, "--trainer.accelerator", "cpu", "--trainer.max_steps", "2", "--trainer.val_check_interval",
          "2", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    text = (tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert yaml.safe_load(text)["trainer"]["precision"] == "bf16-mixed"
    assert text.startswith("# trainer.precision=bf16-mixed, recorded for the 16-mixed given")
