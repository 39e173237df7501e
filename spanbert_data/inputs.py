"""A corpus file wherever it lies: a local path, or an object in a bucket behind a `Location` (DESIGN §5).

`Corpus` is what the driver hands every pass-1 and vocabulary task: the base directory or URL of each `--corpus`
entry, in the order given (`listing.py` finds them), the storage options for URLs, and `--text-field`. A unit
names its files by entry index and relative name; `Corpus.file(root, name)` turns that back into an `InputFile`
on whichever machine runs the task, so a Dask worker reads its own units straight from the URL.

Local files never go through fsspec (they are opened, memory-mapped and read as files); objects are read in
ranged GETs with retries (`remote.RangeReader`), never downloaded whole.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import BinaryIO

from spanbert_data.errors import BuildError
from spanbert_data.location import Location, is_url

CHUNK = 1 << 20  # buffered reads of a local corpus file (streams.CHUNK)


class InputFile:
    """One corpus file: `name` (relative to its entry's base, as build.json and the markers record it) and how to
    read it. `path` is the local file, None for an object in a bucket."""

    def __init__(self, location: Location, root: int, name: str, size: int | None = None):
        self.location, self.root, self.name, self._size = location, root, name, size
        self.path: Path | None = location.local / name if location.local is not None else None

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"InputFile({self.url!r})"

    @property
    def url(self) -> str:
        """The file's full path or URL, for messages that must stand alone."""
        return str(self.path) if self.path is not None else self.location / self.name

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = self.path.stat().st_size if self.path is not None else self.reader(0).size
        return self._size

    def open(self) -> BinaryIO:
        """A buffered binary stream from the start (peekable): what the text readers read."""
        if self.path is not None:
            return open(self.path, "rb", buffering=CHUNK)
        return io.BufferedReader(self.reader(), CHUNK)

    def reader(self, block: int | None = None) -> BinaryIO:
        """A seekable binary file; in a bucket, ranged GETs of `block` bytes with read-ahead (0: exactly what each
        read asks for, what pyarrow wants)."""
        if self.path is not None:
            return open(self.path, "rb", buffering=0)
        if block is None:
            return self.location.reader(self.name, self._size)
        return self.location.reader(self.name, self._size, block)

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes start..end-1 (fewer at the end of the file)."""
        with self.reader(0) as f:
            f.seek(start)
            return f.read(max(0, end - start))


class Corpus:
    """The corpus of a build as its tasks see it (see the module docstring); picklable, cheap to ship."""

    def __init__(self, bases: list[str], storage_options: dict | None = None, text_field: str = "text",
                 label: str | None = None):  # fmt: skip
        self.bases = tuple(str(b) for b in bases)
        self.label = label or ", ".join(self.bases)  # the --corpus values as given, for messages
        self.storage_options = dict(storage_options or {})
        self.text_field = text_field
        self._locations: dict[int, Location] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_locations": {}}  # filesystems are made again where the task runs

    def __str__(self) -> str:
        return self.label

    def location(self, root: int) -> Location:
        if root not in self._locations:
            self._locations[root] = Location.of(self.bases[root], self.storage_options or None)
        return self._locations[root]

    def file(self, root: int, name: str, size: int | None = None) -> InputFile:
        return InputFile(self.location(root), root, name, size)

    def check_visible(self) -> None:
        """Fail fast, naming the machine, when a task's process cannot see a local corpus directory (a Dask worker on
        a machine that does not mount it); objects in a bucket are reachable from anywhere."""
        for base in self.bases:
            if not is_url(base) and not Path(base).exists():
                raise BuildError(
                    f"worker on {socket.gethostname()} cannot see the corpus {base}: it must be on a filesystem every "
                    "worker mounts at the same path, or in a bucket (see README, Building on a cluster)"
                )
