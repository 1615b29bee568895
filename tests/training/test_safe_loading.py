"""Checkpoints load without unpickling code: a payload checkpoint (a pickled object whose ``__reduce__`` runs a
shell command creating a marker file) given to every path that reads checkpoints runs nothing and is refused with
the file, the offending global, the converter and the opt-in named; zoo's own checkpoints load weights-only; the
converter turns an older checkpoint's Python objects into plain data that resumes like the original."""

import functools
import io
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT, callback, fit, losses
from zoo.training import AtomicCheckpointIO, newest_good_checkpoint, read_checkpoint
from zoo.training.checkpoints import UntrustedCheckpointError

REFUSAL = r"was refused: it holds pickled Python objects \((posix|os)\.system"


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def payload(tmp_path, trained):
    """A checkpoint that looks like zoo's (it is the trained one) plus the payload among its hyperparameters."""
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    marker = tmp_path / "marker"
    checkpoint["hyper_parameters"]["compile"] = Payload(marker)
    path = tmp_path / "payload.ckpt"
    torch.save(checkpoint, path)
    yield path, marker
    assert not marker.exists(), "the payload ran"


def refused(err: BaseException, path: Path) -> None:
    message = str(err)
    assert f"checkpoint {path} was refused" in message
    assert "system" in message  # the offending global, from torch's scan
    assert f"python -m zoo checkpoint convert {path} NEW.ckpt" in message
    assert "--trust-checkpoint" in message and "ZOO_TRUST_CHECKPOINTS=1" in message


def test_the_payload_is_real(payload):
    """The fixture's file does run its command when unpickled in full: the refusals below are what stop it."""
    path, marker = payload
    read_checkpoint(path, trust=True)
    assert marker.exists()
    marker.unlink()


def library_readers(path: Path) -> dict:
    """Every library function that reads a checkpoint file, by name, each a call reading ``path``."""
    from zoo.data.tokenizer import CheckpointTokenizer, tokenizer_from_checkpoint
    from zoo.eval.checkpoint import load_model
    from zoo.interop.export import export
    from zoo.objectives import LanguageModel
    from zoo.training.loading import load_checkpoint

    return {
        "read_checkpoint": lambda: read_checkpoint(path),
        "load_checkpoint (generate, eval, export)": lambda: load_checkpoint(path),
        "AtomicCheckpointIO (the trainer's --ckpt_path read)": lambda: AtomicCheckpointIO().load_checkpoint(path),
        "LanguageModel.from_checkpoint": lambda: LanguageModel.from_checkpoint(str(path)),
        "tokenizer_from_checkpoint": lambda: tokenizer_from_checkpoint(path),
        "CheckpointTokenizer": lambda: CheckpointTokenizer(path=str(path)).load(lambda: iter(()), ""),
        "eval load_model": lambda: load_model(str(path), device="cpu"),
        "export": lambda: export(str(path), str(path.parent / "out")),
    }


def test_library_readers_refuse_the_payload(payload):
    path, marker = payload
    for name, read in library_readers(path).items():
        with pytest.raises(UntrustedCheckpointError) as err:
            read()
        refused(err.value, path)
        assert not marker.exists(), name


def test_init_from_refuses_the_payload(payload):
    from tests.helpers import tiny_backbone
    from zoo.objectives import CausalLM

    path, _ = payload
    model = CausalLM(backbone=tiny_backbone(vocab_size=300), init_from=str(path))
    with pytest.raises(UntrustedCheckpointError) as err:
        model.load_backbone(model.init_from)
    refused(err.value, path)


def test_last_skips_the_payload(payload, trained, tmp_path):
    path, _ = payload
    folder = tmp_path / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(path, folder / "last.ckpt")
    with pytest.raises(ValueError, match="no checkpoint under .* reads"), pytest.warns(UserWarning, match=REFUSAL):
        newest_good_checkpoint([folder])


