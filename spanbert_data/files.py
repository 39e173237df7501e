"""Local files: atomic writes, content hashes and reading a JSON marker (docs/FORMAT.md, docs/RELIABILITY.md).

Everything the builder writes goes through `atomic_path`: the bytes land in a temporary file in the
target's directory and are renamed into place only once complete, so a reader (or a re-run after a
crash) never sees a partial file under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from spanbert_data.errors import DatasetError, DiskWriteError

_UMASK = os.umask(0o022)  # read the process umask (only possible by setting it) ...
os.umask(_UMASK)  # ... and put it back at once


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it to `path`, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a dataset must be as readable as any file the user writes
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DiskWriteError(f"could not write {path}: {e.strerror or e} (disk full or file size limit?)") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def json_object(data: bytes | str | None) -> dict | None:
    """`data` parsed as a JSON object; None when absent, unparsable or not an object (a marker is never trusted
    unless it parses)."""
    try:
        value = json.loads(data) if data is not None else None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON object file (a marker, build.json) as `atomic_write_json` writes it; None when missing or unreadable."""
    try:
        return json_object(Path(path).read_bytes())
    except OSError:
        return None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_problem(path: str | os.PathLike, sha256: str) -> str | None:
    """Why the file at `path` is not the one whose SHA-256 a manifest recorded (one line naming it), or None."""
    try:
        digest = sha256_file(path)
    except OSError as e:
        return f"{path}: cannot be read ({e.strerror or e})"
    if digest != sha256:
        return f"{path}: content hash differs from the manifest (corrupt, or replaced by another file)"
    return None


class HashCheck:
    """The SHA-256 check of one file against its manifest entry, done at most once; safe to call from any thread.

    A reader calls `ensure()` before it first uses the file's bytes; a background thread may call it earlier
    to do the work ahead of need (the reader then finds it done, or waits for the hash in flight). A failure
    is remembered: every later call raises the same DatasetError. `hashlib` releases the GIL while it
    hashes, so a hashing thread runs beside the others.
    """

    def __init__(self, path: str | os.PathLike, sha256: str, advice: str = ""):
        self.path, self.sha256, self.advice = Path(path), sha256, advice
        self.done = False  # True once the bytes matched
        self.seconds = 0.0  # time the hash took
        self._problem: str | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        """Return once the file is known to match; raise DatasetError (one line naming the file) if it does not."""
        if self.done:
            return
        with self._lock:
            if not self.done and self._problem is None:
                started = time.perf_counter()
                self._problem = hash_problem(self.path, self.sha256)
                self.seconds = time.perf_counter() - started
                self.done = self._problem is None
        if self._problem is not None:
            raise DatasetError(self._problem + self.advice)
