"""Validation loss against wall time for runs of ``zoo fit``, read from their TensorBoard logs: each run's validation
points with the seconds since its first logged training step, and when each run first reaches the final validation
loss of the first run named (linear between validation points).

    python -m zoo fit --config configs/quickstart.yaml --trainer.val_check_interval 50 --trainer.default_root_dir A &
    python -m zoo fit --config configs/recipes/quickstart-muon.yaml --trainer.val_check_interval 50 \\
        --trainer.default_root_dir B &                   # both at once: the machine's load falls on both alike
    python benchmarks/loss_at_wall_time.py A B

The clock starts at the first ``train/loss`` event, so start-up (imports, the tokenizer, the data) is left out;
validation passes count, alike for both (the same model size, batches and interval).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def curve(run: Path) -> tuple[list[tuple[int, float, float]], int]:
    """``[(step, seconds, val/loss), ...]`` and the last training step logged, from the newest event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = max(run.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    train = acc.Scalars("train/loss")
    start = train[0].wall_time
    return [(e.step, e.wall_time - start, e.value) for e in acc.Scalars("val/loss")], train[-1].step


def reaches(points: list[tuple[int, float, float]], target: float) -> float | None:
    """The first time (s) the validation loss is at or below ``target``, linear between points; ``None`` if never."""
    for (_, t0, v0), (_, t1, v1) in zip([(0, 0.0, float("inf"))] + points, points):
        if v1 <= target:
            return t1 if v0 == float("inf") else t0 + (t1 - t0) * (v0 - target) / (v0 - v1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (default_root_dir); the first is the reference")
    parser.add_argument("--smoke", action="store_true", help="read two small logs written here, check the crossing")
    args = parser.parse_args()
    if args.smoke:
        args.runs = smoke_logs()
    elif not args.runs:
        parser.error("name at least one run folder")
    curves = {run: curve(run) for run in args.runs}
    target = curves[args.runs[0]][0][-1][2]
    for run, (points, last) in curves.items():
        print(f"{run}: trained to step {last}")
        for step, seconds, loss in points:
            print(f"  step {step + 1:4d}  {seconds:7.0f} s  val/loss {loss:.3f}")
        at = reaches(points, target)
        print(f"  reaches {target:.3f} (the first run's final val/loss) at "
              + ("never" if at is None else f"{at:.0f} s, {at / points[-1][1]:.2f} of its own run time"))  # fmt: skip


def smoke_logs() -> list[Path]:
    """Two TensorBoard logs of a few points each (the second run falls faster), in a temporary folder, checked."""
    import tempfile
    import time

    from torch.utils.tensorboard import SummaryWriter

    root = Path(tempfile.mkdtemp(prefix="loss-at-wall-time-"))
    start = time.time()
    for name, losses in (("a", [6.0, 5.5, 5.0]), ("b", [5.8, 5.0, 4.5])):
        writer = SummaryWriter(str(root / name))
        writer.add_scalar("train/loss", 7.0, 0, walltime=start)
        for i, loss in enumerate(losses, 1):
            writer.add_scalar("val/loss", loss, i * 10, walltime=start + 10.0 * i)
        writer.close()
    at = reaches(curve(root / "b")[0], target=5.0)
    assert at is not None and abs(at - 20.0) < 1e-6, at  # run b is at 5.0 at its second point, 20 s in
    return [root / "a", root / "b"]


if __name__ == "__main__":
    main()
