"""zoo's models inside lm-evaluation-harness (zoo.eval.harness.ZooLM) and the two engines of `zoo eval`: on local
fixture files, ZooLM's scores equal zoo's native ones and the harness's own "hf" model on the export; generation
equals zoo's generate; diffusion models run; batch sizes do not change the scores; bad input is named."""

import json
import logging
import math
import os

import pytest

lm_eval = pytest.importorskip("lm_eval")  # the `eval` extra; CI installs it with `test`

from tests.helpers import tiny_backbone, tiny_fit, write_jsonl  # noqa: E402
from zoo.eval.engines import run_harness, split_by_engine, task_manager  # noqa: E402
from zoo.eval.harness import ZooLM, render_chat  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ARC = [{"id": f"q{i}", "question": q, "answerKey": key, "choices": {"text": choices, "label": labels}}
       for i, (q, choices, labels, key) in enumerate([
           ("Which is a gas?", ["rock", "iron", "oxygen"], ["A", "B", "C"], "C"),
           ("What do plants need to grow?", ["light", "noise"], ["1", "2"], "1"),
           ("Which animal can fly?", ["a dog", "a bird", "a fish", "a cow"], ["A", "B", "C", "D"], "B"),
           ("What melts ice?", ["heat", "cold"], ["A", "B"], "A")])]  # fmt: skip
LAMBADA = [{"text": "The cat sat on the mat and the dog sat on the rug"},
           {"text": "def main(): return the value of x plus one"},
           {"text": "import os and import sys then print the path"}]  # fmt: skip
WIKI = (" = Alpha = \n\n Alpha is a letter @-@ like sign . It came first ( in order ) . \n\n"
        " = Beta = \n\n Beta is the second letter , after alpha . \n")  # fmt: skip
GSM_TRAIN = [{"question": "What is 2 plus 3?", "answer": "2 + 3 = 5\n#### 5"},
             {"question": "What is 4 times 2?", "answer": "4 * 2 = 8\n#### 8"}]  # fmt: skip
GSM_TEST = [{"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = 5\n#### 5"},
            {"question": "What is 10 minus 4?", "answer": "10 - 4 = 6\n#### 6"},
            {"question": "Sam had 1,000 coins and lost 1. How many are left?", "answer": "999\n#### 999"}]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """zoo's --data-dir layout for arc_easy, lambada_openai and wikitext, and a GSM8K-format task folder whose
    YAML includes the harness's own gsm8k task (prompt, stop sequences, filters, exact match)."""
    root = tmp_path_factory.mktemp("evaldata")
    data = root / "data"
    write_jsonl(data / "arc" / "ARC-Easy-test.jsonl", ARC)
    write_jsonl(data / "lambada" / "lambada_test.jsonl", LAMBADA)
    (data / "wikitext").mkdir()
    (data / "wikitext" / "wiki.test.raw").write_text(WIKI)
    tasks = root / "tasks"
    train = write_jsonl(root / "gsm" / "train.jsonl", GSM_TRAIN)
    test = write_jsonl(root / "gsm" / "test.jsonl", GSM_TEST)
    import lm_eval.tasks

    gsm8k_yaml = os.path.join(os.path.dirname(lm_eval.tasks.__file__), "gsm8k", "gsm8k.yaml")
    tasks.mkdir()
    (tasks / "gsm8k_local.yaml").write_text(json.dumps({
        "include": str(gsm8k_yaml), "task": "gsm8k_local", "tag": [], "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"train": str(train), "test": str(test)}}, "num_fewshot": 1,
    }))  # fmt: skip
    return data, tasks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(tiny_fit(tmp_path_factory.mktemp("fit"), tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    from zoo.eval.checkpoint import load_model

    model, tokenizer, eos, _ = load_model(checkpoint, device="cpu")
    return model, tokenizer, eos


def harness(lm, names, files, tmp_path, **kwargs):
    data, tasks = files
    return run_harness(lm, names, data_dir=str(data), work=tmp_path, include_paths=[str(tasks)], **kwargs)["results"]


def native(loaded, names, files, batch_size=32):
    from zoo.eval.checkpoint import make_scorer
    from zoo.eval.metrics import evaluate
    from zoo.eval.tasks import resolve

    model, tokenizer, eos = loaded
    tasks, groups = resolve(names)
    scorer = make_scorer(model, tokenizer, eos, batch_size=batch_size)
    return evaluate(tasks, scorer, groups=groups, data_dir=str(files[0]))["results"]


TASKS = ["arc_easy", "lambada_openai", "wikitext"]


def test_zoo_in_the_harness_equals_zoo_native_and_hf_on_the_export(loaded, checkpoint, files, tmp_path):
    from zoo.interop.export import export

    ours = native(loaded, TASKS, files)
    model, tokenizer, eos = loaded
    inside = harness(ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos), TASKS, files, tmp_path / "z")
    hf_dir = str(export(checkpoint, str(tmp_path / "hf")))
    yamls = [str(tmp_path / "z" / f"{t}.yaml") for t in TASKS]  # the local task files ZooLM's run used
    out = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": hf_dir, "dtype": "float32", "device": "cpu"},
                                  tasks=yamls, task_manager=task_manager([str(files[1])]), batch_size=4,
                                  bootstrap_iters=0, log_samples=False)["results"]  # fmt: skip
    checked = 0
    for task in TASKS:
        for metric, entry in ours[task].items():
            if metric == "n":
                continue
            assert inside[task][metric]["value"] == entry["value"], (task, metric)  # the same scorer, exactly
            theirs = out[task][f"{metric},none"]
            if metric in ("acc", "acc_norm"):
                assert theirs == entry["value"], (task, metric)
            else:  # float32 forward passes of two implementations: equal to rounding
                assert math.isclose(theirs, entry["value"], rel_tol=1e-4), (task, metric, theirs, entry["value"])
            checked += 1
        assert inside[task]["n"] == ours[task]["n"]
    assert checked == 7  # acc, acc_norm; perplexity, acc; word_perplexity, byte_perplexity, bits_per_byte


