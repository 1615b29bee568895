"""What users type and what files hold, refused in one line before any work: non-finite sampling parameters, an
export format whose extra is not installed."""

import sys

import pytest

from tests.helpers import tiny_backbone

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("options", "message"),
    [({"temperature": NAN}, "temperature=nan must be a finite number ≥ 0"),
     ({"temperature": INF}, "temperature=inf must be a finite number ≥ 0"),
     ({"temperature": 1.0, "top_p": NAN}, "top_p=nan must be a number in (0, 1]"),
     ({"temperature": 1.0, "repetition_penalty": NAN}, "repetition_penalty=nan must be a finite number > 0"),
     ({"temperature": 1.0, "repetition_penalty": INF}, "repetition_penalty=inf must be a finite number > 0")],
)  # fmt: skip
def test_non_finite_autoregressive_sampling_parameters_are_refused(options, message):
    from zoo.objectives import CausalLM

    model = CausalLM(backbone=tiny_backbone()).eval()
    with pytest.raises(ValueError) as err:
        model.sample([[1, 2]], max_new_tokens=4, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("options", "message"), [({"temperature": NAN}, "temperature=nan must be a finite"),
                                                  ({"threshold": NAN}, "threshold=nan must be in (0, 1]")])  # fmt: skip
def test_non_finite_diffusion_sampling_parameters_are_refused(options, message):
    from zoo.nn import GroupedQueryAttention
    from zoo.objectives import MaskedDiffusionLM

    backbone = tiny_backbone(attention=lambda d: GroupedQueryAttention(d, n_heads=4, causal=False))
    model = MaskedDiffusionLM(backbone=backbone, mask_id=63).eval()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        model.sample([[1, 2]], max_new_tokens=4, steps=4, **options)


@pytest.mark.parametrize("flag", [["--temperature", "nan"], ["--temperature", "1", "--top-p", "nan"],
                                  ["--temperature", "1", "--repetition-penalty", "inf"]])  # fmt: skip
def test_generate_refuses_non_finite_flags_in_one_line(trained, flag, capsys):
    from zoo.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--ckpt", str(trained), "--prompt", "def f(", *flag])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"={flag[-1]} must be" in err and "Traceback" not in err


def test_export_gguf_without_the_extra_names_the_install_line(tmp_path, monkeypatch, capsys):
    """Refused before the checkpoint is read (an empty file here) and before --out is made."""
    from zoo.cli import main

    monkeypatch.setitem(sys.modules, "gguf", None)  # as where the extra is not installed: `import gguf` fails
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "gguf"), "--format", "gguf"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert 'pip install -e ".[gguf]"' in err and "ModuleNotFoundError" not in err
    assert not (tmp_path / "gguf").exists()
