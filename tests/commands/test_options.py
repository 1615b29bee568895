"""zoo's own subcommands parse with jsonargparse from the signatures they call: every spelling the README and the
tests use still parses (dashes, bare flags, repeated list options), ``--config`` files set options, a wrong type is
one line with exit status 2, and ``--help`` lists the documented arguments."""

import pytest

from zoo.commands import checkpoint, data, export, info, tokenizer
from zoo.commands import eval as eval_command
from zoo.commands.errors import ParserError


def test_eval_keeps_its_spellings_and_reads_a_config_file(tmp_path):
    args = eval_command.parser().parse_args([
        "--ckpt", "last.ckpt", "--tasks", "arc_easy,piqa", "--limit", "10", "--data-dir", "/data/eval",
        "--task-file", "arc_easy=a.jsonl", "--task-file", "piqa=p.jsonl", "--include", "t.yaml", "--batch-size", "4",
        "--eos-token", "<eos>", "--engine", "harness", "--include-path", "tasks/", "--num-fewshot", "5",
        "--apply-chat-template", "--chat-format", "alpaca", "--mc-num", "8", "--n-samples", "2", "--k", "1,10",
        "--max-new-tokens", "16", "--memory-mb", "512", "--unsafe-no-sandbox", "--trust-checkpoint",
    ])  # fmt: skip
    assert args.task_file == ["arc_easy=a.jsonl", "piqa=p.jsonl"] and args.include_path == ["tasks/"]
    assert args.limit == 10 and args.batch_size == 4 and args.num_fewshot == 5 and args.memory_mb == 512
    assert args.apply_chat_template is True and args.unsafe_no_sandbox is True and args.trust_checkpoint is True
    assert args.eos_token == "<eos>" and args.engine == "harness" and args.k == "1,10"
    options = tmp_path / "eval.yaml"
    options.write_text("tasks: arc_easy\nlimit: 3\ntask_file: [arc_easy=a.jsonl]\nmc_num: 16\n")
    args = eval_command.parser().parse_args(["--config", str(options), "--ckpt", "last.ckpt", "--limit", "5"])
    assert (args.tasks, args.limit, args.task_file, args.mc_num) == ("arc_easy", 5, ["arc_easy=a.jsonl"], 16)
    assert args.trust_checkpoint is None and args.apply_chat_template is False  # defaults of the signature


def test_export_keeps_its_spellings():
    args = export.parser().parse_args(["--ckpt", "c.ckpt", "--out", "dir", "--format", "gguf", "--outtype", "q8_0",
                                       "--overwrite", "--eval-results", "r.json", "--license", "apache-2.0",
                                       "--dtype", "bfloat16", "--eos-token", "<e>", "--tokenizer", "t.json"])
    assert (args.format, args.outtype, args.overwrite, args.eval_results) == ("gguf", "q8_0", True, "r.json")
    assert (args.dtype, args.eos_token, args.tokenizer, args.trust_checkpoint) == ("bfloat16", "<e>", "t.json", None)


def test_subcommands_keep_their_spellings():
    args = tokenizer.parser().parse_args(["train", "--config", "run.yaml", "--vocab-size", "320", "--min-frequency",
                                          "3", "--special-tokens", "<a>,<b>", "--documents", "9", "--output", "o"])
    assert (args.train.vocab_size, args.train.min_frequency, args.train.special_tokens) == (320, 3, "<a>,<b>")
    args, overrides = data.prepare_parser().parse_known(["--config", "a.yaml", "--config", "b.yaml", "--out", "o",
                                                         "--data.seq_len", "64", "--piece-documents", "8", "--quiet"])
    assert (args.config, args.out, args.piece_documents, args.quiet) == (["a.yaml", "b.yaml"], "o", 8, True)
    assert overrides == ["--data.seq_len", "64"]
    args = checkpoint.parser().parse_args(["convert", "old.ckpt", "new.ckpt", "--i-trust-this-file"])
    assert (str(args.convert.old), str(args.convert.new), args.convert.i_trust_this_file) == ("old.ckpt", "new.ckpt",
                                                                                              True)  # fmt: skip
    args, overrides = info.parser().parse_known(["--config", "m.yaml", "--model.backbone.init_args.n_layers", "12"])
    assert [str(p) for p in args.config] == ["m.yaml"] and overrides == ["--model.backbone.init_args.n_layers", "12"]


@pytest.mark.parametrize("argv, message", [
    (["--ckpt", "c", "--tasks", "t", "--limit", "ten"], "limit: expected a value of type int"),
    (["--ckpt", "c", "--tasks", "t", "--engine", "nope"], "engine=nope"),
    (["--ckpt", "c", "--tasks", "t", "--batch-sise", "4"], "--batch-sise is not an option"),
    (["--ckpt", "c"], "the following arguments are required: tasks"),
])  # fmt: skip
def test_a_parse_error_is_one_line_with_status_2(argv, message, capsys):
    with pytest.raises(ParserError, match=message):
        eval_command.parser().parse_args(argv)
    with pytest.raises(SystemExit) as exit_:
        eval_command.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo eval: ") and err.count("\n") == 1 and message.split(":")[0] in err


def test_help_lists_the_signatures_documented_arguments(capsys):
    for parser, expected in ((eval_command.parser(), "Monte-Carlo samples per ELBO"),
                             (export.parser(), "GGUF tensor type"),
                             (info.parser(), "a backbone config or a run config"),
                             (data.prepare_parser(), "source rows per shard piece")):  # fmt: skip
        with pytest.raises(SystemExit):
            parser.parse_args(["--help"])
        assert expected in " ".join(capsys.readouterr().out.split())  # help wraps its lines
