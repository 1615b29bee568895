"""zoo.eval tasks: each built-in task's prompts, choices and gold index against the harness's definitions worked
by hand, the local readers of the release formats, the metrics' arithmetic on known log-likelihoods, YAML tasks."""

import json
import math
import re

import pytest

from zoo.eval.datasets import wikitext_detokenize
from zoo.eval.metrics import evaluate
from zoo.eval.scoring import Scorer
from zoo.eval.tasks import builtin_tasks, resolve, tasks_from_yaml

TASKS = builtin_tasks()
QA_PROMPT_START = "Q: What is human life expectancy in the United States?\nA: Human life expectancy"


class FakeScorer(Scorer):
    """Log-likelihoods from a table keyed by (context, continuation) or the rolling text."""

    def __init__(self, table: dict) -> None:
        self.table = table

    def loglikelihood(self, requests):
        return [self.table[r] if isinstance(self.table[r], tuple) else (self.table[r], False) for r in requests]

    def loglikelihood_rolling(self, texts):
        return [self.table[t] for t in texts]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_registry_has_every_task_and_the_67_blimp_paradigms():
    names = {"hellaswag", "arc_easy", "arc_challenge", "piqa", "sciq", "truthfulqa_mc1", "truthfulqa_mc2",
             "winogrande", "lambada_openai", "wikitext"}  # fmt: skip
    assert names <= set(TASKS)
    tasks, groups = resolve(["blimp"])
    assert len(tasks) == 67 and len(groups["blimp"]) == 67
    assert all(t.name.startswith("blimp_") and t.dataset["name"] == t.name[len("blimp_") :] for t in tasks)
    assert tasks[0].local["path"] == f"blimp/{tasks[0].dataset['name']}.jsonl"


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'arc_medium'.*arc_easy.*blimp.*humaneval.*wikitext"):
        resolve(["arc_medium"])


def test_hellaswag_preprocess_one_document(tmp_path):
    task = TASKS["hellaswag"]
    doc = {"activity_label": "Removing ice from car",
           "ctx_a": "Then, the man writes over the snow covering the window.", "ctx_b": "then", "label": "3",
           "endings": [", the man adds wax.", " [header] How to x [title] Do y.", "a", "b"]}  # fmt: skip
    (doc,) = task.load(task_file=write_jsonl(tmp_path / "h.jsonl", [doc]))
    context = "Removing ice from car: Then, the man writes over the snow covering the window. Then"
    assert task.requests(doc) == [(context, " , the man adds wax."), (context, "  How to x. Do y."),
                                  (context, " a"), (context, " b")]  # fmt: skip
    assert task.gold(doc) == 3


def test_arc_numeric_answer_key():
    task = TASKS["arc_challenge"]
    doc = {"question": "Which is a gas?", "answerKey": "3",
           "choices": {"text": ["rock", "water", "oxygen", "iron"], "label": ["1", "2", "3", "4"]}}  # fmt: skip
    assert task.requests(doc)[2] == ("Question: Which is a gas?\nAnswer:", " oxygen")
    assert task.gold(doc) == 2
    assert task.gold({**doc, "answerKey": "B", "choices": {**doc["choices"], "label": ["A", "B", "C", "D"]}}) == 1


def test_winogrande_partial_scoring():
    task = TASKS["winogrande"]
    doc = {"sentence": "The trophy doesn't fit into the suitcase because the _ is too large.", "option1": "trophy",
           "option2": "suitcase", "answer": "2"}  # fmt: skip
    assert task.requests(doc) == [
        ("The trophy doesn't fit into the suitcase because the trophy", " is too large."),
        ("The trophy doesn't fit into the suitcase because the suitcase", " is too large."),
    ]
    assert task.gold(doc) == 1