@pytest.mark.parametrize("command", ["eval", "generate", "export"])
def test_subcommands_refuse_the_payload(payload, command, capsys):
    from zoo.cli import main

    path, _ = payload
    argv = {"eval": ["--tasks", "arc_easy"], "generate": ["--prompt", "x"], "export": ["--out", str(path.parent / "o")]}
    with pytest.raises(SystemExit) as exit_:
        main([command, "--ckpt", str(path), *argv[command]])
    assert exit_.value.code == 2
    refused(capsys.readouterr().err.replace("\n", " "), path)


def test_fit_refuses_the_payload_as_ckpt_path_and_init_from(payload, cache, tmp_path, monkeypatch):
    path, _ = payload
    with pytest.raises(UntrustedCheckpointError) as err:
        fit(tmp_path / "a", cache, "--trainer.max_steps", "1", "--ckpt_path", str(path), monkeypatch=monkeypatch)
    refused(err.value, path)
    with pytest.raises(UntrustedCheckpointError) as err:
        fit(tmp_path / "b", cache, "--trainer.max_steps", "1", "--model.init_args.init_from", str(path),
            monkeypatch=monkeypatch)  # fmt: skip
    refused(err.value, path)


def test_zoo_checkpoints_load_weights_only(trained):
    """What every zoo checkpoint holds (hyperparameters, loop and data position, random state, tokenizer) is plain
    data: torch's scan finds no global outside its weights-only allowlist."""
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(trained)) == []
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    assert isinstance(checkpoint["hyper_parameters"]["_class_path"], str)
    assert isinstance(checkpoint["hyper_parameters"]["optimizer"], dict)
    assert isinstance(checkpoint["callbacks"]["RandomState"]["numpy"]["keys"], torch.Tensor)
    assert isinstance(checkpoint["StdlibCorpus"]["tokenizer"], str)


# ---- an older checkpoint: refused, trusted on request, converted once -------------------------------------------


def old_style(checkpoint: dict, *, hyperparameters: bool = True) -> dict:
    """``checkpoint`` with Python objects where zoo now writes plain data: NumPy's RNG state as its own tuple, the
    epoch a NumPy scalar, and with ``hyperparameters`` the optimizer a functools.partial and the backbone config a
    Namespace (as save_hyperparameters records a model built in Python)."""
    old = {**checkpoint, "hyper_parameters": dict(checkpoint["hyper_parameters"])}
    hp = old["hyper_parameters"]
    if hyperparameters:
        hp["optimizer"] = functools.partial(torch.optim.AdamW, **hp["optimizer"]["init_args"])
        hp["backbone"] = Namespace(**hp["backbone"])
    rng = dict(checkpoint["callbacks"]["RandomState"])
    n = rng["numpy"]
    rng["numpy"] = (n["kind"], n["keys"].numpy().astype(np.uint32), np.int64(n["pos"]), n["has_gauss"], n["gauss"])
    old["callbacks"] = {**checkpoint["callbacks"], "RandomState": rng}
    old["epoch"] = np.int64(checkpoint["epoch"])
    return old


