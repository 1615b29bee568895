"""Every user error of ``python -m zoo`` is one line on stderr (``zoo <command>: ...``) naming the field, the value
and the fix, with exit status 2 and no traceback; ``--verbose`` or ``ZOO_TRACEBACK=1`` shows the traceback. Each
case runs the real command in a subprocess, offline (``HF_HUB_OFFLINE=1``, an empty hub cache)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[2]


def zoo(*args: str, tmp: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    environment = {"ZOO_CACHE": str(tmp / "cache"), "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1",
                   "PATH": "/usr/bin:/bin", "HOME": str(tmp), "OMP_NUM_THREADS": "1", **(env or {})}  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "zoo", *args], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    return result, time.perf_counter() - start


def one_error_line(result: subprocess.CompletedProcess, command: str = "fit", *, only_line: bool = True) -> str:
    """The error line, checked: exit status 2, no traceback, one ``zoo <command>:`` line and it is stderr's last
    (``only_line``: stderr's only line, for errors found before the run starts)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"zoo {command}: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    if only_line:
        assert lines == errors, result.stderr[-3000:]
    return errors[0]


def write(tmp: Path, name: str, config: dict) -> str:
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def typo_config(tmp: Path) -> list[str]:
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config["trainer"]["val_check_intervall"] = config["trainer"].pop("val_check_interval")
    return ["--config", write(tmp, "typo.yaml", config)]


def hub_data(tmp: Path) -> list[str]:
    data = {"class_path": "zoo.data.Mixture", "init_args": {
        "sources": [{"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT"}],
        "tokenizer": {"class_path": "zoo.data.TrainedBPE", "init_args": {"vocab_size": 300}},
        "seq_len": 32, "batch_size": 2}}  # fmt: skip
    return [*TINY, "--config", write(tmp, "hub.yaml", {"data": data})]


# (case, arguments of `zoo fit` given the test's folder, what the line must name, whether it comes before the run)
CASES = [
    ("yaml-key-typo", typo_config,
     ["trainer.val_check_intervall", "is not a setting of trainer", "did you mean trainer.val_check_interval?"], True),
    ("class-path-typo", lambda tmp: [*TINY, "--model.backbone.block.init_args.ffn.class_path", "zoo.nn.SwiGlu"],
     ["model.backbone.block.ffn", "zoo.nn.SwiGlu does not exist", "did you mean zoo.nn.SwiGLU?"], True),
    ("init-arg-typo", lambda tmp: [*TINY, "--model.backbone.dimm", "32"],
     ["model.backbone.dimm", "is not an argument of zoo.nn.Transformer", "did you mean dim?"], True),
    ("missing-config", lambda tmp: ["--config", str(tmp / "nope.yaml")],
     ["--config", "nope.yaml does not exist", "give the path of a YAML config file"], True),
    ("abbreviated-option", lambda tmp: [*TINY, "--trainer.max_step", "10"],
     ["--trainer.max_step is not an option", "never abbreviated", "did you mean --trainer.max_steps?"], True),
    ("bad-value", lambda tmp: [*TINY, "--data.seq_len", "abc"], ["data.seq_len=abc", "type int"], True),
    ("missing-ckpt-path", lambda tmp: [*TINY, "--ckpt_path", str(tmp / "missing.ckpt")],
     ["--ckpt_path", "missing.ckpt is not a file", "`last`"], True),
    ("warmup-longer-than-run", lambda tmp: [*TINY, "--model.schedule.init_args.warmup_steps", "1500"],
     ["warmup_steps=1500", "not below the run's 3 steps", "lower warmup_steps or raise trainer.max_steps"], False),
    ("hub-data-offline", hub_data,
     ["path='HuggingFaceFW/fineweb-edu'", "could not be opened", "point the source at them"], False),
    ("hub-tokenizer-offline",
     lambda tmp: [*TINY, "--data.tokenizer", "{class_path: zoo.data.PretrainedTokenizer, init_args: {path: gpt2}}"],
     ["tokenizer path='gpt2'", "cannot reach", "--data.tokenizer.init_args.path tokenizers/gpt2"], False),
]


@pytest.mark.parametrize(("args", "names", "before_run"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_fit_error_is_one_line_naming_field_value_and_fix(tmp_path, args, names, before_run):
    result, seconds = zoo("fit", *args(tmp_path), "--trainer.default_root_dir", str(tmp_path / "run"), tmp=tmp_path)
    line = one_error_line(result, only_line=before_run)
    for name in names:
        assert name in line, line
    assert seconds < 120  # in seconds, not after a hub client's retries
    assert not list((tmp_path / "run").glob("*/version_*"))  # nothing left of a run that never stepped


def test_an_empty_data_file_is_named_and_its_fix_works(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    data = {"class_path": "zoo.data.Mixture", "init_args": {
        "sources": [{"path": "text", "data_files": str(empty)}],
        "tokenizer": {"class_path": "zoo.data.TrainedBPE", "init_args": {"vocab_size": 300}},
        "seq_len": 32, "batch_size": 2}}  # fmt: skip
    args = ["fit", *TINY, "--config", write(tmp_path, "text.yaml", {"data": data}),
            "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    line = one_error_line(zoo(*args, tmp=tmp_path)[0], only_line=False)
    assert f"data_files={empty} is empty" in line and "put documents in it" in line
    lines = [f"def function_{i}(x):\n    return x + {i}\n" for i in range(1500)]  # the fix: documents in the file
    empty.write_text("".join(lines))
    result, _ = zoo(*args, tmp=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_verbose_and_the_environment_variable_show_the_traceback(tmp_path):
    args = ["fit", "--config", str(tmp_path / "nope.yaml")]
    for extra, env in ((["--verbose"], None), ([], {"ZOO_TRACEBACK": "1"})):
        result, _ = zoo(*args, *extra, tmp=tmp_path, env=env)
        assert result.returncode != 0 and "Traceback" in result.stderr and "nope.yaml does not exist" in result.stderr


@pytest.mark.parametrize("command", ["generate", "export", "eval"])
def test_other_commands_report_through_the_same_path(tmp_path, command):
    extra = {"generate": ["--prompt", "x"], "export": ["--out", str(tmp_path / "out")], "eval": ["--tasks", "piqa"]}
    result, _ = zoo(command, "--ckpt", str(tmp_path / "missing.ckpt"), *extra[command], tmp=tmp_path)
    line = one_error_line(result, command)
    assert "missing.ckpt" in line


def test_a_blocks_help_lists_zoos_classes_not_every_torch_module(monkeypatch, capsys):
    from zoo.commands.fit import ZooCLI

    monkeypatch.setattr(sys, "argv", ["zoo"])
    with pytest.raises(SystemExit):
        ZooCLI(args=[*TINY, "--model.backbone.block.help", "zoo.nn.PreNormBlock"], run=False)
    out = capsys.readouterr().out
    assert "zoo.nn.SwiGLU" in out and "zoo.nn.GroupedQueryAttention" in out and "--block.ffn" in out
    assert "torch.nn.Bilinear" not in out and len(out.splitlines()) < 200  # it was 2,319 lines
