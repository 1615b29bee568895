"""SFT data: exact label masks per format, truncation, packing without cross-example attention or loss, bad rows."""

from __future__ import annotations

import ast
import json

import pytest
import torch

from tests.helpers import tiny_backbone
from zoo.data import Alpaca, Chat, SFTDataModule, SFTSource, Template, UserAssistant, train_bpe
from zoo.data.corpus import stdlib_functions, stdlib_shards
from zoo.data.formats import ALPACA, ALPACA_WITH_INPUT
from zoo.data.sft import PackedExamples, _render, encode, split_signed, truncate
from zoo.data.tokenizer import EOS, PretrainedTokenizer
from zoo.nn import GroupedQueryAttention, Transformer
from zoo.nn.masks import document_mask
from zoo.objectives import CausalLM, MaskedDiffusionLM

TEXT = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nAdd two numbers.\n\n### Response:\nreturn x + y\n",
    "User: What is two plus two?\nAssistant: Four. System: be brief. def add(x, y): return x + y",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXT, vocab_size=300, special_tokens=[EOS])


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


def labelled(tokenizer, format, row, spec=None):
    rendered = _render(row, spec=spec or SFTSource(path="json", data_files="x.jsonl"), format=format)
    eos = tokenizer.token_to_id(EOS)
    return split_signed(encode(rendered["text"], rendered["train"], tokenizer=tokenizer, eos_id=eos)), eos


@pytest.mark.parametrize("extra", ["", "x = 1, y = 2"])
def test_alpaca_masks_the_prompt_exactly(tokenizer, extra):
    row = {"instruction": "Add two numbers.", "input": extra, "output": "return x + y"}
    (input_ids, labels), eos = labelled(tokenizer, Alpaca(), row)
    template = ALPACA_WITH_INPUT if extra else ALPACA
    prompt = ids(tokenizer, template.format(instruction="Add two numbers.", input=extra))
    answer = ids(tokenizer, "return x + y") + [eos]
    assert input_ids == prompt + answer
    assert labels == [-100] * len(prompt) + answer


def test_user_assistant_masks_the_prompt_exactly(tokenizer):
    row = {"instruction": "What is two plus two?", "output": " Four."}
    (input_ids, labels), eos = labelled(tokenizer, UserAssistant(), row)
    prompt = ids(tokenizer, "User: What is two plus two?\nAssistant: ")
    answer = ids(tokenizer, "Four.") + [eos]  # the answer's leading space is dropped: the prompt ends with one
    assert input_ids == prompt + answer
    assert labels == [-100] * len(prompt) + answer


def test_chat_trains_on_assistant_turns_only(tokenizer):
    messages = [
        {"role": "system", "content": "be brief."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "Add two numbers."},
        {"role": "assistant", "content": "return x + y"},
    ]
    (input_ids, labels), eos = labelled(tokenizer, Chat(), {"messages": messages})
    pieces = [
        (ids(tokenizer, "System: be brief.\n"), False),
        (ids(tokenizer, "User: What is two plus two?\n"), False),
        (ids(tokenizer, "Assistant: "), False),
        (ids(tokenizer, "Four.") + [eos], True),
        (ids(tokenizer, "User: Add two numbers.\n"), False),
        (ids(tokenizer, "Assistant: "), False),
        (ids(tokenizer, "return x + y") + [eos], True),
    ]
    assert input_ids == [t for piece, _ in pieces for t in piece]
    assert labels == [t if train else -100 for piece, train in pieces for t in piece]
    assert Chat().prompt("Hi") == "User: Hi\nAssistant: "


def test_template_from_yaml_uses_the_rows_own_columns(tokenizer):
    spec = SFTSource(path="json", data_files="x.jsonl", instruction_field="question", response_field="answer")
    row = {"question": "What is two plus two?", "answer": "Four.", "topic": "math"}
    fmt = Template(prompt="[{topic}] Q: {question}\nA:", response=" {answer}")
    (input_ids, labels), eos = labelled(tokenizer, fmt, row, spec)
    prompt = ids(tokenizer, "[math] Q: What is two plus two?\nA:")
    assert input_ids == prompt + ids(tokenizer, " Four.") + [eos]
    assert labels[: len(prompt)] == [-100] * len(prompt)
    with pytest.raises(ValueError, match="names no field"):
        Template(prompt="Q: {question}", response="fixed")