def test_an_older_checkpoint_is_refused_trusted_on_request_and_converted(trained, tmp_path, cache, monkeypatch, capsys):
    from zoo.cli import main
    from zoo.objectives import LanguageModel

    plain = torch.load(trained, map_location="cpu", weights_only=True)
    old, new = tmp_path / "old.ckpt", tmp_path / "new.ckpt"
    torch.save(old_style(plain), old)
    with pytest.raises(UntrustedCheckpointError, match=r"functools\.partial"):
        read_checkpoint(old)
    monkeypatch.setenv("ZOO_TRUST_CHECKPOINTS", "1")  # the opt-in loads it as it is
    assert read_checkpoint(old)["hyper_parameters"]["optimizer"].func is torch.optim.AdamW
    monkeypatch.delenv("ZOO_TRUST_CHECKPOINTS")
    assert read_checkpoint(old, trust=True)["epoch"] == plain["epoch"]

    main(["checkpoint", "convert", str(old), str(new), "--i-trust-this-file"])
    out = capsys.readouterr().out
    assert "hyper_parameters/optimizer: functools.partial -> dict" in out and "numpy RNG tuple -> dict" in out
    converted = torch.load(new, map_location="cpu", weights_only=True)  # the round trip: plain again
    optimizer = converted["hyper_parameters"].pop("optimizer")
    assert optimizer == {"class_path": "torch.optim.adamw.AdamW", "init_args": plain["hyper_parameters"]["optimizer"]
                         ["init_args"]}  # fmt: skip
    expected = {**plain, "hyper_parameters": {k: v for k, v in plain["hyper_parameters"].items() if k != "optimizer"}}
    assert_same(converted, expected)
    assert type(LanguageModel.from_checkpoint(str(new))).__name__ == "CausalLM"

    # resuming from the converted file continues exactly as from the original
    for name, source in (("original", trained), ("converted", new)):
        fit(tmp_path / name, cache, "--trainer.max_steps", "3", "--ckpt_path", str(source),
            callback("LossLog", path=str(tmp_path / f"{name}.txt")), monkeypatch=monkeypatch)  # fmt: skip
    assert losses(tmp_path / "converted.txt") == losses(tmp_path / "original.txt")
    assert sorted(losses(tmp_path / "converted.txt")) == [3]


def test_an_older_checkpoint_loads_as_it_is_with_the_opt_in(trained, tmp_path, cache, monkeypatch, capsys):
    """--trust-checkpoint on a subcommand, --trust_checkpoint true on fit: the old file is unpickled and used."""
    from zoo.cli import main

    old = tmp_path / "old.ckpt"  # Lightning rebuilds the objective from its hyperparameters: those stay plain here
    torch.save(old_style(torch.load(trained, map_location="cpu", weights_only=True), hyperparameters=False), old)
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(old), "--out", str(tmp_path / "refused")])
    assert "was refused" in capsys.readouterr().err
    main(["export", "--ckpt", str(old), "--out", str(tmp_path / "hf"), "--trust-checkpoint"])
    assert (tmp_path / "hf" / "model.safetensors").is_file()

    monkeypatch.setenv("ZOO_TRUST_CHECKPOINTS", "")  # restored after the test: the flag sets it for the run
    cli = fit(tmp_path / "run", cache, "--trainer.max_steps", "3", "--ckpt_path", str(old), "--trust_checkpoint",
              "true", callback("LossLog", path=str(tmp_path / "old.txt")), monkeypatch=monkeypatch)  # fmt: skip
    assert cli.trainer.global_step == 3
    fit(tmp_path / "new", cache, "--trainer.max_steps", "3", "--ckpt_path", str(trained),
        callback("LossLog", path=str(tmp_path / "new.txt")), monkeypatch=monkeypatch)  # fmt: skip
    assert losses(tmp_path / "old.txt") == losses(tmp_path / "new.txt")  # the same state, RNG included


def assert_same(a, b, where=""):
    assert type(a) is type(b) or {type(a), type(b)} <= {list, tuple}, f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def test_convert_unpickles_only_with_the_explicit_flag(payload, tmp_path, capsys):
    """`checkpoint convert` runs the file's code by design: without --i-trust-this-file it reads nothing and says
    so in one line; with it, it says what it does before it does it."""
    from zoo.cli import main

    path, marker = payload
    new = tmp_path / "new.ckpt"
    with pytest.raises(SystemExit) as exit_:
        main(["checkpoint", "convert", str(path), str(new)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"converting {path} unpickles it in full" in err and "can run any code" in err
    assert "pass --i-trust-this-file" in err
    assert not marker.exists() and not new.exists()
    main(["checkpoint", "convert", str(path), str(new), "--i-trust-this-file"])  # the payload's command runs
    assert "unpickling" in capsys.readouterr().err and marker.exists() and new.exists()
    marker.unlink()


def test_convert_refuses_an_object_it_cannot_make_plain(tmp_path):
    from zoo.training.convert import convert_checkpoint

    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"buffer": io.BytesIO(b"x")}}, old)
    with pytest.raises(ValueError, match="cannot convert /hyper_parameters/buffer: a _io.BytesIO is not plain"):
        convert_checkpoint(old, tmp_path / "new.ckpt")
    assert not (tmp_path / "new.ckpt").exists()


