import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference writers and processors


@pytest.fixture(scope="module")
def bandwidth() -> float:
    """Bytes/s read on all the math threads, measured in a fresh process before any model fills the memory."""
    from mixcli.bench import read_bandwidth_in_child

    return read_bandwidth_in_child()


@pytest.fixture(scope="module")
def vlm_checkpoint(request, tmp_path_factory):
    """The benchmark module's ``write(folder)`` checkpoint, written in a child process, removed afterwards."""
    from sides import write_in_child

    module = request.module.__name__
    yield from write_in_child(module, tmp_path_factory.mktemp(module))
