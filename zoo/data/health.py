"""The training stream's health: bad rows counted per source and reason, and a stream that stopped giving batches.

::

    packer (worker) ── batch["skipped_by"] (B, S, R) ──▶ SkipTally (main process, per trained batch)
                                                          ├─ data/skipped/<reason> every log_every_n_steps
                                                          ├─ the data module's checkpoint state (exact resume)
                                                          └─ a summary at the end of the run

    ResumableDataLoader: waiting for a batch longer than stall_timeout, or a pass over the stream that gave none
        ──▶ DataStallError naming the sources and the counts so far
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

import torch

from zoo.data.rows import REASONS
from zoo.errors import ZooError


class DataStallError(ZooError, RuntimeError):
    """The training stream gave no batch for ``stall_timeout`` seconds, or ended without one."""


class SkipTally:
    """Bad rows skipped in the trained batches, per source (``labels``) and reason (:data:`zoo.data.rows.REASONS`).

    Args:
        labels: the sources' names, in the order of the batches' ``skipped_by`` first dimension.
    """

    def __init__(self, labels: list[str]) -> None:
        self.labels = list(labels)
        self.counts = torch.zeros(len(self.labels), len(REASONS), dtype=torch.long)  # (S, R)

    def add(self, skipped_by: torch.Tensor) -> None:
        """Count a batch's ``skipped_by`` ``(B, S, R)``."""
        self.counts += skipped_by.detach().to("cpu", torch.long).reshape(-1, *self.counts.shape).sum(0)

    def metrics(self, counts: torch.Tensor | None = None) -> dict[str, float]:
        """``data/skipped/<reason>``: rows skipped for each reason, all sources together."""
        per_reason = (self.counts if counts is None else counts).sum(0)
        return {f"data/skipped/{reason}": float(n) for reason, n in zip(REASONS, per_reason.tolist())}

    def summary(self) -> str:
        """One line per source that lost rows, e.g. ``a.jsonl: 3 skipped (malformed 2, none 1)``."""
        lines = []
        for label, row in zip(self.labels, self.counts.tolist()):
            if sum(row):
                reasons = ", ".join(f"{reason} {n}" for reason, n in zip(REASONS, row) if n)
                lines.append(f"{label}: {sum(row)} skipped ({reasons})")
        return "; ".join(lines) if lines else "no row skipped"

    def state_dict(self, counts: torch.Tensor | None = None) -> dict:
        return {"labels": list(self.labels), "counts": (self.counts if counts is None else counts).clone()}

    def load_state_dict(self, state: dict) -> None:
        counts = torch.as_tensor(state.get("counts", []), dtype=torch.long)
        if list(state.get("labels", [])) == self.labels and counts.shape == self.counts.shape:
            self.counts = counts.clone()  # else the sources changed since the save: counting starts again


class StallWatch:
    """Raises :class:`DataStallError` in the main thread when the time spent waiting for one batch (over all the
    waits since the previous batch) reaches ``timeout`` seconds. A timer thread sends ``SIGALRM`` to the main
    thread only while it waits (so a slow training step, validation or a checkpoint never counts), and to the main
    thread itself: a signal the process receives may land on one of ``datasets``' prefetching threads and leave
    the main thread blocked. The signal is sent again every half second until the error has left the wait: a
    ``finally`` on the way out may block again (``datasets`` waits there for its prefetching threads, which are
    stuck in the same source), and a new exception raised in it goes on up. Off the main thread (where signals
    cannot be handled) only the empty-stream check of :class:`zoo.data.ResumableDataLoader` applies.

    Args:
        timeout: seconds of waiting before the run stops.
        describe: the sources and counts to name in the error.
    """

    def __init__(self, timeout: float, describe: Callable[[], str]) -> None:
        self.timeout, self.describe, self.waited = timeout, describe, 0.0
        self._lock = threading.Lock()
        self._armed = False

    def stalled(self, why: str) -> DataStallError:
        return DataStallError(f"{why}: {self.describe()}")

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        main = threading.main_thread()
        if threading.current_thread() is not main:
            yield
            return

        def alarm(signum, frame):
            if self._armed:
                why = f"the training data stream gave no batch for {self.timeout:g} s (data.stall_timeout)"
                raise self.stalled(why)

        def fire(done: threading.Event) -> None:
            delay = max(self.timeout - self.waited, 1e-3)
            while not done.wait(delay):
                with self._lock:
                    if self._armed:
                        signal.pthread_kill(main.ident, signal.SIGALRM)
                delay = 0.5

        start, previous = time.monotonic(), signal.signal(signal.SIGALRM, alarm)
        done = threading.Event()
        self._armed = True
        threading.Thread(target=fire, args=(done,), name="zoo-stall-watch", daemon=True).start()
        try:
            yield
        finally:
            with self._lock:  # a signal sent from here on finds the handler disarmed (or Python's default ignored)
                self._armed = False
            done.set()
            signal.signal(signal.SIGALRM, previous)
            self.waited += time.monotonic() - start

    def got_batch(self) -> None:
        self.waited = 0.0