def test_a_bare_pickle_payload_is_refused_as_not_a_checkpoint(tmp_path):
    import pickle

    from zoo.objectives import LanguageModel

    marker, path = tmp_path / "marker", tmp_path / "bare.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}, "x": Payload(marker)}))
    from zoo.training.loading import load_checkpoint

    for read in (lambda: read_checkpoint(path), lambda: LanguageModel.from_checkpoint(str(path)),
                 lambda: AtomicCheckpointIO().load_checkpoint(path), lambda: load_checkpoint(path)):  # fmt: skip
        with pytest.raises(ValueError) as err:
            read()
        message = str(err.value)
        assert f"checkpoint {path} is a bare pickle file (pickle.dump, not torch.save)" in message
        assert "mmap" not in message and "\n" not in message and "--i-trust-this-file" in message
    assert not marker.exists()


def test_a_legacy_format_file_and_a_directory_are_named(tmp_path, trained, cache, monkeypatch):
    """torch's pre-zip format: read whole (torch maps only zip archives) when it is plain data, named when it holds
    objects; a directory given as a checkpoint is named as one, with the checkpoint files inside it."""
    from zoo.objectives import LanguageModel
    from zoo.training.loading import load_checkpoint

    plain = torch.load(trained, map_location="cpu", weights_only=True)
    legacy, objects = tmp_path / "legacy.ckpt", tmp_path / "objects.ckpt"
    torch.save(plain, legacy, _use_new_zipfile_serialization=False)
    torch.save(old_style(plain), objects, _use_new_zipfile_serialization=False)
    assert read_checkpoint(legacy, mmap=True)["global_step"] == plain["global_step"]
    assert type(LanguageModel.from_checkpoint(str(legacy))).__name__ == "CausalLM"
    assert load_checkpoint(legacy).step == plain["global_step"]
    with pytest.raises(ValueError) as err:
        read_checkpoint(objects, mmap=True)
    assert f"checkpoint {objects} is in torch's legacy format" in str(err.value) and "mmap" not in str(err.value)

    folder = trained.parent
    readers = {"read_checkpoint": lambda: read_checkpoint(folder), "from_checkpoint":
               lambda: LanguageModel.from_checkpoint(str(folder)), "checkpoint_io":
               lambda: AtomicCheckpointIO().load_checkpoint(folder), "load_checkpoint": lambda: load_checkpoint(folder),
               "fit --ckpt_path": lambda: fit(
                   tmp_path / "run", cache, "--trainer.max_steps", "3", "--ckpt_path", str(folder),
                   monkeypatch=monkeypatch)}  # fmt: skip
    for name, read in readers.items():
        with pytest.raises(ValueError) as err:
            read()
        message = str(err.value)
        assert message.startswith(f"checkpoint {folder} is a directory, not a checkpoint file: give one of the "
                                  "checkpoint files inside it: "), name  # fmt: skip
        assert str(folder / "last.ckpt") in message and "\n" not in message, name


