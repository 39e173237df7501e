"""The user-facing errors of the data half: each one line naming the file (or URL) and what to do.

The CLI prints them as `error: …` and exits 2 (docs/RELIABILITY.md); a library caller catches them here.
"""

from __future__ import annotations


class DatasetError(Exception):
    """A dataset directory or one of its files is missing, corrupt or of another format (user-facing, one line)."""


class DiskWriteError(DatasetError):
    """Writing failed (disk full, file size limit, permissions): nothing partial was left behind."""


class RemoteError(DatasetError):
    """An object store operation failed for good (one line naming the URL)."""


class CorpusError(Exception):
    """A user-facing, one-line error about the corpus as a whole (missing, or nothing readable in it)."""


class TokenizerError(Exception):
    """A tokenizer file that cannot be used; the message names the file and what to do."""


class BuildError(Exception):
    """A user-facing build failure: one line naming the file and what to do."""


class ExecutorError(Exception):
    """The executor itself failed (a worker process died, the cluster is unreachable): one line for the user."""
