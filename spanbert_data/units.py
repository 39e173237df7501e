"""Input units: the corpus cut into pieces of work of about `--unit-mb` (docs/FORMAT.md, "Input units").

Where the cuts fall depends only on the corpus bytes and the unit size, never on workers, so the
bytes a build writes are the same on one core or a hundred machines. The plan is a list of
*sources*, in sorted file order, each giving one or more units `(source, sub)`:

- ``files``: consecutive small files read whole (the common case: many files of a few MB);
- ``range``: an uncompressed file larger than a unit, cut at byte offsets ``j·unit_bytes``;
- ``streams``: a bzip2 file made of many streams (Wikipedia's "multistream" dumps, pbzip2), cut at
  the first stream header at or after ``j·unit_bytes/4`` (compressed bytes);
- ``stream``: a large compressed file that cannot be cut (gzip, xz, zstd, single-stream bzip2): the
  driver decompresses it once, in order, and hands out a unit every ``unit_bytes`` of text;
- ``table``: a Parquet or Arrow file whose text column holds more than a unit, cut between row groups (Parquet)
  or record batches (Arrow), planned from its metadata alone (tables.py).

Files are `inputs.InputFile`s: local, or objects in a bucket, probed in parallel then (a ranged read of each
file's first bytes, a Parquet footer, an Arrow file's message headers). Reading a unit's bytes (cut at document
boundaries) is unit_reader.py.
"""

from __future__ import annotations

import contextlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from spanbert_data.inputs import InputFile
from spanbert_data.streams import compression_of, detect_format, sniff
from spanbert_data.tables import TableError, TablePieces, plan_table, table_format

COMPRESSION_RATIO = 4  # a compressed file counts as this many times its size when units are planned
BZ2_STREAM = re.compile(rb"BZh[1-9]1AY&SY")  # a bzip2 stream header followed by its first block's magic
_BZ2_PROBE = 8 << 20  # bytes searched for the next stream header after a cut
SPLITTABLE = ("text", "jsonl", "wikiextractor", "mediawiki")
_PROBES = 16  # files of a corpus in a bucket probed at once while the units are planned


# --- plan -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One piece of pass-1 work. `source`/`sub` are its stable key; the other fields say what to read."""

    source: int
    sub: int
    kind: str  # "files", "range", "streams", "stream" or "table"
    files: tuple[str, ...]  # paths relative to the corpus entry's base (one file unless kind == "files")
    bytes: int  # bytes of text, about (a compressed file counts COMPRESSION_RATIO x its size; "stream": exact)
    fmt: str = ""  # the file's format (sniffed once for the whole file) unless kind == "files"
    start: int = 0  # cuts in the file: byte offsets ("range", "streams", Arrow "table") or row groups (Parquet)
    end: int = 0
    last: bool = True  # the unit ends where its file ends
    note: str = ""  # the last unit of a "stream" or "table" file: how the file ended early ("truncated: ...")
    root: int = 0  # which --corpus entry the files are under (inputs.Corpus.bases)

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
    bytes: int  # file bytes ("files": the group's weight, compressed files counting COMPRESSION_RATIO x; "table":
    #             the text column's bytes)
    fmt: str = ""
    cuts: tuple[int, ...] = ()  # "range"/"streams": 0 = c0 < c1 < ... < cn = file size; "table": see tables.py
    root: int = 0
    weights: tuple[int, ...] = ()  # "table": the text bytes of each unit
    note: str = ""  # "table": why the pieces end before the file does

    @property
    def text_bytes(self) -> int:
        """About how many bytes of text the source holds (compressed files count COMPRESSION_RATIO x their size)."""
        return self.bytes * COMPRESSION_RATIO if self.kind in ("streams", "stream") else self.bytes

    def units(self) -> list[Unit]:
        """The units of this source; a "stream" source finds its own while it is read (`split_stream`)."""
        if self.kind == "files":
            return [Unit(self.index, 0, "files", self.files, self.bytes, root=self.root)]
        if self.kind == "stream":
            raise ValueError("a stream source's units are only known once it is read")
        ratio = COMPRESSION_RATIO if self.kind == "streams" else 1
        pairs = list(zip(self.cuts[:-1], self.cuts[1:], strict=True))
        weights = self.weights or [(hi - lo) * ratio for lo, hi in pairs]
        return [
            Unit(self.index, j, self.kind, self.files, w, self.fmt, lo, hi, last=hi == self.cuts[-1],
                 note=self.note if hi == self.cuts[-1] else "", root=self.root)  # fmt: skip
            for j, ((lo, hi), w) in enumerate(zip(pairs, weights, strict=True))
        ]

    def to_json(self) -> list:
        """What build.json pins: a re-run with another plan (other files, sizes or --unit-mb) is refused."""
        return [self.kind, self.root, list(self.files), self.bytes, self.fmt, list(self.cuts)]


