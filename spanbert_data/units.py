"""Input units: the corpus cut into pieces of work of about `--unit-mb` (docs/FORMAT.md, "Input units").

Where the cuts fall depends only on the corpus bytes and the unit size, never on workers, so the
bytes a build writes are the same on one core or a hundred machines. The plan is a list of
*sources*, in sorted file order, each giving one or more units `(source, sub)`:

- ``files``: consecutive small files read whole (the common case: many files of a few MB);
- ``range``: an uncompressed file larger than a unit, cut at byte offsets ``j·unit_bytes``;
- ``streams``: a bzip2 file made of many streams (Wikipedia's "multistream" dumps, pbzip2), cut at
  the first stream header at or after ``j·unit_bytes/4`` (compressed bytes);
- ``stream``: a large compressed file that cannot be cut (gzip, xz, zstd, single-stream bzip2): the
  driver decompresses it once, in order, and hands out a unit every ``unit_bytes`` of text.

Reading a unit's bytes (cut at document boundaries) is unit_reader.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from spanbert_data.streams import compression_of, detect_format, sniff

COMPRESSION_RATIO = 4  # a compressed file counts as this many times its size when units are planned
BZ2_STREAM = re.compile(rb"BZh[1-9]1AY&SY")  # a bzip2 stream header followed by its first block's magic
_BZ2_PROBE = 8 << 20  # bytes searched for the next stream header after a cut
SPLITTABLE = ("text", "jsonl", "wikiextractor", "mediawiki")


# --- plan -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One piece of pass-1 work. `source`/`sub` are its stable key; the other fields say what to read."""

    source: int
    sub: int
    kind: str  # "files", "range", "streams" or "stream"
    files: tuple[str, ...]  # paths relative to the corpus root (one file unless kind == "files")
    bytes: int  # bytes of text, about (a compressed file counts COMPRESSION_RATIO x its size; "stream": exact)
    fmt: str = ""  # the file's text format (sniffed once for the whole file) unless kind == "files"
    start: int = 0  # cut offsets in the file for "range" / "streams"
    end: int = 0
    last: bool = True  # the unit ends where its file ends
    note: str = ""  # "stream" units: how the driver's read of the file ended early ("truncated: ...")

    @property
    def key(self) -> str:
        return f"{self.source:05d}-{self.sub:05d}"

    @property
    def marker(self) -> str:
        return f"store/unit-{self.key}.json"

    def part(self, k: int) -> str:
        return f"store/part-{self.key}-{k:03d}.arrow"

    @property
    def work_file(self) -> str:
        """Where the driver puts the decoded text of a "stream" unit for the task that reads it."""
        return f"work/unit-{self.key}.txt"


@dataclass(frozen=True)
class Source:
    """A planned run of the corpus: small files together, or one large file and its cut offsets."""

    index: int
    kind: str
    files: tuple[str, ...]
    bytes: int  # file bytes ("files": the group's weight, compressed files counting COMPRESSION_RATIO x)
    fmt: str = ""
    cuts: tuple[int, ...] = ()  # "range"/"streams": 0 = c0 < c1 < ... < cn = file size

    @property
    def text_bytes(self) -> int:
        """About how many bytes of text the source holds (compressed files count COMPRESSION_RATIO x their size)."""
        return self.bytes * COMPRESSION_RATIO if self.kind in ("streams", "stream") else self.bytes

    def units(self) -> list[Unit]:
        """The units of this source; a "stream" source finds its own while it is read (`split_stream`)."""
        if self.kind == "files":
            return [Unit(self.index, 0, "files", self.files, self.bytes)]
        if self.kind == "stream":
            raise ValueError("a stream source's units are only known once it is read")
        ratio = COMPRESSION_RATIO if self.kind == "streams" else 1
        return [
            Unit(self.index, j, self.kind, self.files, (hi - lo) * ratio, self.fmt, lo, hi, last=hi == self.cuts[-1])
            for j, (lo, hi) in enumerate(zip(self.cuts[:-1], self.cuts[1:], strict=True))
        ]

    def to_json(self) -> list:
        """What build.json pins: a re-run with another plan (other files, sizes or --unit-mb) is refused."""
        return [self.kind, list(self.files), self.bytes, self.fmt, list(self.cuts)]


def plan_sources(files: list[Path], root: Path, unit_bytes: int) -> list[Source]:
    """Cut the sorted corpus files into sources (see the module docstring); a pure function of the bytes."""
    sources: list[Source] = []
    group: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal group, size
        if group:
            sources.append(Source(len(sources), "files", tuple(group), size))
            group, size = [], 0

    for path in files:
        n = path.stat().st_size
        try:
            with open(path, "rb") as f:
                codec = compression_of(f.read(16))
        except OSError:
            codec = None  # unreadable: the reader names it and counts it
        weight = n * COMPRESSION_RATIO if codec else n
        if weight > unit_bytes:
            big = _plan_large_file(path, relative_name(path, root), n, codec, unit_bytes, len(sources) + bool(group))
            if big is not None:
                flush()
                sources.append(big)
                continue
        if group and size + weight > unit_bytes:
            flush()
        group.append(relative_name(path, root))
        size += weight
    flush()
    return sources


def relative_name(path: Path, root: Path) -> str:
    if root.is_file():
        return root.name
    return path.relative_to(root).as_posix()


def _plan_large_file(path: Path, name: str, size: int, codec: str | None, unit_bytes: int,
                     index: int) -> Source | None:  # fmt: skip
    try:
        head, error = sniff(path)
    except OSError:
        return None  # the reader reports it
    fmt = detect_format(head) if head else ""
    if error is not None or fmt not in SPLITTABLE:
        return None  # binary, empty, unreadable: one ordinary unit, skipped with a warning by the reader
    if codec is None:
        cuts = (*range(0, size, unit_bytes), size)
        return Source(index, "range", (name,), size, fmt, cuts)
    if codec == "bzip2":
        cuts = _bz2_cuts(path, size, max(1, unit_bytes // COMPRESSION_RATIO))
        if len(cuts) > 2:
            return Source(index, "streams", (name,), size, fmt, cuts)
    return Source(index, "stream", (name,), size, fmt)


def _bz2_cuts(path: Path, size: int, step: int) -> tuple[int, ...]:
    """0, the first stream header at or after each multiple of `step`, and the file size.

    A single-stream file has no header after its first bytes: the first probe finds none and the file
    is not split. (A header is 10 fixed bytes; inside compressed data they occur by chance with
    probability ~2^-80 per offset.)"""
    cuts = [0]
    with open(path, "rb") as f:
        target = step
        while target < size:
            found = _find_bz2_stream(f, max(target, cuts[-1] + 1), size)
            if found is None:
                if len(cuts) == 1:
                    break  # nothing after the first probe: one stream
                target += step
                continue
            if found >= size:
                break
            cuts.append(found)
            target = max(target + step, found + 1)
    return (*cuts, size)


def _find_bz2_stream(f: BinaryIO, pos: int, size: int) -> int | None:
    """Offset of the first bzip2 stream header at or after `pos`, looking at most `_BZ2_PROBE` bytes."""
    f.seek(pos)
    data = f.read(min(_BZ2_PROBE, size - pos) + 9)
    match = BZ2_STREAM.search(data)
    return pos + match.start() if match else None