def test_piqa_sciq_lambada_blimp_prompts():
    piqa = {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Hit it.", "label": 0}
    assert TASKS["piqa"].requests(piqa) == [("Question: Open a jar\nAnswer:", " Twist the lid."),
                                            ("Question: Open a jar\nAnswer:", " Hit it.")]  # fmt: skip
    sciq = {"support": "  Water boils at 100 C.", "question": "When does water boil?", "distractor1": "0 C",
            "distractor2": "50 C", "distractor3": "10 C", "correct_answer": "100 C"}  # fmt: skip
    requests = TASKS["sciq"].requests(sciq)
    assert requests[3] == ("Water boils at 100 C.\nQuestion: When does water boil?\nAnswer:", " 100 C")
    assert TASKS["sciq"].gold(sciq) == 3
    assert TASKS["lambada_openai"].requests({"text": "he said hello to his friend"}) == [
        ("he said hello to his", " friend")
    ]
    blimp = TASKS["blimp_adjunct_island"]
    assert blimp.requests({"sentence_good": "Who ran?", "sentence_bad": "Ran who?"}) == [("", " Who ran?"),
                                                                                         ("", " Ran who?")]  # fmt: skip


def test_truthfulqa_prompt_reader_and_mc2_split(tmp_path):
    path = tmp_path / "mc_task.json"
    mc2_targets = {"No.": 1, "No, it is blue.": 1, "Yes.": 0, "Always.": 0}
    path.write_text(json.dumps([{"question": "Is the sky green?",
                                 "mc1_targets": {"No.": 1, "Yes.": 0, "Sometimes.": 0},
                                 "mc2_targets": mc2_targets}]))  # fmt: skip
    mc1, mc2 = TASKS["truthfulqa_mc1"], TASKS["truthfulqa_mc2"]
    (doc,) = mc2.load(task_file=str(path))
    (context, continuation), *_ = mc2.requests(doc)
    assert context.startswith(QA_PROMPT_START) and context.endswith("Barcelona, Spain.\n\nQ: Is the sky green?\nA:")
    assert context.count("\n\nQ: ") == 6 and continuation == " No."
    assert [c for _, c in mc1.requests(doc)] == [" No.", " Yes.", " Sometimes."] and mc1.gold(doc) == 0
    assert mc2.labels_of(doc) == [1, 1, 0, 0]
    lls = [-1.0, -2.0, -0.5, -3.0]
    table = {r: ll for r, ll in zip(mc2.requests(doc), lls)}
    result = evaluate([mc2], FakeScorer(table), task_files={"truthfulqa_mc2": str(path)})["results"]
    p = [math.exp(x) for x in lls]
    assert result["truthfulqa_mc2"]["mc2"]["value"] == pytest.approx((p[0] + p[1]) / sum(p))


def test_piqa_reader_joins_the_labels_file(tmp_path):
    write_jsonl(tmp_path / "valid.jsonl", [{"goal": "g1", "sol1": "a", "sol2": "b"}, {"goal": "g2", "sol1": "c",
                                                                                        "sol2": "d"}])  # fmt: skip
    (tmp_path / "valid-labels.lst").write_text("1\n0\n")
    docs = TASKS["piqa"].load(data_dir=str(tmp_path.parent), task_file=str(tmp_path / "valid.jsonl"))
    assert [TASKS["piqa"].gold(d) for d in docs] == [1, 0]
    (tmp_path / "valid-labels.lst").write_text("1\n")
    with pytest.raises(ValueError, match="2 rows but .*valid-labels.lst has 1 labels"):
        TASKS["piqa"].load(task_file=str(tmp_path / "valid.jsonl"))


def test_acc_and_acc_norm_on_known_loglikelihoods(tmp_path):
    task = TASKS["arc_easy"]
    docs = [{"question": "q1", "answerKey": "B", "choices": {"text": ["a", "bbbbbbbb"], "label": ["A", "B"]}},
            {"question": "q2", "answerKey": "A", "choices": {"text": ["cc", "d"], "label": ["A", "B"]}}]  # fmt: skip
    path = write_jsonl(tmp_path / "arc.jsonl", docs)
    # doc 1: ll favours "a" (-2 > -4), per character "bbbbbbbb" (-4/8 > -2/1): acc 0, acc_norm 1
    # doc 2: "cc" wins both ways (-1 > -3; -0.5 > -3): acc 1, acc_norm 1
    lls = {"q1": [-2.0, -4.0], "q2": [-1.0, -3.0]}
    table = {r: ll for d in docs for r, ll in zip(task.requests(d), lls[d["question"]])}
    out = evaluate([task], FakeScorer(table), task_files={"arc_easy": path})["results"]["arc_easy"]
    assert out["n"] == 2
    assert out["acc"]["value"] == 0.5 and out["acc_norm"]["value"] == 1.0
    assert out["acc"]["stderr"] == pytest.approx(math.sqrt(0.5) / math.sqrt(2))  # sample stdev / sqrt(n)


def test_lambada_perplexity_and_greedy_accuracy(tmp_path):
    task = TASKS["lambada_openai"]
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": "a b c"}, {"text": "d e"}])
    table = {("a b", " c"): (-1.0, True), ("d", " e"): (-3.0, False)}
    out = evaluate([task], FakeScorer(table), task_files={"lambada_openai": path})["results"]["lambada_openai"]
    assert out["perplexity"]["value"] == pytest.approx(math.exp(2.0))
    assert out["acc"]["value"] == 0.5


def test_wikitext_detokenizer_reader_and_perplexities(tmp_path):
    assert wikitext_detokenize(" = Title = \n 3 @,@ 000 km ( 1 @.@ 5 mi ) , the dog 's toy \n") == (
        " = Title =\n3,000 km (1.5 mi), the dog's toy\n"
    )
    raw = " = A = \r\n one two \r\n = = Sub = = \r\n three \r\n = B = \r\n four five six \r\n"
    (tmp_path / "wikitext").mkdir()
    (tmp_path / "wikitext" / "wiki.test.raw").write_bytes(raw.encode())
    task = TASKS["wikitext"]
    docs = task.load(data_dir=str(tmp_path))
    assert [d["page"] for d in docs] == [" = A = \n one two \n = = Sub = = \n three \n", " = B = \n four five six \n"]
    (tmp_path / "wikitext" / "wiki.test.raw").write_bytes((" \r\n" + raw).encode())  # the original's first line
    assert [d["page"] for d in task.load(data_dir=str(tmp_path))] == [d["page"] for d in docs]
    assert docs[0]["detokenized"] == " = A =\none two\n== Sub ==\nthree\n"
    table = {docs[0]["detokenized"]: -10.0, docs[1]["detokenized"]: -6.0}
    out = evaluate([task], FakeScorer(table), data_dir=str(tmp_path))["results"]["wikitext"]
    words = sum(len(re.split(r"\s+", d["page"])) for d in docs)  # of the original text, as the harness counts
    n_bytes = sum(len(d["page"].encode()) for d in docs)
    assert out["word_perplexity"]["value"] == pytest.approx(math.exp(16.0 / words))
    assert out["byte_perplexity"]["value"] == pytest.approx(math.exp(16.0 / n_bytes))
    assert out["bits_per_byte"]["value"] == pytest.approx(16.0 / n_bytes / math.log(2))


def test_blimp_group_is_the_unweighted_mean(tmp_path):
    tasks, groups = resolve(["blimp"])
    tasks = tasks[:2]
    (tmp_path / "blimp").mkdir()
    rows = {tasks[0].name: [("g", "b"), ("g2", "b2")], tasks[1].name: [("x", "y")]}
    for t in tasks:
        write_jsonl(tmp_path / t.local["path"], [{"sentence_good": g, "sentence_bad": b} for g, b in rows[t.name]])
    table = {("", " g"): -1.0, ("", " b"): -2.0, ("", " g2"): -3.0, ("", " b2"): -2.0, ("", " x"): -1.0,
             ("", " y"): -5.0}  # fmt: skip
    out = evaluate(tasks, FakeScorer(table), groups=groups, data_dir=str(tmp_path))["results"]
    assert out[tasks[0].name]["acc"]["value"] == 0.5 and out[tasks[1].name]["acc"]["value"] == 1.0
    assert out["blimp"]["acc"]["value"] == 0.75  # not 2/3: each paradigm weighs the same


def test_a_yaml_task_with_a_local_file(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "2+2?", "options": ["3", "4"], "answer": "4"}])
    (task,) = tasks_from_yaml(
        f"""
task: my_qa
output_type: multiple_choice
dataset: {{path: nowhere/qa, split: test}}
local: {{path: {path}}}
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_choice: options
doc_to_target: answer
target_delimiter: " "
metrics: [acc]
"""
    )
    (doc,) = task.load(data_dir="/")
    assert task.requests(doc) == [("Q: 2+2?\nA:", " 3"), ("Q: 2+2?\nA:", " 4")] and task.gold(doc) == 1
    with pytest.raises(ValueError, match="unknown keys \\['prompt'\\]"):
        tasks_from_yaml("task: x\noutput_type: multiple_choice\nprompt: 1\n")