def test_truncation_keeps_the_end_of_the_prompt_then_cuts():
    signed = [-1 - t for t in range(10)] + list(range(100, 110))  # 10 prompt tokens, 10 trained
    kept = truncate(signed, seq_len=8, max_prompt_tokens=3)
    assert kept == [-1 - 7, -1 - 8, -1 - 9, 100, 101, 102, 103, 104]
    assert truncate(signed, seq_len=15, max_prompt_tokens=12) == signed[:15]


def test_bad_rows_become_none():
    spec = SFTSource(path="json", data_files="x.jsonl")
    for row in [{"instruction": "x"}, {"instruction": "x", "output": None}, {"instruction": "x", "output": 3},
                {"instruction": " ", "output": "y"}, {"messages": [{"role": "robot", "content": "hi"}]}]:  # fmt: skip
        assert _render(row, spec=spec, format=Chat())["text"] is None


def packed_rows(examples, seq_len, pack=True):
    return list(PackedExamples([{"input_ids": e} for e in examples], seq_len=seq_len, eos_id=0, pack=pack))


def test_packing_keeps_examples_whole_and_masks_each_first_token():
    a = [-2, -3, 5, 6]  # prompt 1, 2; answer 5, 6
    b = [-4, 7, 8]
    c = [-5, -6, -7, 9, 9]
    rows = packed_rows([a, b, c], seq_len=8)
    assert len(rows) == 2  # a + b fit in 8; c starts a new row
    first, second = rows
    assert first["input_ids"].tolist() == [1, 2, 5, 6, 3, 7, 8, 0]
    assert first["labels"].tolist() == [-100, -100, 5, 6, -100, 7, 8, -100]
    assert first["document_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1, -1]
    assert second["document_ids"].tolist() == [0] * 5 + [-1] * 3
    unpacked = packed_rows([a, b], seq_len=8, pack=False)
    assert [r["input_ids"].tolist() for r in unpacked] == [[1, 2, 5, 6], [3, 7, 8]]


def backbone(causal: bool) -> Transformer:
    return tiny_backbone(attention=lambda d: GroupedQueryAttention(d, n_heads=4, n_kv_heads=2, causal=causal))


def test_packed_causal_loss_equals_the_examples_losses_apart():
    torch.manual_seed(0)
    model = CausalLM(backbone=backbone(causal=True)).eval()
    a = [-1 - t for t in (3, 4, 5)] + [10, 11, 12, 13]
    b = [-1 - t for t in (6, 7)] + [20, 21, 22]
    packed = torch.utils.data.default_collate(packed_rows([a, b], seq_len=16))
    alone = [torch.utils.data.default_collate(packed_rows([e], seq_len=len(e))) for e in (a, b)]
    with torch.no_grad():
        loss, n = model.loss(packed)
        parts = [model.loss(batch) for batch in alone]
    assert n == sum(p[1] for p in parts) == 7
    expected = sum(p[0] * p[1] for p in parts) / n
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    # without the document mask the second example would see the first: its logits differ
    with torch.no_grad():
        kept = model.backbone(packed["input_ids"], mask=document_mask(packed, causal=True))[0, len(a) : len(a) + len(b)]
        seen = model.backbone(packed["input_ids"])[0, len(a) : len(a) + len(b)]
    assert (kept - seen).abs().max() > 1e-3


def test_packed_rows_never_attend_across_examples_bidirectionally():
    torch.manual_seed(0)
    model = MaskedDiffusionLM(backbone=backbone(causal=False), mask_id=63).eval()
    a = [-1 - t for t in (3, 4)] + [10, 11, 12]
    b = [-1 - t for t in (6, 7)] + [20, 21, 22]
    batch = torch.utils.data.default_collate(packed_rows([a, b], seq_len=12))
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, :5] = torch.tensor([30, 31, 32, 33, 34])  # rewrite example a entirely
    mask = document_mask(batch)
    with torch.no_grad():
        before = model.backbone(batch["input_ids"], mask=mask)
        after = model.backbone(changed["input_ids"], mask=mask)
        unmasked = model.backbone(changed["input_ids"])
    torch.testing.assert_close(before[0, 5:10], after[0, 5:10])  # example b and the padding cannot tell
    assert not torch.allclose(before[0, 5:10], unmasked[0, 5:10])


