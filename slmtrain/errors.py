"""Exception types shared by every module; a leaf with no imports of ours.

`UserError` and its subclasses are problems the user can fix (a recipe, a path, a CLI argument):
the CLI prints their message as one paragraph and exits 2, never a traceback.
"""

from __future__ import annotations


class SlmError(Exception):
    """Base of every error slmtrain raises on purpose."""


class UserError(SlmError):
    """Bad input: recipe, data, CLI usage. Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """The recipe (or a --set override) is invalid; the message lists every problem found."""


class DataError(UserError):
    """A data source is missing, empty, undecodable or otherwise unusable."""


class CheckpointError(SlmError):
    """A checkpoint is missing, torn or inconsistent. Exit code 1."""

    exit_code = 1


class RunLockedError(UserError):
    """Another live process holds the run directory."""
