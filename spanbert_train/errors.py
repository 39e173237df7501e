"""The user-facing errors of the training half: each one line naming the path and what to do.

`spanbert-train` prints them on stderr and exits 2 (ConfigError, CheckpointError, and spanbert_data's
DatasetError) or 1 (TrainingError: the run itself cannot go on); no traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-supplied option or config file is invalid (printed as one line, exit status 2)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps); the message names the step and the way back."""


class CheckpointError(Exception):
    """A checkpoint cannot be used (corrupt, or from an incompatible run); one line for the user."""


class ExportError(ValueError):
    """An export or import that cannot be done; the message names the path and what to do."""
