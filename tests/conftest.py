"""Fixtures shared by every test file; keep this small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
