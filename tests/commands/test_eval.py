"""`python -m zoo eval` end to end on a tiny checkpoint with local task files, and EvalCallback during a fit."""

import json

import pytest
import torch

from tests.helpers import ARC, BLIMP, TINY, write_jsonl
from zoo.data.tokenizer import tokenizer_from_checkpoint


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 2-step fit whose EvalCallback scores arc_easy from a local data dir after step 2."""
    from zoo.commands.fit import ZooCLI

    root = tmp_path_factory.mktemp("evalfit")
    data = root / "data"
    write_jsonl(data / "arc" / "ARC-Easy-test.jsonl", ARC)
    write_jsonl(data / "blimp" / "adjunct_island.jsonl", BLIMP)
    swap = ["--data.tokenizer.init_args.cache_dir", str(root / "tok"), "--trainer.max_steps", "2",
            "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2",
            "--trainer.callbacks+=zoo.eval.EvalCallback", "--trainer.callbacks.tasks=[arc_easy]",
            "--trainer.callbacks.every_n_steps=2", f"--trainer.callbacks.data_dir={data}"]  # fmt: skip
    ZooCLI(args=["fit", *TINY, *swap, "--trainer.default_root_dir", str(root)])
    return root, data, next(root.rglob("last.ckpt"))


def test_eval_command_prints_a_table_and_writes_json_and_tensorboard(fitted, tmp_path, capsys):
    from zoo.cli import main

    root, data, ckpt = fitted
    out = tmp_path / "results.json"
    main(["eval", "--ckpt", str(ckpt), "--tasks", "arc_easy,blimp_adjunct_island", "--data-dir", str(data),
          "--output", str(out), "--tensorboard", str(tmp_path / "tb"), "--batch-size", "2"])  # fmt: skip
    table = capsys.readouterr().out
    assert "arc_easy" in table and "acc_norm" in table and "blimp_adjunct_island" in table
    results = json.loads(out.read_text())
    assert results["results"]["arc_easy"]["n"] == 2 and results["results"]["blimp_adjunct_island"]["n"] == 2
    assert 0.0 <= results["results"]["arc_easy"]["acc"]["value"] <= 1.0
    assert results["global_step"] == 2 and results["elbo"] is False
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert "eval/arc_easy/acc" in events.Tags()["scalars"]
    # --task-file gives the same documents as the data dir
    main(["eval", "--ckpt", str(ckpt), "--tasks", "arc_easy", "--task-file",
          f"arc_easy={data / 'arc' / 'ARC-Easy-test.jsonl'}", "--output", str(tmp_path / "r2.json")])  # fmt: skip
    again = json.loads((tmp_path / "r2.json").read_text())["results"]["arc_easy"]
    assert again["acc"] == results["results"]["arc_easy"]["acc"]


def test_the_score_is_the_models_loglikelihood(fitted):
    """The CLI's arc_easy accuracy follows from the checkpoint's own forward pass on each choice."""
    from zoo.eval.checkpoint import load_model, make_scorer
    from zoo.eval.metrics import evaluate
    from zoo.eval.tasks import resolve

    _, data, ckpt = fitted
    model, tokenizer, eos, _ = load_model(str(ckpt), device="cpu")
    tasks, _ = resolve(["arc_easy"])
    acc = evaluate(tasks, make_scorer(model, tokenizer, eos), data_dir=str(data))["results"]["arc_easy"]["acc"]
    correct = 0
    for doc in ARC:
        context = f"Question: {doc['question']}\nAnswer:"
        lls = []
        for choice in doc["choices"]["text"]:
            ctx = tokenizer.encode(context).ids
            cont = tokenizer.encode(context + " " + choice).ids[len(ctx) :]
            logits = model.backbone(torch.tensor([ctx + cont[:-1]]))[0, -len(cont) :]
            lls.append(logits.log_softmax(-1).gather(1, torch.tensor(cont)[:, None]).sum().item())
        gold = doc["choices"]["label"].index(doc["answerKey"])
        correct += max(range(len(lls)), key=lambda i: (lls[i], -i)) == gold
    assert acc["value"] == correct / len(ARC)


def test_eval_callback_logged_during_fit(fitted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, _ = fitted
    (events_dir,) = {p.parent for p in root.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(events_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"eval/arc_easy/acc", "eval/arc_easy/acc_norm"} <= set(tags)
    assert [e.step for e in events.Scalars("eval/arc_easy/acc")] == [2]


def test_unknown_task_and_missing_tokenizer_messages(fitted, tmp_path, capsys):
    from zoo.commands.eval import main

    _, data, ckpt = fitted
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(ckpt), "--tasks", "arc_easy,hellaswagg"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown task 'hellaswagg'" in err and "closest in zoo's tasks: hellaswag" in err
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    tokenizer, _ = tokenizer_from_checkpoint(checkpoint)
    bare = {k: v for k, v in checkpoint.items() if not (isinstance(v, dict) and "tokenizer" in v)}
    torch.save(bare, tmp_path / "bare.ckpt")
    with pytest.raises(SystemExit):
        main(["--ckpt", str(tmp_path / "bare.ckpt"), "--tasks", "arc_easy", "--data-dir", str(data)])
    assert "--tokenizer path/to/tokenizer.json" in capsys.readouterr().err
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    main(["--ckpt", str(tmp_path / "bare.ckpt"), "--tasks", "arc_easy", "--data-dir", str(data),
          "--tokenizer", str(tmp_path / "tokenizer.json")])  # fmt: skip
    assert "arc_easy" in capsys.readouterr().out


def test_code_task_from_the_command_line(fitted, tmp_path, capsys):
    from zoo.commands.eval import main

    _, _, ckpt = fitted
    problem = {"task_id": "HumanEval/0", "prompt": 'def add(a, b):\n    """Return a + b."""\n', "entry_point": "add",
               "canonical_solution": "    return a + b\n",
               "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}  # fmt: skip
    write_jsonl(tmp_path / "humaneval" / "HumanEval.jsonl", [problem])
    out = tmp_path / "code.json"
    main(["--ckpt", str(ckpt), "--tasks", "humaneval", "--data-dir", str(tmp_path), "--max-new-tokens", "8",
          "--output", str(out), "--unsafe-no-sandbox"])  # fmt: skip
    assert "humaneval" in capsys.readouterr().out
    result = json.loads(out.read_text())["results"]["humaneval"]
    assert result["n"] == 1 and result["pass@1"]["value"] == 0.0  # 2 steps of training write no working code
    for argv, message in ((["--k", "1,x"], "--k '1,x': give positive integers"),
                          (["--n-samples", "3"], "--n-samples 3 with --temperature 0")):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["--ckpt", str(ckpt), "--tasks", "humaneval", "--data-dir", str(tmp_path), *argv])
        assert message in capsys.readouterr().err


def test_eval_callback_refuses_fsdp_on_every_rank():
    from lightning.pytorch.strategies import FSDPStrategy

    from zoo.eval import EvalCallback

    class Trainer:
        strategy = FSDPStrategy.__new__(FSDPStrategy)  # the type is what the callback checks; nothing is set up
        is_global_zero = False  # a rank other than 0 refuses too, so no rank waits for another

    with pytest.raises(ValueError, match="FSDP shards.*python -m zoo eval"):
        EvalCallback(tasks=["arc_easy"], every_n_steps=10).setup(Trainer(), None, "fit")
