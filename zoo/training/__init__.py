"""The Lightning runtime every ``python -m zoo fit`` run gets: crash-safe checkpoint files and their reading,
resuming from the newest good checkpoint, the final step and signals saved (SaveOnExit), one run per run folder
(RunLock), the non-finite guard, the random state, token throughput and MFU, and accelerators Lightning lacks."""

from zoo.training.checkpoints import (
    AtomicCheckpointIO,
    CheckpointMismatchError,
    atomic_save,
    check_state_dict_fits,
    read_checkpoint,
)
from zoo.training.class_paths import ForeignClassPathError
from zoo.training.exits import SaveOnExit
from zoo.training.guards import NonFiniteError, NonFiniteGuard
from zoo.training.lock import RunFolderInUseError, RunLock
from zoo.training.random_state import RandomState
from zoo.training.resume import checkpoint_dirs, last_good_checkpoint, newest_good_checkpoint
from zoo.training.throughput import TokenThroughput

__all__ = [
    "ForeignClassPathError",
    "AtomicCheckpointIO",
    "CheckpointMismatchError",
    "NonFiniteError",
    "NonFiniteGuard",
    "RandomState",
    "RunFolderInUseError",
    "RunLock",
    "SaveOnExit",
    "TokenThroughput",
    "atomic_save",
    "check_state_dict_fits",
    "checkpoint_dirs",
    "last_good_checkpoint",
    "newest_good_checkpoint",
    "read_checkpoint",
]
