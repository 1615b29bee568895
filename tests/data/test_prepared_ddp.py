"""Token shards on two nodes × one process on loopback (the environment torchrun sets, as in
tests/training/test_multinode.py), each with two DataLoader workers: every rank and worker reads its own rows (none
read twice), and a checkpoint both nodes wrote resumes on two nodes with each rank's rows and losses unchanged."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from tests.helpers import TINY_RUN, callback, communicate_all, data_config, free_port, node_env, write_corpus
from zoo.cli import main as zoo_main

pytestmark = pytest.mark.slow  # two nodes of processes with two workers each

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6


class RowLog(L.Callback):
    """Writes each training step of this rank to ``{path}.rank{global_rank}``: the step, the loss and every row."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        line = {"step": trainer.global_step, "loss": outputs["loss"].item(), "rows": batch["input_ids"].tolist()}
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(line) + "\n")


def launch(tmp: Path, config: Path, name: str, *extra: str) -> list[list[dict]]:
    port = str(free_port())
    procs = []
    for node in range(2):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "ZOO_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)), **node_env(node, 2, port, "zoo-prepared")}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "zoo", "fit", "--config", str(config), "--trainer.default_root_dir", str(tmp / name),
             callback(RowLog, path=str(tmp / name)), *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    outputs = communicate_all(procs)
    for node, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"node {node} of {name} failed:\n{out[-3000:]}"
    return [[json.loads(line) for line in (tmp / f"{name}.rank{r}").read_text().splitlines()] for r in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prepared-ddp")
    corpus = write_corpus(tmp / "corpus")
    shards = tmp / "shards"
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump({"data": data_config(corpus)}))
    zoo_main(["data", "prepare", "--config", str(config), "--out", str(shards), "--quiet"])
    run = {**TINY_RUN, "data": data_config(corpus, prepared=str(shards), num_workers=2)}
    run["trainer"] = {**TINY_RUN["trainer"], "max_steps": STEPS, "num_nodes": 2, "devices": 1, "strategy": "ddp"}
    run["checkpoint"] = {"dirpath": str(tmp / "two" / "checkpoints"), "every_n_train_steps": 3, "save_top_k": -1,
                         "save_last": False, "filename": "{step}"}  # fmt: skip
    config.write_text(yaml.safe_dump(run))
    nodes = launch(tmp, config, "two")
    resumed = launch(tmp, config, "resumed", "--ckpt_path", str(tmp / "two" / "checkpoints" / "step=3.ckpt"))
    return nodes, resumed


def test_ranks_and_workers_read_disjoint_rows(runs):
    nodes, _ = runs
    rows = [[tuple(row) for step in rank for row in step["rows"]] for rank in nodes]
    assert [len(r) for r in rows] == [STEPS * 4, STEPS * 4]
    assert len(set(rows[0])) == len(rows[0]) and len(set(rows[1])) == len(rows[1])  # workers: no row twice
    assert not set(rows[0]) & set(rows[1])  # ranks: disjoint


def test_a_two_node_checkpoint_resumes_each_rank_where_it_stopped(runs):
    nodes, resumed = runs
    for rank, (full, again) in enumerate(zip(nodes, resumed)):
        assert [s["step"] for s in again] == [4, 5, 6], f"rank {rank}"
        assert [s["rows"] for s in again] == [s["rows"] for s in full[3:]], f"rank {rank}: data position"
        assert [s["loss"] for s in again] == [s["loss"] for s in full[3:]], f"rank {rank}"