def test_scores_do_not_depend_on_the_batch_size(loaded, files, tmp_path):
    """Accuracies are equal; log-likelihoods agree to float32 rounding (a batch pads its rows to its longest, which
    changes the shapes of the matrix products, not what is computed)."""
    model, tokenizer, eos = loaded
    runs = [harness(ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos, batch_size=b), TASKS, files,
                    tmp_path / str(b)) for b in (1, 7, 32)]  # fmt: skip
    for task in TASKS:
        for metric in runs[0][task]:
            if metric == "n":
                continue
            values = [run[task][metric]["value"] for run in runs]
            if metric.startswith("acc"):
                assert values[0] == values[1] == values[2], (task, metric)
            else:
                assert all(math.isclose(v, values[0], rel_tol=1e-6) for v in values), (task, metric, values)


def test_generate_until_on_a_gsm8k_fixture_equals_zoo_generate(loaded, files):
    from zoo.generation import generate

    model, tokenizer, eos = loaded
    lm = ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos, max_gen_toks=12, batch_size=2)
    out = lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_local"], task_manager=task_manager([str(files[1])]),
                                  bootstrap_iters=0, log_samples=True)  # fmt: skip
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(out["results"]["gsm8k_local"])
    samples = [s for s in out["samples"]["gsm8k_local"] if s["filter"] == "strict-match"]
    assert len(samples) == len(GSM_TEST)
    stop = ["Question:", "</s>", "<|im_end|>", eos]
    for sample in samples:
        prompt, gen_kwargs = sample["arguments"][0]
        assert prompt.startswith("Question: What is")  # the one-shot example from the train file
        assert prompt.endswith(f"Question: {sample['doc']['question']}\nAnswer:")
        assert gen_kwargs["until"][:3] == stop[:3]
        ids = tokenizer.encode(prompt).ids
        alone = generate(model.backbone, [ids], max_new_tokens=12, eos_id=tokenizer.token_to_id(eos), stop=stop,
                         tokenizer=tokenizer)  # fmt: skip
        assert sample["resps"][0][0] == alone.texts[0]
    # sampled gen_kwargs: the seed makes them reproducible
    sampled = [lm.generate_until([_Req((s["arguments"][0][0],
                                        {"until": ["Question:"], "do_sample": True, "temperature": 1.0, "top_k": 20}))
                                  for s in samples]) for _ in range(2)]  # fmt: skip
    assert sampled[0] == sampled[1]


class _Req:
    def __init__(self, args):
        self.args = args


def test_chat_template_renders_zoo_formats(loaded, files):
    from zoo.data.formats import Alpaca, Chat, UserAssistant

    history = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
               {"role": "user", "content": "3+3?"}]  # fmt: skip
    assert render_chat(UserAssistant(), history, eos="<E>", add_generation_prompt=True) == (
        "User: 2+2?\nAssistant: 4<E>User: 3+3?\nAssistant: ")
    system = [{"role": "system", "content": "Be brief."}]
    assert render_chat(Chat(), system + history, eos="<E>", add_generation_prompt=True) == (
        "System: Be brief.\nUser: 2+2?\nAssistant: 4<E>User: 3+3?\nAssistant: ")
    alpaca = render_chat(Alpaca(), history[:1], eos="<E>", add_generation_prompt=True)
    assert alpaca.startswith("Below is an instruction") and alpaca.endswith("### Instruction:\n2+2?\n\n### Response:\n")
    model, tokenizer, eos = loaded
    lm = ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos, max_gen_toks=4, chat_format="user_assistant")
    out = lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_local"], task_manager=task_manager([str(files[1])]),
                                  apply_chat_template=True, limit=1, bootstrap_iters=0)  # fmt: skip
    prompt = out["samples"]["gsm8k_local"][0]["arguments"][0][0]
    assert prompt.startswith("User: Question: What is") and prompt.endswith("\nAnswer:\nAssistant: ")
    with pytest.raises(ValueError, match="chat_format"):
        ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos).chat_template(True)


