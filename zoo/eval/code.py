"""Code generation tasks (``humaneval``, ``mbpp``): sample completions, run each program against its tests in a
sandboxed subprocess, report the unbiased pass@k of Chen et al. (2021).

Prompts and programs follow the standard harnesses. HumanEval (openai/human-eval): the model continues the
problem's ``prompt``; the completion is cut at the first of :data:`HUMANEVAL_STOP`; the program is
``prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"``. MBPP (lm-evaluation-harness's ``mbpp``):
3-shot, the shots being tasks 2, 3 and 4 (the prompt split) written as :data:`MBPP_PROMPT` + their code +
``"\\n[DONE]"`` and joined by blank lines; the completion ends at ``[DONE]``; the program is the completion and
the asserts (the harness runs no ``test_setup_code``). The test split is task ids 11..510.

Programs run in the sandbox of :mod:`zoo.eval.sandbox`, several at a time; where bubblewrap cannot isolate them,
nothing runs unless the caller opts in (``unsafe_no_sandbox``).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zoo.eval.sandbox import require_sandbox, run_programs
from zoo.generation.sampling import cut_at_stop as truncate

HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_PROMPT = (
    "You are an expert Python programmer, and here is your task: {text} "
    "Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
)
MBPP_TEST_IDS = range(11, 511)
MBPP_SHOT_IDS = (2, 3, 4)  # the harness's fixed few-shot examples
HUB = {"humaneval": ("openai/openai_humaneval", None), "mbpp": ("google-research-datasets/mbpp", "full")}
LOCAL = {"humaneval": ("humaneval/HumanEval.jsonl.gz", "humaneval/HumanEval.jsonl"), "mbpp": ("mbpp/mbpp.jsonl",)}

def pass_at_k(*, n: int, c: int, k: int) -> float:
    """Unbiased pass@k of a problem with ``c`` correct among ``n`` samples: ``1 - C(n-c, k) / C(n, k)``, computed
    as ``1 - prod(1 - k / i for i in n-c+1..n)`` (Chen et al., 2021), which has no huge binomials."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} with n_samples={n}: k must be between 1 and n_samples; raise --n-samples to ≥ {k}")
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct samples of n={n}: must be between 0 and n")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# ---- problems ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """A code problem: the prompt the model continues (its format applied), the stop strings of the completion,
    and the program around it: ``head + completion + "\\n" + tests``. ``reference``: the canonical completion."""

    task_id: str
    prompt: str
    stop: tuple[str, ...]
    head: str
    tests: str
    reference: str = ""
    entry_point: str | None = None
    formatted: bool = False

    def completion(self, answer: str) -> str:
        """The model's raw ``answer`` → the text put into the program.

        Unformatted (base models): the answer cut at the first stop string, as the harnesses do. Formatted
        (``prompt_format`` other than ``none``): instruction-tuned models answer with a whole function, often in a
        Markdown code block, so the HumanEval stop strings (which would cut it at its own ``def``) are not used;
        the first fenced block is taken when there is one (else the whole answer), cut at ``[DONE]`` for MBPP; a
        HumanEval answer that defines ``entry_point`` is put after the prompt on a new line (the prompt's imports
        and helpers stay; the answer's definition replaces the stub), otherwise it continues the prompt's body.
        """
        if not self.formatted:
            return truncate(answer, self.stop)
        if "```" in answer:
            block = answer.split("```", 2)[1]
            answer = block.split("\n", 1)[1] if "\n" in block else ""  # drop the language tag line
        answer = truncate(answer, self.stop)
        if self.entry_point is not None and f"def {self.entry_point}(" in answer:
            return "\n" + answer
        return answer

    def program(self, completion: str) -> str:
        """The program that passes iff ``completion`` is correct."""
        return f"{self.head}{completion}\n{self.tests}"


def humaneval_problem(row: dict, *, prompt_format: str = "none") -> Problem:
    """A HumanEval record (task_id, prompt, entry_point, canonical_solution, test) → :class:`Problem`."""
    formatted = prompt_format != "none"
    instruction = f"Complete the following Python function.\n```python\n{row['prompt']}```" if formatted else ""
    prompt = _format(prompt_format, instruction) if formatted else row["prompt"]
    return Problem(task_id=str(row["task_id"]), prompt=prompt, stop=() if formatted else HUMANEVAL_STOP,
                   head=row["prompt"], tests=f"{row['test']}\ncheck({row['entry_point']})",
                   reference=row["canonical_solution"], entry_point=row["entry_point"],
                   formatted=formatted)  # fmt: skip


def mbpp_problem(row: dict, *, shots: Sequence[dict] = (), prompt_format: str = "none") -> Problem:
    """An MBPP record (text, code, task_id, test_list) → :class:`Problem`, its prompt preceded by the ``shots``
    (records too; the harness's are tasks 2, 3, 4). With a ``prompt_format`` (SFT models) the instruction is the
    task's own prompt without ``[BEGIN]``, and no shots."""
    tests = "\n".join(row["test_list"])
    prompt = MBPP_PROMPT.format(text=row["text"], tests=tests)
    if prompt_format != "none":
        prompt = _format(prompt_format, prompt.removesuffix("\n[BEGIN]\n"))
    else:
        examples = [MBPP_PROMPT.format(text=s["text"], tests="\n".join(s["test_list"])) + s["code"] + "\n[DONE]"
                    for s in shots]  # fmt: skip
        prompt = "".join(e + "\n\n" for e in examples) + prompt
    return Problem(task_id=str(row["task_id"]), prompt=prompt, stop=("[DONE]",), head="", tests=tests,
                   reference=row["code"], formatted=prompt_format != "none")  # fmt: skip


def _format(name: str, instruction: str) -> str:
    from zoo.data.formats import FORMATS

    if name not in FORMATS:
        raise ValueError(f"prompt_format={name!r} is not a prompt format: choose --format from {sorted(FORMATS)}")
    return FORMATS[name]().prompt(instruction)


def load_problems(task: str, *, data_dir: str | None = None, limit: int | None = None,
                  prompt_format: str = "none") -> list[Problem]:  # fmt: skip
    """The problems of ``task`` (``humaneval`` or ``mbpp``; MBPP's test split, ids 11..510), from ``data_dir``
    (``DIR/humaneval/HumanEval.jsonl.gz`` or ``.jsonl``, ``DIR/mbpp/mbpp.jsonl``) or else the hub."""
    if task not in HUB:
        raise ValueError(f"task={task!r} is not a code task: choose one of {sorted(HUB)}")
    if data_dir is not None:
        paths = [os.path.join(data_dir, p) for p in LOCAL[task]]
        found = [p for p in paths if os.path.exists(p)]
        if not found:
            raise ValueError(f"task {task}: no local file {' or '.join(paths)} under --data-dir {data_dir}; "
                             f"{_hint(task)}")  # fmt: skip
        opener = gzip.open if found[0].endswith(".gz") else open
        with opener(found[0], "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        rows = _load_hub(task)
    if task == "humaneval":
        return [humaneval_problem(row, prompt_format=prompt_format) for row in rows[:limit]]
    by_id = {int(r["task_id"]): r for r in rows}
    missing = [i for i in MBPP_SHOT_IDS if i not in by_id]
    if missing and prompt_format == "none":
        raise ValueError(f"task mbpp: its 3-shot prompt needs tasks {list(MBPP_SHOT_IDS)}, and the data has no task "
                         f"{missing}: give the whole mbpp.jsonl (all 974 tasks); {_hint(task)}")  # fmt: skip
    shots = [by_id[i] for i in MBPP_SHOT_IDS] if not missing else []
    tests = [r for r in rows if int(r["task_id"]) in MBPP_TEST_IDS]
    return [mbpp_problem(row, shots=shots, prompt_format=prompt_format) for row in tests[:limit]]


def _hint(task: str) -> str:
    source = "openai/human-eval" if task == "humaneval" else "google-research/google-research (mbpp/)"
    return f"pass --data-dir DIR with DIR/{LOCAL[task][0]} (from github.com/{source})"


def _load_hub(task: str) -> list[dict]:
    from zoo.data import hub

    path, name = HUB[task]
    splits = ["test", "prompt"] if task == "mbpp" else ["test"]  # MBPP's shots are in its prompt split
    where = f"the hub dataset {path!r} name={name!r} split={'+'.join(splits)!r}"
    if hub.hub_unreachable():
        raise ValueError(f"task {task}: cannot reach huggingface.co to load {where} (no --data-dir given); "
                         f"{_hint(task)}")  # fmt: skip
    try:
        import datasets

        return [dict(r) for split in splits for r in datasets.load_dataset(path, name, split=split)]
    except Exception as err:  # the hub client raises many types
        raise ValueError(f"task {task}: could not load {where} ({type(err).__name__}: {err}); {_hint(task)}") from err


# ---- sampling --------------------------------------------------------------------------------------------------
def sample_answers(model, tokenizer, problem: Problem, *, eos_id: int, n_samples: int, temperature: float,
                   max_new_tokens: int, generator) -> list[str]:  # fmt: skip
    """``n_samples`` answers of ``model`` to ``problem.prompt`` (a causal LM with the KV-cache sampler, a
    masked-diffusion LM with low-confidence remasking, ``max_new_tokens`` = its answer length), each decoded
    and cut at the problem's stop strings.

    Prompt and answer must fit in ``max_seq_len``: ``max_new_tokens`` is lowered to the room the prompt leaves,
    but not below half the context, and a prompt longer than the rest is cut from the left, as the harness
    truncates contexts (MBPP's 3-shot prompt is some 600 tokens, more than many small models' context)."""
    from zoo.generation.sampling import sample

    ids = tokenizer.encode(problem.prompt, add_special_tokens=False).ids or [eos_id]
    context = model.backbone.max_seq_len
    room = min(max_new_tokens, max(context - len(ids), context // 2))
    ids = ids[-(context - room) :]  # (left truncation)
    out = sample(model, [ids] * n_samples, max_new_tokens=room, temperature=temperature, eos_id=eos_id,
                 stop=problem.stop, tokenizer=tokenizer, generator=generator)  # fmt: skip
    return list(out.texts)  # cut at the EOS and before the problem's stop strings


def evaluate_code(*, model, tokenizer, eos_token: str, task: str, data_dir: str | None = None, limit: int | None = None,
                  n_samples: int = 1, k: Sequence[int] = (1,), temperature: float = 0.0, max_new_tokens: int = 256,
                  prompt_format: str = "none", timeout: float = 10.0, seed: int = 0, workers: int | None = None,
                  memory_bytes: int = 2**30, unsafe_no_sandbox: bool = False,
                  log=None) -> dict[str, float]:  # fmt: skip
    """pass@k of ``model`` on ``task`` (``humaneval`` or ``mbpp``): ``n_samples`` completions per problem (greedy
    at ``temperature=0``, where all samples are the same), each program run in the sandbox (:func:`run_program`,
    ``timeout`` seconds, ``workers`` in parallel), scores averaged over problems, and the number of problems:
    ``{"pass@1": ..., "n": 164}``. ``log``: called with a progress line now and then.

    Where the sandbox cannot isolate programs (no usable bubblewrap), :class:`zoo.eval.sandbox.SandboxUnavailableError`
    is raised before anything is sampled, unless ``unsafe_no_sandbox`` (programs then run uncontained)."""
    import torch

    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: must be ≥ 1 (--n-samples)")
    for kk in k:
        pass_at_k(n=n_samples, c=0, k=kk)  # k ≤ n_samples, before any sampling
    if timeout <= 0:
        raise ValueError(f"timeout={timeout}: must be > 0 seconds (--timeout)")
    require_sandbox(unsafe_no_sandbox=unsafe_no_sandbox)  # no sandbox, no run: refused before any sampling
    problems = load_problems(task, data_dir=data_dir, limit=limit, prompt_format=prompt_format)
    if not problems:
        raise ValueError(f"task {task}: no problems to evaluate (limit={limit})")
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise ValueError(f"eos_token={eos_token!r} is not a token of the tokenizer: pass --eos-token")
    generator = torch.Generator(device=model.backbone.embed.weight.device).manual_seed(seed)
    programs = []
    # the sampler's set-up (AR decoding's weight layout), made once for all problems rather than once per call
    with model.sampling_context():
        for i, problem in enumerate(problems):
            if log is not None and i % 20 == 0:
                log(f"{task}: sampling problem {i + 1}/{len(problems)}")
            answers = sample_answers(model, tokenizer, problem, eos_id=eos_id, n_samples=n_samples,
                                     temperature=temperature, max_new_tokens=max_new_tokens,
                                     generator=generator)  # fmt: skip
            programs += [problem.program(problem.completion(answer)) for answer in answers]
    if log is not None:
        log(f"{task}: running {len(programs)} programs in the sandbox")
    results = run_programs(programs, workers=workers, timeout=timeout, memory_bytes=memory_bytes,
                           unsafe_no_sandbox=unsafe_no_sandbox)  # fmt: skip
    correct = [sum(r.passed for r in results[i * n_samples : (i + 1) * n_samples]) for i in range(len(problems))]
    scores = {f"pass@{kk}": float(np.mean([pass_at_k(n=n_samples, c=c, k=kk) for c in correct])) for kk in k}
    return {**scores, "n": len(problems)}
