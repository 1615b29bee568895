"""The training stream's health: bad rows counted per source and reason, and a stream that stopped giving batches.

::

    packer (worker) ── batch["skipped_by"] (B, S, R) ──▶ SkipTally (main process, per trained batch)
                                                          ├─ data/skipped/<reason> every log_every_n_steps
                                                          ├─ the data module's checkpoint state (exact resume)
                                                          └─ a summary at the end of the run

    ResumableDataLoader: waiting for a batch longer than stall_timeout, or a pass over the stream that gave none
        ──▶ DataStallError naming the sources and the counts so far

    tokenizer training: TextFeed ── a row longer than max_row_chars ──▶ skipped, counted as too_long
                                 ── progress every 30 s; no document for stall_timeout ──▶ DataStallError
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from lightning.pytorch.utilities import rank_zero_info

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


def text_length(text: str | list[str] | None) -> int:
    """Characters in a row's text: a string, or an instruction row's pieces (a list of strings) together."""
    if text is None:
        return 0
    return len(text) if isinstance(text, str) else sum(len(piece) for piece in text if piece)


class TextFeed:
    """The texts a tokenizer learns from, as :func:`zoo.data.train_bpe` (``tokenizers``) pulls them: a text longer
    than ``max_chars`` is skipped and counted (``too_long``), progress is reported every :attr:`every` seconds and
    at the end, and a source that gives no text for ``stall_timeout`` seconds raises :class:`DataStallError`.

    ``tokenizers`` pulls texts from its own worker threads, where no signal can reach (so :class:`StallWatch`
    cannot apply): the source is read by a thread of its own into a small queue, and the wait for each text is a
    ``queue.get`` with a timeout. Only waiting counts: the time ``tokenizers`` spends learning does not.

    Args:
        texts: the source's texts.
        max_chars: the longest text used; ``None``: no limit.
        stall_timeout: seconds to wait for one text; ``None``: forever.
        describe: the sources, for the error.
    """

    every = 30.0  # seconds between progress lines

    def __init__(
        self,
        texts: Iterable[str],
        *,
        max_chars: int | None,
        stall_timeout: float | None,
        describe: Callable[[], str] = lambda: "the data module's training text",
    ) -> None:
        self.texts, self.max_chars, self.stall_timeout, self.describe = texts, max_chars, stall_timeout, describe
        self.documents = self.chars = self.too_long = 0

    def __iter__(self) -> Iterator[str]:
        items: queue.Queue = queue.Queue(maxsize=64)  # at most 64 texts of max_chars held
        stop = threading.Event()
        threading.Thread(target=self._read, args=(items, stop), name="zoo-tokenizer-text", daemon=True).start()
        start = last_report = time.monotonic()
        try:
            while True:
                try:
                    kind, item = items.get(timeout=self.stall_timeout)
                except queue.Empty:
                    raise DataStallError(
                        f"the tokenizer's training text gave no document for {self.stall_timeout:g} s "
                        f"(data.stall_timeout) after {self.documents:,} documents: {self.describe()}. Check that the "
                        "source is reachable, or raise data.stall_timeout for a slow one"
                    ) from None
                if kind == "error":
                    raise item
                if kind == "end":
                    break
                self.documents += 1
                self.chars += len(item)
                yield item
                if time.monotonic() - last_report >= self.every:
                    rank_zero_info(f"tokenizer: {self.progress()} read in {time.monotonic() - start:.0f} s")
                    last_report = time.monotonic()
        finally:
            stop.set()
        rank_zero_info(f"tokenizer: learned from {self.progress()}")

    def progress(self) -> str:
        """E.g. ``12,345 documents (45.6M characters), 1 skipped as too_long (over data.max_row_chars=1000000)``."""
        skipped = (f", {self.too_long:,} skipped as too_long (over data.max_row_chars={self.max_chars})"
                   if self.too_long else "")  # fmt: skip
        return f"{self.documents:,} documents ({self.chars / 1e6:.1f}M characters){skipped}"

    def _read(self, items: queue.Queue, stop: threading.Event) -> None:
        def put(entry) -> bool:
            while not stop.is_set():  # the consumer may have stopped (an error, or enough documents)
                try:
                    items.put(entry, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for text in self.texts:
                if self.max_chars is not None and len(text) > self.max_chars:  # dropped here: never queued
                    self.too_long += 1
                    continue
                if not put(("text", text)):
                    return
        except BaseException as err:  # handed to the consumer, which raises it where tokenizers called
            put(("error", err))
            return
        put(("end", None))