@pytest.fixture
def sft_file(tmp_path):
    rows = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"{2 * i + 1}"} for i in range(40)]
    rows += [{"instruction": "broken"}, {"instruction": "x", "output": None}, {"instruction": 5, "output": "y"}]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def module(sft_file, tokenizer, tmp_path, **kwargs):
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    spec = SFTSource(data_files=str(sft_file), val_documents=5)
    kwargs = {"seq_len": 48, "batch_size": 4, "format": Alpaca(), "shuffle_buffer": 8, **kwargs}
    dm = SFTDataModule(sources=[spec], tokenizer=PretrainedTokenizer(path=str(tmp_path / "tokenizer.json")), **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("pack", [False, True])
def test_data_module_batches_and_counts_bad_rows(sft_file, tokenizer, tmp_path, pack):
    dm = module(sft_file, tokenizer, tmp_path, pack=pack)
    loader = dm.train_dataloader()
    batches = [b for _, b in zip(range(12), loader)]  # > 1 pass over the 35 training rows
    for batch in batches:
        trained = batch["labels"] != -100
        assert trained.any(dim=1).all()  # every row has a trained answer
        assert (batch["document_ids"][~trained.any(dim=1, keepdim=True).expand_as(trained)] >= -1).all()
        assert (batch["labels"][batch["document_ids"] == -1] == -100).all()  # no loss on padding
        if pack:
            assert batch["input_ids"].shape[1] == 48
    assert sum(int(b["skipped"].sum()) for b in batches) >= 3  # the 3 bad rows, once per pass
    answers = set()
    for batch in batches:
        for row_labels, row_docs in zip(batch["labels"], batch["document_ids"]):
            for d in row_docs.unique().tolist():
                if d >= 0:
                    keep = (row_docs == d) & (row_labels != -100)
                    answers.add(tokenizer.decode(row_labels[keep].tolist()))
    assert answers <= {f"{2 * i + 1}" for i in range(5, 40)}  # only training rows (the first 5 are held out)
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"].shape[0] >= 1


def test_data_module_resumes_with_the_next_batch(sft_file, tokenizer, tmp_path):
    dm = module(sft_file, tokenizer, tmp_path, pack=True)
    loader = dm.train_dataloader()
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    state = loader.state_dict()
    expected = [next(iterator) for _ in range(3)]
    resumed = module(sft_file, tokenizer, tmp_path, pack=True).train_dataloader()
    resumed.load_state_dict(state)
    got = [b for _, b in zip(range(4), resumed)][1:]  # the first is the saved in-flight batch
    for a, b in zip(expected, got):
        for key in ("input_ids", "labels", "document_ids"):
            assert torch.equal(a[key], b[key])


def test_embedded_instruction_set_is_python_with_docstring_summaries():
    rows = list(stdlib_functions(stdlib_shards("functions")[:40]))
    assert len(rows) >= 10
    writes = [r for r in rows if r["instruction"].startswith("Write")]
    explains = [r for r in rows if r["instruction"].startswith("Explain")]
    assert len(writes) == len(explains)
    for row in writes:
        tree = ast.parse(row["output"])
        assert isinstance(tree.body[0], ast.FunctionDef)
        assert f"`{tree.body[0].name}(" in row["instruction"]
    for row in explains:
        assert row["output"] not in row["input"]  # the docstring is taken out of the code to explain
