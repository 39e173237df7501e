"""Where a dataset lives: a local directory or a prefix in object storage, behind one interface.

`Location.of(path_or_url, storage_options)` is the one way to make one. An fsspec URL (`s3://`, `gs://`, any
protocol whose filesystem is installed) is served by `spanbert_data.remote.Remote`: retries with backoff,
verified streaming, PUTs checked for their size. Anything else, `file://` URLs included, is a local
directory and never goes through fsspec. Everything that reads or writes a dataset asks its Location, by the
manifest's relative names:

- `list(prefix)`, `exists(rel)`, `size(rel)`: what is there;
- `read_bytes(rel)`, `read_json(rel)`, `open(rel)`, `read_range(rel, start, end)`: reading;
- `put_bytes(rel, data)`, `put_file(rel, path)`: an atomic write (a temp file renamed into place locally, a
  single PUT remotely), checked for its size;
- `problem(rel, size, sha256)`, `download(rel, dest, size, sha256)`: a file against its manifest entry;
- `local_path(rel)`: the local file when there is one (None in object storage), so that local data stays
  memory-mapped where it is.

Names that leave the dataset are refused (`check`); messages name files as `location / rel`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from spanbert_data.errors import DatasetError, DiskWriteError
from spanbert_data.files import atomic_path, atomic_write_bytes, json_object, sha256_file
from spanbert_data.layout import MANIFEST
from spanbert_data.progress import stderr
from spanbert_data.remote import Remote

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CHUNK = 1 << 22  # bytes per read when a local file is copied or hashed
_ABSENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError)  # a local name with no file under it


def is_url(path) -> bool:
    """True for an fsspec URL (s3://, gs://, ...) other than file://; local paths never go through fsspec."""
    return isinstance(path, str) and bool(_URL.match(path)) and not path.lower().startswith("file://")


def resolve_inside(root: str | os.PathLike, rel: str) -> Path:
    """Join a manifest path to the dataset root, refusing absolute paths and paths that leave the root."""
    root = Path(root).resolve()
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\\" in rel:
        raise DatasetError(f"{root / MANIFEST}: invalid shard path {rel!r} (must be relative, inside the dataset)")
    full = (root / rel).resolve()
    if full != root and root not in full.parents:
        raise DatasetError(f"{root / MANIFEST}: shard path {rel!r} leaves the dataset directory; refusing it")
    return full


class Location:
    """A dataset directory (`local`) or a prefix in object storage (`remote`); see the module docstring."""

    def __init__(self, local: Path | None = None, remote: Remote | None = None):
        if (local is None) == (remote is None):
            raise ValueError("a Location is either a local directory or a remote prefix")
        self.local, self.remote = local, remote

    @classmethod
    def of(cls, where, storage_options: dict | None = None, log: Callable[[str], None] = stderr) -> Location:
        """The Location of a directory, a `file://` URL or an fsspec URL (a Location is returned as it is)."""
        if isinstance(where, Location):
            return where
        if is_url(where):
            return cls(remote=Remote(where, storage_options, log))
        if isinstance(where, str) and where.lower().startswith("file://"):
            where = where[len("file://") :]
        return cls(local=Path(where))

    # ------------------------------------------------------------------------------------------ names
    @property
    def url(self) -> str:
        """The directory or the URL, as messages name it."""
        return str(self.local) if self.local is not None else self.remote.url

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __truediv__(self, rel: str) -> str:
        """How messages name file `rel`: `location / "manifest.json"`."""
        return str(self.local / rel) if self.local is not None else self.remote / rel

    def check(self, rel: str) -> None:
        """Refuse a manifest name that leaves the dataset (DatasetError naming the manifest)."""
        if self.local is not None:
            resolve_inside(self.local, rel)
        else:
            self.remote.path(rel)

    def local_path(self, rel: str = "") -> Path | None:
        """The local file of `rel` (checked to stay inside), the directory itself for "", None in object storage."""
        if self.local is None:
            return None
        return resolve_inside(self.local, rel) if rel else self.local

    # ------------------------------------------------------------------------------------------ reading
    def list(self, prefix: str = "") -> list[str]:
        """The relative names of every file (object) under `prefix`, sorted."""
        if self.remote is not None:
            return self.remote.list(prefix)
        top = self.local / prefix if prefix else self.local
        if top.is_file():
            return [Path(prefix).as_posix()]
        return sorted(p.relative_to(self.local).as_posix() for p in top.rglob("*") if p.is_file())

    def size(self, rel: str) -> int | None:
        """The size of file `rel`, or None when it does not exist."""
        if self.remote is not None:
            return self.remote.size(rel)
        try:
            return (self.local / rel).stat().st_size
        except _ABSENT:
            return None

    def exists(self, rel: str) -> bool:
        return self.size(rel) is not None

    def read_bytes(self, rel: str) -> bytes | None:
        """The whole (small) file `rel`, or None when it does not exist."""
        if self.remote is not None:
            return self.remote.read_bytes(rel)
        try:
            return (self.local / rel).read_bytes()
        except _ABSENT:
            return None

    def read_json(self, rel: str) -> dict | None:
        """File `rel` parsed as a JSON object; None when missing or not a JSON object."""
        return json_object(self.read_bytes(rel))

    def open(self, rel: str) -> BinaryIO:
        """File `rel` for reading."""
        if self.remote is not None:
            return self.remote.open(rel)
        return open(self.local / rel, "rb")

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes start..end-1 of file `rel`."""
        if self.remote is not None:
            return self.remote.read_range(rel, start, end)
        with open(self.local / rel, "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def is_empty(self) -> bool:
        """True when nothing exists there (a new dataset may be written)."""
        if self.remote is not None:
            return self.remote.is_empty()
        return not self.local.exists() or (self.local.is_dir() and not any(self.local.iterdir()))

    # ------------------------------------------------------------------------------------------ writing
    def put_bytes(self, rel: str, data: bytes) -> None:
        """Write `data` as file `rel` atomically (DiskWriteError / RemoteError naming it on failure)."""
        if self.remote is not None:
            return self.remote.put_bytes(rel, data)
        atomic_write_bytes(self.local / rel, data)
        self._check_size(rel, len(data))

    def put_file(self, rel: str, source: Path) -> None:
        """Copy the local file `source` to file `rel` atomically, then check its size."""
        if self.remote is not None:
            return self.remote.put_file(rel, source)
        target = self.local / rel
        if target.exists() and target.samefile(source):
            return
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        self._check_size(rel, Path(source).stat().st_size)

    def _check_size(self, rel: str, size: int) -> None:
        got = self.size(rel)
        if got != size:
            raise DiskWriteError(f"could not write {self / rel}: it has {got} bytes, not {size}")

    # ------------------------------------------------------------------------------------------ verifying
    def problem(self, rel: str, size: int | None, sha256: str) -> str | None:
        """Why file `rel` is not the one the manifest recorded (one line naming it), or None; nothing is written."""
        if self.remote is not None:
            return self.remote.problem(rel, size, sha256)
        path = resolve_inside(self.local, rel)
        if not path.is_file():
            return f"{path}: missing"
        found = path.stat().st_size
        if size is not None and found != size:
            return f"{path}: {found} bytes, manifest says {size} (truncated or replaced)"
        if sha256_file(path) != sha256:
            return f"{path}: content hash differs from the manifest (corrupt)"
        return None

    def download(self, rel: str, dest: Path, size: int | None, sha256: str,
                 stop: threading.Event | None = None) -> None:  # fmt: skip
        """Copy file `rel` to the local file `dest`, checking its size and SHA-256 on the way (DatasetError naming
        it when they differ); `stop` set ends the copy with InterruptedError. The caller renames `dest`."""
        if self.remote is not None:
            return self.remote.download(rel, dest, size, sha256, stop)
        h, n = hashlib.sha256(), 0
        with open(resolve_inside(self.local, rel), "rb") as src, open(dest, "wb") as out:
            while piece := src.read(_CHUNK):
                if stop is not None and stop.is_set():
                    raise InterruptedError("stopped")
                h.update(piece)
                n += len(piece)
                out.write(piece)
        if (size is not None and n != size) or h.hexdigest() != sha256:
            raise DatasetError(f"{self / rel}: not the file the manifest recorded (truncated, corrupt or replaced)")
