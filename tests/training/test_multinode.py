"""Two nodes × one process on loopback: each node is its own `python -m zoo fit` process with the environment
torchrun sets on a node (``MASTER_ADDR``/``MASTER_PORT``, ``NODE_RANK``/``GROUP_RANK``, ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``), the trainer asks for ``num_nodes=2, devices=1`` with DDP over gloo, and
Lightning (its torchelastic cluster environment) does the rest, as on two machines.

Compared with one process at the same global batch on :class:`tests.helpers.Numbered` (one row per document,
no shuffling, so both layouts see identical global batches; see tests/training/test_ddp.py): node r reads documents r,
r + 2, …, the two nodes' rows together are the one-process batch, the mean of their losses follows the
one-process losses to float rounding, and a checkpoint the two nodes wrote at step 3 resumes on two nodes with
steps 4–6 identical (rows and losses) to the uninterrupted run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import WORDS, communicate_all, free_port, node_env, read_jsonl, run_config, word_tokenizer

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
pytestmark = pytest.mark.slow  # two nodes of processes training four runs


def config(tmp: Path, name: str, *, nodes: int, batch_size: int) -> Path:
    run = run_config(tmp, name, batch_size=batch_size, num_nodes=nodes, max_steps=STEPS)
    run["checkpoint"] = {"dirpath": str(tmp / name / "checkpoints"), "every_n_train_steps": 3, "save_top_k": -1,
                         "save_last": False, "filename": "{step}"}  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(run))
    return path


def launch(tmp: Path, name: str, *, nodes: int, batch_size: int, extra: tuple[str, ...] = ()) -> list[Path]:
    """Run ``zoo fit`` as ``nodes`` nodes of one process each (a plain run for 1); the BatchLog files per rank."""
    path = config(tmp, name, nodes=nodes, batch_size=batch_size)
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "ZOO_CACHE": str(tmp), "OMP_NUM_THREADS": "1"}
    if "PYTHONPATH" in os.environ:
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    port = str(free_port())
    procs = []
    for node in range(nodes):
        env = dict(base)
        if nodes > 1:  # as torchrun --nnodes=2 --nproc-per-node=1 --node-rank=<node> sets it on each node
            env.update(node_env(node, nodes, port, "zoo-loopback"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "zoo", "fit", "--config", str(path), *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    outputs = communicate_all(procs)
    for node, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"node {node} of {name} failed:\n{out[-3000:]}"
    return [tmp / f"{name}.rank{rank}" for rank in range(nodes)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    word_tokenizer(tmp / "t.json", documents=64)
    (one,) = launch(tmp, "one", nodes=1, batch_size=4)
    nodes = launch(tmp, "two", nodes=2, batch_size=2)
    step3 = tmp / "two" / "checkpoints" / "step=3.ckpt"
    assert step3.is_file(), sorted(p.name for p in (tmp / "two").rglob("*"))
    resumed = launch(tmp, "resumed", nodes=2, batch_size=2, extra=("--ckpt_path", str(step3)))
    return read_jsonl(one), [read_jsonl(p) for p in nodes], [read_jsonl(p) for p in resumed]


def test_two_nodes_read_disjoint_shards_that_make_the_single_process_global_batch(runs):
    one, (node0, node1), _ = runs
    doc = {1 + WORDS + i: i for i in range(64)}  # token id of d{i} -> i
    assert len(one) == len(node0) == len(node1) == STEPS
    for step, (single, a, b) in enumerate(zip(one, node0, node1), start=1):
        assert single["step"] == a["step"] == b["step"] == step
        assert len(a["rows"]) == len(b["rows"]) == 2 and len(single["rows"]) == 4  # global batch 4 = 2 nodes × 2
        assert [doc[t] for t in a["rows"]] == [4 * (step - 1), 4 * (step - 1) + 2]  # node 0: even documents
        assert [doc[t] for t in b["rows"]] == [4 * (step - 1) + 1, 4 * (step - 1) + 3]  # node 1: odd ones
        assert sorted(a["rows"] + b["rows"]) == sorted(single["rows"])
    assert not {t for s in node0 for t in s["rows"]} & {t for s in node1 for t in s["rows"]}


def test_two_nodes_follow_the_single_process_losses(runs):
    one, (node0, node1), _ = runs
    single = torch.tensor([s["loss"] for s in one], dtype=torch.float64)
    both = torch.tensor([(a["loss"] + b["loss"]) / 2 for a, b in zip(node0, node1)], dtype=torch.float64)
    assert single[0] - single[-1] > 0.1  # it trains, so later steps test the all-reduced updates
    torch.testing.assert_close(both, single, rtol=0, atol=2e-6)


def test_a_two_node_checkpoint_resumes_on_two_nodes_where_it_stopped(runs):
    _, nodes, resumed = runs
    for rank, (full, again) in enumerate(zip(nodes, resumed)):
        assert [s["step"] for s in again] == [4, 5, 6], f"rank {rank}"
        assert [s["rows"] for s in again] == [s["rows"] for s in full[3:]], f"rank {rank}: data position"
        torch.testing.assert_close([s["loss"] for s in again], [s["loss"] for s in full[3:]], rtol=0, atol=1e-6)