@dataclass(frozen=True)
class _Probe:
    """What planning needs to know about one file, read from its first bytes (and a table's metadata)."""

    weight: int  # text bytes, about
    codec: str | None = None
    table: TablePieces | None = None


def _probe(file: InputFile, text_field: str) -> _Probe:
    try:
        head = file.read_range(0, 16)
    except OSError:
        return _Probe(file.size)  # unreadable: the reader names it and counts it
    fmt = table_format(head)
    if fmt is not None:
        try:
            table = plan_table(file, fmt, text_field)  # CorpusError: a missing or non-string text column
        except (TableError, OSError):
            return _Probe(file.size)  # corrupt or cut short: the reader names it and counts it
        return _Probe(table.weight, table=table)
    codec = compression_of(head)
    return _Probe(file.size * COMPRESSION_RATIO if codec else file.size, codec)


def plan_sources(files: list[InputFile], unit_bytes: int, text_field: str = "text") -> list[Source]:
    """Cut the ordered corpus files into sources (see the module docstring); a pure function of the bytes.
    CorpusError when a table file has no string column `text_field`."""
    sources: list[Source] = []
    group: list[str] = []
    size, root = 0, 0

    def flush() -> None:
        nonlocal group, size
        if group:
            sources.append(Source(len(sources), "files", tuple(group), size, root=root))
            group, size = [], 0

    remote = any(f.path is None for f in files)
    with ThreadPoolExecutor(_PROBES if remote else 1) as pool:  # in a bucket: one round trip per file, overlapped
        probes = pool.map(lambda f: _probe(f, text_field), files)
        for file, probe in zip(files, probes, strict=True):
            if file.root != root:
                flush()
                root = file.root
            if probe.weight > unit_bytes:
                big = _plan_large_file(file, probe, unit_bytes, len(sources) + bool(group))
                if big is not None:
                    flush()
                    sources.append(big)
                    continue
            if group and size + probe.weight > unit_bytes:
                flush()
            group.append(file.name)
            size += probe.weight
        flush()
    return sources


def _plan_large_file(file: InputFile, probe: _Probe, unit_bytes: int, index: int) -> Source | None:
    if probe.table is not None:
        return _plan_table(file, probe.table, unit_bytes, index)
    try:
        head, error = sniff(file)
    except OSError:
        return None  # the reader reports it
    fmt = detect_format(head) if head else ""
    if error is not None or fmt not in SPLITTABLE:
        return None  # binary, empty, unreadable: one ordinary unit, skipped with a warning by the reader
    size = file.size
    if probe.codec is None:
        cuts = (*range(0, size, unit_bytes), size)
        return Source(index, "range", (file.name,), size, fmt, cuts, root=file.root)
    if probe.codec == "bzip2":
        cuts = _bz2_cuts(file, size, max(1, unit_bytes // COMPRESSION_RATIO))
        if len(cuts) > 2:
            return Source(index, "streams", (file.name,), size, fmt, cuts, root=file.root)
    return Source(index, "stream", (file.name,), size, fmt, root=file.root)


def _plan_table(file: InputFile, table: TablePieces, unit_bytes: int, index: int) -> Source | None:
    """Consecutive pieces (row groups, record batches) together while their text fits in a unit (at least one
    each); None for a file of one piece (read whole, with the small files)."""
    if len(table.starts) < 2:
        return None
    cuts, weights = [table.starts[0]], [0]
    for start, weight in zip(table.starts, table.weights, strict=True):
        if weights[-1] and weights[-1] + weight > unit_bytes:
            cuts.append(start)
            weights.append(0)
        weights[-1] += weight
    return Source(index, "table", (file.name,), table.weight, table.fmt, (*cuts, table.end), root=file.root,
                  weights=tuple(weights), note=table.note)  # fmt: skip


def _bz2_cuts(file: InputFile, size: int, step: int) -> tuple[int, ...]:
    """0, the first stream header at or after each multiple of `step`, and the file size.

    A single-stream file has no header after its first bytes: the first probe finds none and the file
    is not split. (A header is 10 fixed bytes; inside compressed data they occur by chance with
    probability ~2^-80 per offset.)"""
    cuts = [0]
    with contextlib.closing(file.reader(0)) as f:
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
