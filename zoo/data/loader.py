"""``ResumableDataLoader``: the training loader whose position Lightning saves in every checkpoint.

torchdata's ``StatefulDataLoader`` gathers the dataset state of every worker (here: the ``datasets`` stream
position and the packer's buffers, see :class:`zoo.data.PackedDataset`), and Lightning stores a loader's
``state_dict`` in its checkpoints and restores it on ``--ckpt_path``. One correction is needed on top:
Lightning's training loop fetches one batch *ahead* of the step it runs, so at checkpoint time the loader has
already handed out a batch that was never trained on. Saving the loader's own state would skip that batch after
a restart, so this loader also saves the last ``lag`` batches it handed out and serves them again first on resume.
Keeping a reference to a batch costs nothing per step; the loader's state itself is computed only when a
checkpoint asks for it. Under DDP (one node or many) the checkpoint holds every rank's state, and each rank
resumes from its own.

With ``stall_timeout``, the loader never hangs silently: waiting that long for a batch, or a pass over the stream
that gives no batch at all (an empty training stream would otherwise start empty epochs forever), raises a
:class:`zoo.data.health.DataStallError` naming the sources and the counts so far.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from zoo.data.health import StallWatch


class ResumableDataLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` that resumes with exactly the batches not yet trained on.

    Args:
        lag: batches fetched ahead of training (Lightning's default training fetcher prefetches 1).
        snapshot_every_n_steps: batches between two transfers of the workers' dataset state (see ``__init__``).
        world_size: processes reading disjoint shares of the stream; resuming with another value is refused.
        stall_timeout: seconds of waiting for one batch before the run stops (``None``: wait forever, and allow a
            pass without batches).
        describe: what a stall error says of the data (sources, counts).
        *args, **kwargs: as for ``torch.utils.data.DataLoader``.
    """

    def __init__(self, *args, lag: int = 1, world_size: int = 1, snapshot_every_n_steps: int = 64,
                 stall_timeout: float | None = None, describe: Callable[[], str] = str, **kwargs) -> None:  # fmt: skip
        # With workers, StatefulDataLoader has each worker send its dataset's state (the packer's whole shuffle
        # buffer) along with every batch by default; that pickling made a 1-worker loader 24 times slower than
        # the same pipeline in-process. Every 64 batches instead: a checkpoint between two snapshots restores the
        # last one and replays the batches since (torchdata's fast-forward), so resuming stays exact.
        super().__init__(*args, snapshot_every_n_steps=snapshot_every_n_steps, **kwargs)
        self.lag, self.world_size = lag, world_size
        self._recent: deque = deque(maxlen=lag)  # batches handed out but possibly not trained on yet
        self._replay: list = []  # such batches from a checkpoint, served before the stream continues
        self._watch = StallWatch(stall_timeout, describe) if stall_timeout is not None else None

    def __iter__(self):
        replay, self._replay = self._replay, []
        self._recent.clear()
        for batch in replay:
            self._recent.append(batch)
            yield batch
        if self._watch is None:
            for batch in super().__iter__():
                self._recent.append(batch)
                yield batch
            return
        with self._watch.waiting():  # starting workers and filling their buffers is waiting too
            batches = super().__iter__()
        given = bool(replay)
        while True:
            with self._watch.waiting():
                batch = next(batches, None)
            if batch is None:
                break
            self._watch.got_batch()
            given = True
            self._recent.append(batch)
            yield batch
        if not given:
            raise self._watch.stalled("the training data stream ended without giving one batch (it holds no row)")

    def state_dict(self) -> dict:
        own = {"loader": super().state_dict(), "pending": list(self._recent)}
        ranks = [own]
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            # Each rank's position is its own (its shard of the stream, its packer's buffers, its prefetched
            # batch), but rank 0 alone writes the checkpoint: it carries every rank's state, and each rank takes
            # its own back. Lightning builds a checkpoint's contents on every rank, so all of them meet here.
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, own)
        return {"ranks": ranks, "world_size": self.world_size, "num_workers": self.num_workers}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = {key: state_dict.get(key) for key in ("world_size", "num_workers")}
        current = {"world_size": self.world_size, "num_workers": self.num_workers}
        if saved != current:
            raise ValueError(
                f"the checkpoint's data position was saved with {saved} but this run has {current}: the stream is "
                "split differently, so resuming would repeat or skip data. Resume with the same number of devices "
                "(trainer.devices × trainer.num_nodes) and data.num_workers"
            )
        ranks = state_dict.get("ranks", [state_dict])  # without "ranks": a checkpoint of one process
        rank = dist.get_rank() if len(ranks) > 1 and dist.is_available() and dist.is_initialized() else 0
        self._replay = list(ranks[rank]["pending"])
        super().load_state_dict(ranks[rank]["loader"])
