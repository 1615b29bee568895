"""``ResumableDataLoader``: the training loader whose position Lightning saves in every checkpoint.

torchdata's ``StatefulDataLoader`` gathers the dataset state of every worker (here: the ``datasets`` stream
position and the packer's buffers, see :class:`zoo.data.PackedDataset`), and Lightning stores a loader's
``state_dict`` in its checkpoints and restores it on ``--ckpt_path``. One correction is needed on top:
Lightning's training loop fetches one batch *ahead* of the step it runs, so at checkpoint time the loader has
already handed out a batch that was never trained on. Saving the loader's own state would skip that batch after
a restart; this loader reports its state as of ``lag`` batches earlier, which is exactly what was trained on.
"""

from __future__ import annotations

from collections import deque

from torchdata.stateful_dataloader import StatefulDataLoader


class ResumableDataLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` whose ``state_dict`` is the position after the batches actually trained on.

    Args:
        lag: batches fetched ahead of training (Lightning's default training fetcher prefetches 1).
        world_size: processes reading disjoint shares of the stream; resuming with another value is refused.
        *args, **kwargs: as for ``torch.utils.data.DataLoader``.
    """

    def __init__(self, *args, lag: int = 1, world_size: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lag, self.world_size = lag, world_size
        self._history: deque[dict] | None = None

    def __iter__(self):
        iterator = super().__iter__()
        history = deque([super().state_dict()], maxlen=self.lag + 1)
        self._history = history
        for batch in iterator:
            history.append(super().state_dict())
            yield batch

    def state_dict(self) -> dict:
        state = self._history[0] if self._history else super().state_dict()
        return {"loader": state, "world_size": self.world_size, "num_workers": self.num_workers}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = {key: state_dict.get(key) for key in ("world_size", "num_workers")}
        current = {"world_size": self.world_size, "num_workers": self.num_workers}
        if saved != current:
            raise ValueError(
                f"the checkpoint's data position was saved with {saved} but this run has {current}: the stream is "
                "split differently, so resuming would repeat or skip data. Resume with the same number of devices "
                "(trainer.devices × trainer.num_nodes) and data.num_workers"
            )
        self._history = None
        super().load_state_dict(state_dict["loader"])
