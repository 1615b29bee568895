"""Token shards: ``zoo data prepare`` (manifest, reuse, continuing after SIGKILL or a full disk), training from them
(the batch format, token-level weights, exact resume of ``zoo fit`` after SIGKILL, ``s3://`` on a real S3 API on
loopback) and the refusals (another tokenizer, a missing or damaged shard, a source the shards lack)."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tokenizers import Tokenizer

from tests.helpers import BAD_LINES, TINY_RUN, LossLog, callback, data_config, losses, write_corpus
from zoo.cli import main as zoo_main
from zoo.data import Mixture, PackedDataset, PretrainedTokenizer, Source
from zoo.data import prepare as prepare_module
from zoo.data.prepare import PrepareError, prepare
from zoo.data.prepared import PreparedShards, Rows
from zoo.data.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[2]
def write_config(path: Path, data: dict, **run) -> Path:
    path.write_text(yaml.safe_dump({"data": data, **run}))
    return path


def mixture(corpus: Path, prepared: Path | str, **init) -> Mixture:
    config = data_config(corpus, **init)["init_args"]
    return Mixture(sources=[Source(**s) for s in config.pop("sources")],
                   tokenizer=PretrainedTokenizer(path=config.pop("tokenizer")["init_args"]["path"]),
                   prepared=str(prepared), **config)  # fmt: skip


def shard_bytes(folder: Path) -> dict[str, str]:
    """Every file of a prepared folder with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    """An uninterrupted prepare, in pieces of 8 rows."""
    out = tmp_path_factory.mktemp("prepared") / "shards"
    config = write_config(corpus / "run.yaml", data_config(corpus))
    zoo_main(["data", "prepare", "--config", str(config), "--out", str(out), "--piece-documents", "8", "--quiet"])
    return out


# ---- zoo data prepare ------------------------------------------------------------------------------------------


def test_manifest_counts_every_token_document_and_skipped_row(corpus, prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(corpus / "tokenizer.json"))
    assert manifest["tokenizer_fingerprint"] == hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
    assert manifest["vocab_size"] == 512 and manifest["eos_id"] == tokenizer.token_to_id("<|endoftext|>")
    assert manifest["zoo_version"] and manifest["dtype"] == "uint16"
    for source, kind in zip(manifest["sources"], ("prose", "code")):
        lines = (corpus / f"{kind}.jsonl").read_text().splitlines()
        texts = [json.loads(line)["text"] for line in lines[: -len(BAD_LINES)]]
        held_out, trained = texts[:5], texts[5:]  # val_documents: 5
        for split, docs in (("train", trained), ("validation", held_out)):
            expected = sum(len(e.ids) + 1 for e in tokenizer.encode_batch(docs, add_special_tokens=False))
            assert source[split]["documents"] == len(docs)
            assert source[split]["tokens"] == expected
        assert source["train"]["skipped"] == {"malformed": 1, "none": 1}
        # the shards hold the documents in order, an EOS after each
        chunks = sorted((prepared / "train" / source["key"]).glob("chunk-*.bin"))
        assert [name for name, _ in source["train"]["chunks"]] == [c.name for c in chunks]
        stream = np.concatenate([np.fromfile(c, dtype=np.uint16) for c in chunks])
        ids = [x for e in tokenizer.encode_batch(trained, add_special_tokens=False) for x in [*e.ids, 0]]
        assert stream.tolist() == ids


def test_a_finished_prepare_is_reused(corpus, prepared, capsys):
    before = {p: p.stat().st_mtime_ns for p in prepared.rglob("*")}
    zoo_main(["data", "prepare", "--config", str(corpus / "run.yaml"), "--out", str(prepared), "--quiet"])
    assert {p: p.stat().st_mtime_ns for p in prepared.rglob("*")} == before
    assert "--data.prepared" in capsys.readouterr().out


@pytest.mark.slow  # subprocesses killed and restarted
def test_prepare_killed_twice_continues_to_exactly_the_uninterrupted_shards(corpus, prepared, tmp_path):
    out = tmp_path / "shards"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "zoo", "data", "prepare", "--config", str(corpus / "run.yaml"), "--out",
               str(out), "--piece-documents", "8", "--quiet", "--threads", "1"]  # fmt: skip
    for pieces in (2, 6):  # killed once a few pieces are committed, then again further on
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while len(list(out.glob("*/*/piece-*.json"))) < pieces and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (out / "manifest.json").exists(), "the prepare finished before it was killed"
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    assert shard_bytes(out) == shard_bytes(prepared)


