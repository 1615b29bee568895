import functools
import os

import pytest
import torch

from tests.helpers import GROUPS, fit
from zoo.training import AtomicCheckpointIO


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fresh_compiled_steps(monkeypatch):
    """A test that compiles decoding (or fails to) on its own: new compiled steps (the AR one-token step and the
    diffusion pass, :mod:`zoo.generation.compiled`), an empty dynamo cache and one thread."""
    from zoo.generation import compiled

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    monkeypatch.setattr(compiled, "DECODE_STEP", compiled.DecodeStep())
    monkeypatch.setattr(compiled, "BLOCK_PASS", compiled.BlockPass())
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


# ---- a tiny run several modules start from (tests/helpers.py has the functions behind it) -------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A ``ZOO_CACHE`` (the trained tokenizer) shared by the module's tiny runs."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    """The last checkpoint of a 2-step run of :data:`tests.helpers.TINY_UNVALIDATED` (written atomically)."""
    tmp = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as monkeypatch:
        cli = fit(tmp, cache, "--trainer.max_steps", "2", monkeypatch=monkeypatch)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    return tmp / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def pytest_configure(config):
    for marker, (*_, reason) in GROUPS.items():
        config.addinivalue_line("markers", f"{marker}: skipped unless it can run ({reason})")


@functools.cache
def _available(marker: str) -> bool:
    return GROUPS[marker][1]()


def pytest_runtest_setup(item):
    for marker in item.iter_markers():
        if marker.name not in GROUPS:
            continue
        variable, check, reason = GROUPS[marker.name]
        required = os.environ.get(variable) == "1"
        if check is None:  # a group that only needs asking for
            if not required:
                pytest.skip(reason)
        elif not _available(marker.name):
            if required:
                pytest.fail(f"{variable}=1 but {reason.split(':')[0]}", pytrace=False)
            pytest.skip(reason)
