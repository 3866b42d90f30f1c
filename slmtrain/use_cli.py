"""CLI subcommands that use a finished checkpoint: verify, generate, eval."""

from __future__ import annotations

import argparse
from collections.abc import Callable

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    return None