def test_a_full_disk_stops_with_a_clear_error_and_nothing_half_written_counts(corpus, prepared, tmp_path, monkeypatch):
    data = mixture(corpus, prepared)
    write, calls = prepare_module._write_piece, []

    def full_after_three(folder, piece, tokens, stats):
        calls.append(piece)
        if len(calls) == 4:
            (folder / f"chunk-{piece:06d}.bin").write_bytes(b"\0" * 10)  # the part written before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device")
        write(folder, piece, tokens, stats)

    monkeypatch.setattr(prepare_module, "_write_piece", full_after_three)
    with pytest.raises(PrepareError, match=r"disk holding .* is full .*run the same command again to continue"):
        prepare(data, tmp_path / "shards", progress=False, piece_documents=8)
    assert not (tmp_path / "shards" / "manifest.json").exists()
    monkeypatch.setattr(prepare_module, "_write_piece", write)
    prepare(data, tmp_path / "shards", progress=False, piece_documents=8)
    assert shard_bytes(tmp_path / "shards") == shard_bytes(prepared)


def test_a_folder_holding_another_prepare_is_refused(corpus, prepared, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="not empty and holds no prepare"):
        prepare(mixture(corpus, prepared), tmp_path / "x", progress=False)
    half = tmp_path / "half"
    half.mkdir()
    (half / "prepare.json").write_text(json.dumps({"tokenizer_fingerprint": "0" * 64, "sources": [], "data": "",
                                                   "piece_documents": 4096}))  # fmt: skip
    with pytest.raises(PrepareError, match="unfinished prepare of other data or another tokenizer"):
        prepare(mixture(corpus, prepared), half, progress=False)


# ---- training from shards --------------------------------------------------------------------------------------


def test_rows_carry_the_packers_document_ids():
    documents = [{"input_ids": [5 + i] * (3 + i % 7)} for i in range(40)]
    packed = list(PackedDataset(documents, seq_len=16, eos_id=0, document_ids=True))
    rows = Rows(eos_id=0, document_ids=True)([row["input_ids"].numpy() for row in packed])
    assert torch.equal(rows["input_ids"], torch.stack([row["input_ids"] for row in packed]))
    assert torch.equal(rows["labels"], rows["input_ids"])
    assert torch.equal(rows["document_ids"], torch.stack([row["document_ids"] for row in packed]))


def test_source_weights_hold_at_token_level_over_a_million_tokens(tmp_path):
    # three sources with disjoint words (so each row names its source), GPT-S-5M's 55/30/15
    rng = np.random.default_rng(0)
    vocab = {"<|endoftext|>": 0}
    for s in range(3):
        words = [f"s{s}w{i}" for i in range(20)]
        for word in words:
            vocab[word] = len(vocab)
        with open(tmp_path / f"s{s}.jsonl", "w") as f:
            for _ in range(1000 * (3 - s)):
                f.write(json.dumps({"text": " ".join(rng.choice(words, rng.integers(20, 200)))}) + "\n")
    from tokenizers import models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "words.json"))
    weights = (0.55, 0.30, 0.15)
    specs = [Source(data_files=str(tmp_path / f"s{s}.jsonl"), weight=w, val_documents=5) for s, w in enumerate(weights)]
    data = Mixture(sources=specs, tokenizer=PretrainedTokenizer(path=str(tmp_path / "words.json")), seq_len=256,
                   batch_size=64, prepared=str(tmp_path / "shards"))  # fmt: skip
    prepare(data, tmp_path / "shards", progress=False)
    data.setup("fit")
    counts, tokens = np.zeros(3), 0
    for batch in data.train_dataloader():  # endless: sources repeat, reshuffled, each at its own pace
        first = batch["input_ids"][:, 1]  # a row's second token is never the only EOS between two documents
        first = torch.where(first == 0, batch["input_ids"][:, 2], first)
        counts += np.bincount(((first - 1) // 20).numpy(), minlength=3) * 256
        tokens += batch["input_ids"].numel()
        if tokens >= 1_000_000:
            break
    assert tokens >= 1_000_000
    np.testing.assert_allclose(counts / counts.sum(), weights, atol=0.01)


def fit_process(config: Path, root: Path, *args: str) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "ZOO_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "zoo", "fit", "--config", str(config),
                             "--trainer.default_root_dir", str(root), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.slow  # subprocesses killed and restarted
def test_fit_from_shards_resumes_bitwise_after_sigkill_twice(corpus, prepared, tmp_path):
    data = data_config(corpus, prepared=str(prepared), num_workers=1)
    config = write_config(tmp_path / "run.yaml", data, **TINY_RUN)

    def log(name, kill_at=None):
        return callback(LossLog, path=str(tmp_path / name), kill_at=kill_at)

    whole = fit_process(config, tmp_path / "whole", log("whole.txt"))
    assert whole.wait(timeout=600) == 0, whole.stdout.read()[-3000:]
    for kill_at in (4, 7):  # killed during step 4 (checkpoint at 2), resumed, killed during step 7 (checkpoint at 6)
        run = fit_process(config, tmp_path / "cut", log("cut.txt", kill_at), "--ckpt_path", "last")
        assert run.wait(timeout=600) == -signal.SIGKILL, run.stdout.read()[-3000:]
    last = fit_process(config, tmp_path / "cut", log("cut.txt"), "--ckpt_path", "last")
    assert last.wait(timeout=600) == 0, last.stdout.read()[-3000:]
    expected, got = losses(tmp_path / "whole.txt"), losses(tmp_path / "cut.txt")  # later lines replace earlier ones
    assert sorted(expected) == sorted(got) == list(range(1, 9))
    assert got == expected  # bitwise: the floats' repr


def test_shards_read_from_s3_give_the_local_rows(prepared, tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ACCESS_KEY_ID": "zoo", "AWS_SECRET_ACCESS_KEY": "zoo", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": f"http://{host}:{port}", "ZOO_CACHE": str(tmp_path)}  # fmt: skip
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="zoo")
        for path in prepared.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "zoo", f"runs/shards/{path.relative_to(prepared)}")
        local, remote = PreparedShards(str(prepared)), PreparedShards("s3://zoo/runs/shards")
        remote.check_files()
        pairs = [(s["key"], s["weight"]) for s in local.manifest["sources"]]
        kwargs = {"split": "train", "seq_len": 32, "batch_size": 4, "num_workers": 0, "seed": 0,
                  "document_ids": True, "eos_id": 0, "world_size": 1}  # fmt: skip
        expected = [b["input_ids"] for _, b in zip(range(20), local.loader(pairs, **kwargs))]
        got = [b["input_ids"] for _, b in zip(range(20), remote.loader(pairs, **kwargs))]
        assert len(got) == 20 and all(torch.equal(a, b) for a, b in zip(expected, got))
        s3.delete_object(Bucket="zoo", Key=f"runs/shards/train/{pairs[1][0]}/chunk-000000.bin")
        with pytest.raises(ValueError, match=r"shard train/.*/chunk-000000.bin of source .*code.jsonl is missing"):
            remote.check_files()
    finally:
        server.stop()


