"""Sandbox overhead: programs/s the code sandbox runs with namespace isolation (bubblewrap) against the same
sandbox without it (resource limits and the prelude only), on the same machine in one run.

The program is trivial (``assert 1 + 1 == 2``), so the figure is the per-program cost a HumanEval run
(164 problems × n samples) pays on top of its programs' own work. Both modes run the same number of programs,
``--workers`` at a time (as ``zoo eval`` does), alternating rounds so that machine load hits both alike.

    python benchmarks/sandbox_overhead.py                 # about half a minute on 2 CPU cores
    python benchmarks/sandbox_overhead.py --programs 200 --rounds 3 --workers 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rate(*, programs: int, workers: int, isolate: bool) -> float:
    from zoo.eval.sandbox import run_programs

    start = time.perf_counter()
    results = run_programs(["assert 1 + 1 == 2\n"] * programs, workers=workers, timeout=10, isolate=isolate,
                           unsafe_no_sandbox=not isolate)  # fmt: skip
    elapsed = time.perf_counter() - start
    assert all(r.passed for r in results), [r.message for r in results if not r.passed][:3]
    return programs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=100, help="programs per mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both modes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="programs run at once")
    parser.add_argument("--smoke", action="store_true", help="4 programs, one round, one worker: the code paths")
    args = parser.parse_args()
    if args.smoke:
        args.programs, args.rounds, args.workers = 4, 1, 1
    from zoo.eval.sandbox import namespaces_available

    if not namespaces_available():
        raise SystemExit("namespaces are unavailable here (see the warning): nothing to compare")
    rate(programs=4, workers=args.workers, isolate=True)  # warm-up: page cache, the probe
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for isolate in (False, True):
            rates[isolate].append(rate(programs=args.programs, workers=args.workers, isolate=isolate))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    print(f"# Sandbox overhead, {datetime.date.today()}, commit {commit.stdout.strip()}")
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load {os.getloadavg()}")
    print(f"command: python {' '.join(sys.argv)}")
    print("| mode | programs/s per round | median | × without namespaces |\n|---|---|---:|---:|")
    base = sorted(rates[False])[len(rates[False]) // 2]
    for isolate, name in ((False, "limits + prelude (no namespaces)"), (True, "bwrap namespaces + limits + prelude")):
        median = sorted(rates[isolate])[len(rates[isolate]) // 2]
        rounds = ", ".join(f"{r:.1f}" for r in rates[isolate])
        print(f"| {name} | {rounds} | {median:.1f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
