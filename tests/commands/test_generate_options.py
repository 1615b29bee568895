"""``zoo generate``'s options come from the sampler families' options classes: ``--help`` lists each family's, with
the text, type and default its class gives, under the flags the command always had."""

import dataclasses
import subprocess
import sys

import docstring_parser
import pytest

from zoo.commands.generate import parser
from zoo.objectives.description import flag
from zoo.objectives.samplers import FAMILIES


def test_python_m_zoo_generate_help_lists_each_sampler_familys_options_from_its_options_class():
    result = subprocess.run([sys.executable, "-m", "zoo", "generate", "--help"], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # the help's line wrapping undone
    assert [f.name for f in FAMILIES] == ["autoregressive", "masked-diffusion"]
    listed = set()
    for family in FAMILIES:
        doc = docstring_parser.parse(family.options.__doc__)
        assert f"{doc.short_description}:" in text  # the family's group, titled by its class
        described = {param.arg_name: " ".join(param.description.split()) for param in doc.params}
        for field in dataclasses.fields(family.options):
            assert described.get(field.name), f"{family.options.__name__}.{field.name} has no documentation"
            assert f"{flag(field.name)} " in text and f"--{field.name} " in text  # both spellings
            if field.name in listed:  # an option of two families (compile) is listed once, with the first family's
                continue  # text (a checkpoint's --help gives its own)
            listed.add(field.name)
            default = "null" if field.default is None else field.default
            assert f"{described[field.name]} (type: " in text and f"default: {default})" in text
    for old in ("--max-new-tokens", "--top-k", "--top-p", "--repetition-penalty", "--no-repeat-ngram-size",
                "--gen-length", "--block-length", "--steps", "--threshold", "--cache", "--refresh", "--remasking",
                "--stream", "--stop", "--prompt", "--format", "--input", "--precision", "--trust-checkpoint",
                "--device", "--seed", "--temperature"):  # fmt: skip
        assert f"{old} " in text, f"{old} is no longer an option of zoo generate"


def test_a_checkpoints_help_gives_its_familys_own_text_of_a_shared_option():
    from zoo.commands.generate import parser
    from zoo.objectives.samplers import MASKED_DIFFUSION

    text = " ".join(parser([MASKED_DIFFUSION]).format_help().split())
    assert "run each pass as a torch.compile'd graph" in text and "static KV cache" not in text


def test_families_that_share_an_option_must_agree_on_it():
    from dataclasses import dataclass
    from typing import Literal

    from zoo.commands.generate import parser
    from zoo.objectives.description import SamplerFamily

    @dataclass(frozen=True)
    class Other:
        """Another family

        Args:
            compile: compiled or not
        """

        compile: Literal["yes", "no"] = "no"

    other = SamplerFamily(name="other", options=Other, sample=lambda *a, **k: None, length="compile")
    with pytest.raises(TypeError, match="option 'compile' of sampler family other"):
        parser([*FAMILIES, other])


@pytest.mark.parametrize(("spelling", "value"), [("--top-p", 0.5), ("--top_p", 0.5), ("--cache", "dual"),
                                                 ("--gen-length", 8), ("--no_repeat_ngram_size", 3)])  # fmt: skip
def test_both_spellings_of_an_option_set_it_with_its_type(spelling, value):
    args = parser().parse_args(["--ckpt", "x.ckpt", "--prompt", "a", "--prompt", "b", spelling, str(value)])
    assert args[spelling.lstrip("-").replace("-", "_")] == value and args.prompt == ["a", "b"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--cache", "exact"], "cache=exact: choose from 'none', 'prefix', 'dual'"),
    (["--top-k", "1.5"], "top_k=1.5: expected a value of type int"),
    (["--top-p", "nan"], "top_p=nan must be a finite number"),
    (["--format", "chatml"], "invalid choice: 'chatml'"),
])  # fmt: skip
def test_a_bad_value_is_one_sentence_naming_the_option(argv, message, capsys):
    from zoo.commands.generate import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--prompt", "x", *argv])  # no --ckpt: checked by the parser of zoo's own families
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