def test_a_model_built_in_python_keeps_only_plain_hyperparameters(tmp_path):
    """save_hyperparameters records every __init__ argument; objects (the backbone, the optimizer factory, a
    conversion schedule) are dropped so that the checkpoint still loads weights-only."""
    from tests.helpers import tiny_backbone
    from zoo.objectives import MaskedDiffusionLM
    from zoo.objectives.conversion import AttentionAnnealing

    model = MaskedDiffusionLM(backbone=tiny_backbone(vocab_size=300), mask_id=299,
                              conversion=AttentionAnnealing(anneal_steps=4), optimizer=functools.partial(
                                  torch.optim.SGD, lr=0.1))  # fmt: skip
    assert "conversion" not in model.hparams and "optimizer" not in model.hparams
    assert model.hparams["mask_id"] == 299
    path = tmp_path / "h.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []


# ---- class paths: nothing is imported on a file's say-so ---------------------------------------------------------

EVILMOD = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n\nclass Norm:\n    pass\n"
ZEN = "Beautiful is better than ugly"


def naming(checkpoint: dict, case: str) -> dict:
    """``checkpoint`` with one class path replaced: the objective's (``this.CausalLM``: importing ``this`` prints
    the Zen of Python), a nested block's (``evilmod.Norm``, a module in the working directory), or the optimizer's
    (a callable of the standard library)."""
    hp = checkpoint["hyper_parameters"]
    if case == "this":
        hp["_class_path"] = "this.CausalLM"
    elif case == "evilmod":
        hp["backbone"]["init_args"]["norm"] = {"class_path": "evilmod.Norm"}
    else:
        hp["optimizer"] = {"class_path": case, "init_args": {}}
    return checkpoint


CASES = ["this", "evilmod", "subprocess.Popen", "os._exit", "builtins.print"]


@pytest.fixture(params=CASES)
def foreign(request, tmp_path, trained, monkeypatch):
    """The trained checkpoint naming a foreign class, with ``evilmod.py`` in the working directory (and on
    ``sys.path``, as a script's directory is) writing a marker when imported."""
    marker = tmp_path / "marker"
    (tmp_path / "evilmod.py").write_text(EVILMOD.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "foreign.ckpt"
    torch.save(naming(torch.load(trained, map_location="cpu", weights_only=True), request.param), path)
    yield path, request.param, marker
    assert not marker.exists(), "evilmod was imported"
    assert "this" not in sys.modules or request.param != "this", "`this` was imported"


def named(message: str, path: Path, case: str) -> None:
    assert "\n" not in message, message
    shown = "evilmod.Norm" if case == "evilmod" else "this.CausalLM" if case == "this" else case
    assert f"checkpoint {path} names class_path {shown!r}" in message and "not a zoo or torch class" in message
    assert "--trust-checkpoint" in message


def test_library_readers_refuse_a_foreign_class_path(foreign, capfd):
    from zoo.training import ForeignClassPathError

    path, case, marker = foreign
    for name, read in library_readers(path).items():
        with pytest.raises(ForeignClassPathError) as err:
            read()
        named(str(err.value), path, case)
        assert not marker.exists(), name
    assert ZEN not in capfd.readouterr().out
    # the opt-in reads the file (read_checkpoint imports nothing itself)
    assert read_checkpoint(path, trust=True)["hyper_parameters"]


def test_init_from_and_fit_refuse_a_foreign_class_path(foreign, cache, tmp_path, monkeypatch):
    from tests.helpers import tiny_backbone
    from zoo.objectives import CausalLM
    from zoo.training import ForeignClassPathError

    path, case, _ = foreign
    model = CausalLM(backbone=tiny_backbone(vocab_size=300), init_from=str(path))
    with pytest.raises(ForeignClassPathError) as err:
        model.load_backbone(model.init_from)
    named(str(err.value), path, case)
    if case in ("this", "evilmod"):  # fit runs cost seconds: the objective's and a nested block's class path
        monkeypatch.chdir(ROOT)  # the run's config paths (evilmod stays importable: its folder is on sys.path)
        with pytest.raises(ForeignClassPathError) as err:
            fit(tmp_path / "run", cache, "--trainer.max_steps", "3", "--ckpt_path", str(path), monkeypatch=monkeypatch)
        named(str(err.value), path, case)


@pytest.mark.parametrize(
    ("foreign", "command"),
    [*((case, "generate") for case in CASES), ("this", "eval"), ("evilmod", "eval"), ("this", "export"),
     ("evilmod", "export")],
    indirect=["foreign"],
)  # fmt: skip
def test_subcommands_refuse_a_foreign_class_path_in_one_line(foreign, command):
    """`python -m zoo generate --ckpt` (every case), eval and export: one line, exit status 2, nothing imported."""
    path, case, marker = foreign
    argv = {"eval": ["--tasks", "arc_easy"], "generate": ["--prompt", "x"], "export": ["--out", str(path.parent / "o")]}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(path.parent), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "zoo", command, "--ckpt", str(path), *argv[command]],
                         cwd=path.parent, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    named(line, path, case)
    assert ZEN not in out.stdout and not marker.exists()