@pytest.mark.parametrize(
    "template",
    ["{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
     "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ lipsum.__globals__['os'].system('touch MARKER') }}",
     "{{ q.__class__.__base__.__subclasses__() }}",
     "{% set x = options.append('touch MARKER') %}{{ q }}"],
    ids=["globals", "mro", "field-class", "mutation"],
)  # fmt: skip
def test_a_task_file_template_runs_no_code(tmp_path, monkeypatch, template):
    """An --include task file is data: its templates render in Jinja's immutable sandbox, so one that reaches for
    Python internals (or mutates the document) is refused in one line and runs nothing."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    data = write_jsonl(tmp_path / "qa.jsonl", [{"q": "2+2?", "options": ["3", "4"], "answer": "4"}])
    task_file = tmp_path / "evil.yaml"
    task_file.write_text(json.dumps({"task": "evil", "output_type": "multiple_choice", "dataset": {"path": "x/y"},
                                     "local": {"path": data}, "doc_to_text": template, "doc_to_choice": "options",
                                     "doc_to_target": "answer"}))  # fmt: skip
    (task,), _ = resolve(["evil"], extra_files=[str(task_file)])
    (doc,) = task.load(data_dir="/")
    with pytest.raises(ValueError) as err:
        task.requests(doc)
    message = str(err.value)
    assert "\n" not in message and "task evil: its template" in message and "refused by Jinja's sandbox" in message
    assert not marker.exists() and doc["options"] == ["3", "4"]


def test_task_templates_still_render_filters_and_expressions():
    (task,) = tasks_from_yaml(
        "task: t\noutput_type: multiple_choice\ndataset: {path: x/y}\ndoc_to_choice: '{{ options }}'\n"
        "doc_to_text: \"{{ q | regex_replace('[?]', '') | upper }} {{ options | join(', ') }} {{ n + 1 }}\"\n"
        "doc_to_target: '{{ options.index(answer) }}'\n"
    )
    doc = {"q": "2+2?", "options": ["3", "4"], "answer": "4", "n": 1}
    assert task.text(doc) == "2+2 3, 4 2" and task.choices(doc) == ["3", "4"] and task.gold(doc) == 1


def test_no_network_and_no_local_file_says_where_it_looked(monkeypatch):
    from zoo.data import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(ValueError, match="cannot reach huggingface.co.*allenai/ai2_arc.*--data-dir DIR with "
                                         "DIR/arc/ARC-Easy-test.jsonl.*--task-file arc_easy=PATH"):  # fmt: skip
        TASKS["arc_easy"].load()
    with pytest.raises(ValueError, match="local file /nonexistent/arc/ARC-Easy-test.jsonl does not exist"):
        TASKS["arc_easy"].load(data_dir="/nonexistent")