def test_a_diffusion_model_runs_a_loglikelihood_and_a_generation_task(loaded, files, tmp_path):
    from zoo.nn import GroupedQueryAttention
    from zoo.objectives import MaskedDiffusionLM

    _, tokenizer, eos = loaded
    vocab = tokenizer.get_vocab_size()
    backbone = tiny_backbone(vocab_size=vocab + 1, max_seq_len=128,
                             attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=False))
    model = MaskedDiffusionLM(backbone=backbone, mask_id=vocab).eval()
    lm = ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos, mc_num=4, max_gen_toks=8, block_length=4)
    scores = harness(lm, ["arc_easy", "gsm8k_local"], files, tmp_path, num_fewshot=0)
    assert scores["arc_easy"]["n"] == len(ARC) and 0 <= scores["arc_easy"]["acc"]["value"] <= 1
    assert 0 <= scores["gsm8k_local"]["exact_match/strict-match"]["value"] <= 1
    # the ELBO is seeded: a second model object gives the same bounds
    again = ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos, mc_num=4)
    requests = [_Req(("Question: Which is a gas?\nAnswer:", " oxygen"))]
    assert again.loglikelihood(requests) == lm.loglikelihood(requests)
    answers = lm.generate_until([_Req(("Question: What is 2 plus 3?\nAnswer:", {"until": ["Question:"]}))])
    assert isinstance(answers[0], str)


def test_unknown_task_lists_the_closest_names_of_both_engines(files):
    paths = [str(files[1])]
    with pytest.raises(ValueError) as info:
        split_by_engine(["arc_easyy"], engine="auto", include_paths=paths)
    message = str(info.value)
    assert "closest in zoo's tasks: arc_easy" in message and "closest in lm-eval's registry: arc_easy" in message
    with pytest.raises(ValueError, match="lm-eval has it: use --engine harness or auto"):
        split_by_engine(["gsm8k"], engine="native", include_paths=paths)
    assert split_by_engine(["arc_easy", "gsm8k"], engine="auto", include_paths=paths) == (["arc_easy"], ["gsm8k"])


def test_a_hub_task_offline_names_its_dataset_and_the_local_recipe(loaded, files, monkeypatch, tmp_path):
    import zoo.data.hub
    import zoo.eval.tasks

    model, tokenizer, eos = loaded
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(zoo.data.hub, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(ValueError) as info:
        run_harness(ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos), ["gsm8k"], work=tmp_path,
                    include_paths=[str(files[1])])
    message = str(info.value)
    assert "gsm8k: openai/gsm8k (main)" in message and "dataset_path: json" in message and "--include-path" in message


def test_a_prompt_longer_than_the_context_says_how_it_was_cut(loaded, caplog):
    model, tokenizer, eos = loaded
    lm = ZooLM(pretrained=model, tokenizer=tokenizer, eos_token=eos, max_gen_toks=8)
    long = "word " * (2 * model.backbone.max_seq_len)
    with caplog.at_level(logging.WARNING, logger="zoo.eval.harness"):
        (score,) = lm.loglikelihood([_Req((long, " end"))])
        lm.generate_until([_Req((long, {"until": ["\n"]}))])
    assert math.isfinite(score[0])
    assert "1 of 1 requests are longer than the model's context" in caplog.text and "cut from the left" in caplog.text
    assert "1 of 1 prompts exceed the" in caplog.text
    with pytest.raises(ValueError, match="max_gen_toks=10000 leaves no room"):
        lm.generate_until([_Req(("hi", {"until": ["\n"], "max_gen_toks": 10000}))])


def test_eval_command_runs_both_engines_into_one_table_and_json(checkpoint, files, tmp_path, capsys):
    from zoo.commands.eval import main

    data, tasks = files
    out = tmp_path / "r.json"
    main(["--ckpt", checkpoint, "--tasks", "arc_easy,gsm8k_local", "--data-dir", str(data), "--include-path",
          str(tasks), "--num-fewshot", "0", "--limit", "2", "--output", str(out),
          "--tensorboard", str(tmp_path / "tb")])  # fmt: skip
    table = capsys.readouterr().out
    assert "native" in table and "harness" in table and "exact_match/strict-match" in table
    report = json.loads(out.read_text())
    assert report["engines"] == {"arc_easy": "native", "gsm8k_local": "harness"}
    assert report["results"]["gsm8k_local"]["n"] == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"eval/arc_easy/acc", "eval/gsm8k_local/exact_match/strict-match"} <= set(events.Tags()["scalars"])


def test_eval_callback_accepts_harness_tasks(loaded, files):
    from zoo.eval import EvalCallback

    model, tokenizer, eos = loaded
    data, tasks = files
    callback = EvalCallback(tasks=["arc_easy", "gsm8k_local"], every_n_steps=1, limit=1, data_dir=str(data),
                            include_path=[str(tasks)], num_fewshot=0)  # fmt: skip
    assert [t.name for t in callback.tasks] == ["arc_easy"] and callback.harness_tasks == ["gsm8k_local"]
    results = callback.run_harness(model, tokenizer, eos)["results"]
    assert results["gsm8k_local"]["n"] == 1
    with pytest.raises(ValueError, match="unknown task 'gsm8k_locl'.*gsm8k_local"):
        EvalCallback(tasks=["gsm8k_locl"], every_n_steps=1, include_path=[str(tasks)])
