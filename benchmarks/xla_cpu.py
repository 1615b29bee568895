"""The XLA path on a machine without a TPU: ``python -m zoo fit`` through Lightning's XLA strategy on torch_xla's
CPU device (``PJRT_DEVICE=CPU``), against the same run on the plain CPU accelerator, in one run.

What it shows: the model, objective and data code run unchanged under XLA (lazy tensors, graph compilation); the
strategy is a config change. Lightning's ``XLAAccelerator`` only counts TPU chips, so on a CPU it reports no device;
:class:`XLACPUAccelerator` below (a test harness, not part of zoo) reports the one CPU PJRT device instead, and
everything else is Lightning's own ``SingleDeviceXLAStrategy``. On a TPU VM use ``configs/trainer/xla.yaml`` as
it is.

Needs torch_xla, whose wheels pin one torch release each, so it lives in its own environment::

    python3 -m venv /tmp/xla && /tmp/xla/bin/pip install torch==2.9.0 torch-xla==2.9.0 -e .
    PJRT_DEVICE=CPU /tmp/xla/bin/python benchmarks/xla_cpu.py --steps 20

Prints the training losses of both runs step by step, their largest difference, and the seconds per step after
the first steps (XLA compiles a graph for the first shapes it sees).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch.accelerators import XLAAccelerator

ROOT = Path(__file__).resolve().parents[1]


class XLACPUAccelerator(XLAAccelerator):
    """Identical to Lightning's ``XLAAccelerator`` except: it counts torch_xla's CPU PJRT device (one) instead of TPU
    chips, so the XLA strategy can run where there is no TPU."""

    @staticmethod
    def is_available() -> bool:
        return os.environ.get("PJRT_DEVICE") == "CPU"

    @staticmethod
    def auto_device_count() -> int:
        return 1


def fit(args, root: Path, xla: bool) -> tuple[list[float], float]:
    """Run the quickstart model for ``args.steps`` steps; return its per-step training losses and wall seconds."""
    losses = root / "losses.jsonl"
    trainer = (["--trainer.accelerator", "xla_cpu.XLACPUAccelerator", "--trainer.strategy",
                "lightning.pytorch.strategies.SingleDeviceXLAStrategy", "--trainer.strategy.device", "xla:0",
                "--trainer.precision", "32-true"] if xla else ["--trainer.accelerator", "cpu"])  # fmt: skip
    cmd = [sys.executable, "-m", "zoo", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
           "--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps),
           "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1", "--trainer.devices", "1",
           "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
           "--data.batch_size", str(args.batch_size), *trainer]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    seconds = time.perf_counter() - start
    import csv

    (metrics,) = root.rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/loss")]
    losses.write_text("".join(json.dumps({"step": int(r["step"]), "loss": float(r["train/loss"])}) + "\n"
                              for r in rows))  # fmt: skip
    return [float(r["train/loss"]) for r in rows], seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="training steps of each run (default: 20)")
    p.add_argument("--batch-size", type=int, default=4, help="rows of 256 tokens per step (default: 4)")
    args = p.parse_args()
    if os.environ.get("PJRT_DEVICE") != "CPU":
        sys.exit("set PJRT_DEVICE=CPU (torch_xla's CPU device) to run this check")
    import torch
    import torch_xla

    print(f"torch {torch.__version__}, torch_xla {torch_xla.__version__}, {args.steps} steps of "
          f"{args.batch_size} x 256 tokens, quickstart model, fp32")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        xla, xla_s = fit(args, Path(tmp) / "xla", xla=True)
        cpu, cpu_s = fit(args, Path(tmp) / "cpu", xla=False)
    print("step  loss (XLA CPU)  loss (CPU)")
    for i, (a, b) in enumerate(zip(xla, cpu)):
        print(f"{i + 1:4d}  {a:13.5f}  {b:10.5f}")
    diff = max(abs(a - b) for a, b in zip(xla, cpu))
    print(f"largest loss difference: {diff:.2e} over {min(len(xla), len(cpu))} logged steps")
    print(f"whole run: XLA {xla_s:.1f} s, CPU {cpu_s:.1f} s (ratio CPU/XLA {cpu_s / xla_s:.2f}; XLA includes graph "
          "compilation)")  # fmt: skip


if __name__ == "__main__":
    main()