def test_zoo_checkpoints_name_only_allowed_classes(trained):
    from zoo.training.class_paths import INSTANTIATORS, allowed, check_class_paths, class_paths

    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    found = dict(class_paths(checkpoint))
    assert {"/hyper_parameters/_class_path", "/hyper_parameters/backbone/class_path"} <= set(found)
    assert found.pop("/hyper_parameters/_instantiator") in INSTANTIATORS  # Lightning's, checked by Lightning too
    assert all(allowed(path) for path in found.values()), found
    check_class_paths(checkpoint, source="trained")
    for path in ("torch.optim.AdamW", "torch.optim.lr_scheduler.LambdaLR", "torch.nn.GELU", "zoo.nn.RMSNorm"):
        assert allowed(path), path
    for path in ("this.CausalLM", "os.system", "torch.load", "torch.nn.functional.gelu", "zoo.__main__.main",
                 "zoo.eval.sandbox.subprocess.Popen", "zoo.training.checkpoints.torch", "zoo.nope.Class"):  # fmt: skip
        assert not allowed(path), path


def test_fit_from_an_explicit_checkpoint_of_another_shape_lists_the_shapes(trained, cache, tmp_path, monkeypatch):
    """As `--ckpt_path last`: the config builds the model, and a checkpoint that does not fit it is refused with the
    differing parameters (before, the checkpoint's own hyperparameters replaced the config's model silently)."""
    from zoo.training import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError) as err:
        fit(tmp_path, cache, "--model.backbone.dim", "64", "--trainer.max_steps", "3", "--ckpt_path", str(trained),
            monkeypatch=monkeypatch)  # fmt: skip
    message = str(err.value)
    assert f"checkpoint {trained} does not fit this model" in message
    assert "backbone.embed.weight: checkpoint (300, 32) vs model (300, 64)" in message
    assert "the architecture differs" in message


def test_a_plain_dotted_string_in_the_hyperparameters_is_checked_too(tmp_path, monkeypatch):
    """jsonargparse reads a string given for a class or callable argument as an import path: among the model's
    hyperparameters one that Python could import is checked like a class path; file names are not import paths,
    and the data module's settings (which no zoo command rebuilds) are checked by their class paths only."""
    from zoo.training import ForeignClassPathError
    from zoo.training.class_paths import check_class_paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "evilmod.py").write_text(EVILMOD.format(marker=str(tmp_path / "marker")))
    for value in ("subprocess.Popen", "evilmod.Norm", "os.system"):
        with pytest.raises(ForeignClassPathError, match=f"names class_path '{value}' \\(at hyper_parameters/opt"):
            check_class_paths({"hyper_parameters": {"optimizer": value}}, source="checkpoint c")
    check_class_paths({"hyper_parameters": {"init_from": "last.ckpt", "name": "gpt2.small"},
                       "datamodule_hyper_parameters": {"path": "test.jsonl"}}, source="checkpoint c")  # fmt: skip
    assert not (tmp_path / "marker").exists()
