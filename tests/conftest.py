"""Fixtures shared by every test file; keep this small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist every worker (and every process it starts) would run 2 torch threads on 2 cores; the
# oversubscription makes small ops many times slower. One thread each keeps the suite fast; numbers are
# compared only between runs of the same configuration, so determinism is unaffected.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared reference data directory (tinystories/, gpt2/), or skip when it is absent.

    Located by $SLMTRAIN_SHARED_DATA, else `../shared/data` beside the repository.
    """
    env = os.environ.get("SLMTRAIN_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data directory {path} is absent; set SLMTRAIN_SHARED_DATA to the directory "
                    f"holding tinystories/ and gpt2/")
    return path


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data cache shared by the tests that train: each corpus is tokenized once per test process."""
    return tmp_path_factory.mktemp("data-cache")