# ---- refusals --------------------------------------------------------------------------------------------------


def test_shards_of_another_tokenizer_are_refused_naming_both(corpus, prepared, tmp_path):
    other = tmp_path / "other.json"
    texts = [json.loads(line)["text"] for line in (corpus / "code.jsonl").read_text().splitlines()[:-2]]
    train_bpe(texts, vocab_size=300).save(str(other))
    data = mixture(corpus, prepared)
    data.tokenizer_source = PretrainedTokenizer(path=str(other))
    theirs = json.loads((prepared / "manifest.json").read_text())["tokenizer_fingerprint"][:16]
    ours = hashlib.sha256(Tokenizer.from_file(str(other)).to_str().encode()).hexdigest()[:16]
    with pytest.raises(ValueError, match=rf"another tokenizer \(sha256 {theirs}\).*\(tokenizer sha256 {ours}\).*"
                                         r"prepare this config again.*tokenizer.json"):  # fmt: skip
        data.setup("fit")


def test_a_missing_or_damaged_shard_is_named_with_its_source(corpus, prepared, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    chunk = sorted((copy / "train").glob("*prose*/chunk-000001.bin"))[0]
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"chunk-000001.bin of source .*prose.jsonl is \d+ bytes, not \d+ \(damaged"):
        mixture(corpus, copy).setup("fit")
    chunk.unlink()
    with pytest.raises(ValueError, match=r"chunk-000001.bin of source .*prose.jsonl is missing"):
        mixture(corpus, copy).setup("fit")


def test_a_weighted_source_the_shards_lack_is_named(corpus, prepared, tmp_path):
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"text": "x"}\n' * 10)
    data = mixture(corpus, prepared)
    data.source_specs.append(Source(data_files=str(extra), weight=0.2, val_documents=1))
    with pytest.raises(ValueError, match=rf"data source {extra} \(weight 0.2\) is not in data.prepared=.*which holds"):
        data.setup("fit")


def test_a_folder_that_is_no_prepare_is_named(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"holds no manifest.json: it is not a finished"):
        mixture(corpus, tmp_path).setup("fit")


def test_an_unreachable_hub_source_is_refused_in_seconds_and_nothing_is_written(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ZOO_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "zoo", "data", "prepare", "--config", str(ROOT / "configs/recipes/gpt-s-5m.yaml"),
         "--out", str(tmp_path / "shards")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode != 0
    assert "zoo data prepare: data source path='HuggingFaceFW/fineweb-edu'" in result.stderr, result.stderr[-3000:]
    assert "point the source at them" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "shards" / "manifest.json").exists()
