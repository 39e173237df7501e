"""Reading an input unit: the documents it owns, whatever the cut (docs/FORMAT.md, "Input units").

A cut offset ``x`` is a raw position; the unit boundary is the first *document boundary* at or after
it, `find_boundary(x)`: a line after a blank line (plain text), a line starting ``<doc`` (WikiExtractor),
any line (JSON Lines), a line starting ``<page>`` (MediaWiki XML). A unit owns the documents that
start in [boundary(start), boundary(end)); the unit before it computes the same boundary from the
same bytes, so every document is read exactly once, whole. Plain text with no blank line for
`BOUNDARY_WINDOW` bytes after a cut is cut at the next line start instead (the reader already splits
such documents into parts of `corpus.MAX_DOC_CHARS`).
"""

from __future__ import annotations

import bz2
import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from spanbert_data.corpus import read_documents, read_formatted
from spanbert_data.streams import CHUNK, DECOMPRESSION_ERRORS, open_decompressed
from spanbert_data.units import BZ2_STREAM, Source, Unit

BOUNDARY_WINDOW = 8 << 20  # plain text without a blank line for this long is cut at a line start
LOOKBEHIND = 1 << 13  # bytes kept before a cut: enough to see the (short) blank line ending there
_BLANK_MAX = 4094  # a "blank line" is at most this many ASCII blanks: the rule needs a bounded look-behind

_NEXT_BLANK_END = re.compile(rb"\n[ \t\r\f\v]{0,%d}\n" % _BLANK_MAX)
_NEXT_DOC_LINE = re.compile(rb"\n[ \t]*<doc[\s>]")
_NEXT_PAGE_LINE = re.compile(rb"\n[ \t]*<page[\s>]")


# --- document boundaries -------------------------------------------------------------------------

def find_boundary(buf: bytes | bytearray, pos: int, fmt: str, bof: bool, eof: bool) -> int | None:
    """The first document boundary p >= pos in `buf`, or None when `buf` is too short to decide.

    `buf` must hold at least `LOOKBEHIND` bytes before `pos` unless `bof` (buf starts at the beginning
    of the file); `eof` says buf ends at the end of the data (the end is then a boundary).
    """
    if pos == 0 and bof:
        return 0
    if fmt == "jsonl":
        return _line_start(buf, pos, eof)
    if fmt == "mediawiki":
        return _pattern_line(_NEXT_PAGE_LINE, buf, pos, eof)
    if fmt == "wikiextractor":
        found = _pattern_line(_NEXT_DOC_LINE, buf, pos, eof, limit=pos + BOUNDARY_WINDOW)
    else:  # plain text: the line after a blank line
        found = _after_blank_line(buf, pos, eof, limit=pos + BOUNDARY_WINDOW)
    if found is not None and found >= 0:
        return found
    if found is None:
        return None  # undecided: more bytes are needed
    return _line_start(buf, pos, eof)  # -1: no document boundary within the window


def _line_start(buf, pos: int, eof: bool) -> int | None:
    nl = buf.find(b"\n", max(0, pos - 1))
    if nl >= 0:
        return nl + 1
    return len(buf) if eof else None


def _pattern_line(pattern: re.Pattern, buf, pos: int, eof: bool, limit: int | None = None) -> int | None:
    """First line start p >= pos whose line matches `pattern` (after the newline); -1 past `limit`."""
    match = pattern.search(buf, max(0, pos - 1))
    if match is not None:
        p = match.start() + 1
        return -1 if limit is not None and p >= limit else p
    if eof:
        return len(buf)
    # A match may still begin in the last few bytes (a line split across reads): undecided unless the
    # window is already exhausted.
    if limit is not None and len(buf) - 16 >= limit:
        return -1
    return None


def _after_blank_line(buf, pos: int, eof: bool, limit: int) -> int | None:
    start = max(0, pos - _BLANK_MAX - 2)
    while True:
        match = _NEXT_BLANK_END.search(buf, start)
        if match is None:
            if eof:
                return len(buf)
            return -1 if len(buf) - _BLANK_MAX - 2 >= limit else None
        p = match.end()
        if p >= pos:
            if p >= limit:
                return -1
            # Undecided if the blank run might continue past the end of what was read.
            return p
        start = match.end() - 1  # blank lines may follow each other: the closing newline opens the next


# --- reading the owned bytes of a unit ---------------------------------------------------------------

class OwnedBytes(io.RawIOBase):
    """The bytes a unit owns: from the boundary at its start to the boundary at its end.

    `chunks` yields (data, own): the unit's own bytes in order, then the bytes after it (read only as
    far as the end boundary needs). `behind` is what precedes the first chunk (`LOOKBEHIND` bytes, or
    everything when `bof`). Memory stays bounded by a few chunks plus `BOUNDARY_WINDOW`.
    """

    def __init__(self, chunks: Iterator[tuple[bytes, bool]], behind: bytes, fmt: str, bof: bool):
        self._chunks = chunks
        self._fmt = fmt
        self._bof = bof
        self._buf = bytearray(behind)
        self._base = 0  # absolute offset of _buf[0]
        self._start = len(behind)  # the cut, absolute
        self._own_end: int | None = None  # absolute end of the own bytes, once known
        self._eof = False
        self._lo: int | None = None  # absolute start boundary
        self._hi: int | None = None  # absolute end boundary
        self._emitted = 0  # absolute position up to which bytes were returned (from _lo on)
        self._total = len(behind)  # absolute end of what was pulled

    def readable(self) -> bool:
        return True

    def _pull(self) -> bool:
        """Append the next chunk; False at the end of the data."""
        for data, own in self._chunks:
            if not own and self._own_end is None:
                self._own_end = self._total
            self._buf += data
            self._total += len(data)
            return True
        if self._own_end is None:
            self._own_end = self._total
        self._eof = True
        return False

    def _boundary(self, pos: int) -> int:
        while True:
            found = find_boundary(self._buf, pos - self._base, self._fmt, self._bof and self._base == 0, self._eof)
            if found is not None:
                return found + self._base
            self._pull()  # at the end of the data this sets eof, and the next search decides

    def _trim(self, keep_from: int) -> None:
        """Forget bytes before absolute `keep_from` (minus a look-behind margin)."""
        cut = keep_from - LOOKBEHIND - self._base
        if cut > CHUNK:
            del self._buf[:cut]
            self._base += cut
            self._bof = False

    def readinto(self, buffer) -> int:
        if self._lo is None:
            self._lo = self._boundary(self._start)
            self._emitted = self._lo
        while True:
            if self._hi is None and self._own_end is not None:
                self._hi = max(self._boundary(self._own_end), self._lo)
            limit = self._hi if self._hi is not None else self._total
            if self._emitted < limit:
                n = min(len(buffer), limit - self._emitted)
                at = self._emitted - self._base
                buffer[:n] = self._buf[at : at + n]
                self._emitted += n
                if self._hi is None:
                    self._trim(self._emitted)
                return n
            if self._hi is not None:
                return 0
            self._pull()


def file_chunks(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, bool]]:
    """(data, own) chunks of an uncompressed file from `start`: own up to `end`, then the rest."""
    f.seek(start)
    pos = start
    while True:
        want = CHUNK if pos >= end else min(CHUNK, end - pos)
        data = f.read(want)
        if not data:
            return
        yield data, pos < end
        pos += len(data)


def bz2_stream_chunks(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, bool]]:
    """Decoded (data, own) chunks of the bzip2 streams starting at `start`: own while a stream starts before `end`."""
    f.seek(start)
    stream_start, offset = start, start
    decoder = bz2.BZ2Decompressor()
    pending = b""
    while True:
        if not pending:
            pending = f.read(1 << 16)
            if not pending:
                if not decoder.eof and stream_start < offset:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                return
        consumed = len(pending)
        out = decoder.decompress(pending)
        if decoder.eof:
            rest = decoder.unused_data
            consumed -= len(rest)
            pending = rest
        else:
            pending = b""
        if out:
            yield out, stream_start < end
        offset += consumed
        if decoder.eof:
            stream_start = offset
            decoder = bz2.BZ2Decompressor()
            if not pending:
                pending = f.read(1 << 16)
                if not pending:
                    return


def bz2_lookbehind(f: BinaryIO, start: int) -> tuple[bytes, bool]:
    """The last `LOOKBEHIND` decoded bytes before the stream at `start`, and whether they reach the file start."""
    if start == 0:
        return b"", True
    starts = [0]
    # The stream headers before `start`: scan backwards in growing windows until enough text is covered.
    window = 1 << 20
    while True:
        lo = max(0, start - window)
        f.seek(lo)
        data = f.read(start - lo)
        starts = sorted({lo + m.start() for m in BZ2_STREAM.finditer(data)} | ({0} if lo == 0 else set()))
        for first in reversed(starts):
            pieces = []
            for data, own in bz2_stream_chunks(f, first, start):
                if not own:
                    break
                pieces.append(data)
            text = b"".join(pieces)
            if len(text) >= LOOKBEHIND or first == 0:
                return text[-LOOKBEHIND:], first == 0 and len(text) <= LOOKBEHIND
        if lo == 0:
            return b"", True
        window *= 4


def open_unit_bytes(base: Path, unit: Unit, stack: contextlib.ExitStack, work: Path | None = None) -> BinaryIO:
    """A binary stream of the bytes a non-"files" unit owns, wrapped so that its format reader can parse it."""
    if unit.kind == "stream":
        if work is None:
            raise ValueError("a stream unit needs the directory holding its work file")
        raw: BinaryIO = stack.enter_context(open(work / unit.work_file, "rb", buffering=CHUNK))
    else:
        f = stack.enter_context(open(base / unit.files[0], "rb", buffering=0))
        if unit.kind == "range":
            lo = max(0, unit.start - LOOKBEHIND)
            f.seek(lo)
            behind = f.read(unit.start - lo)
            raw = OwnedBytes(file_chunks(f, unit.start, unit.end), behind, unit.fmt, bof=lo == 0)
        elif unit.kind == "streams":
            behind, bof = bz2_lookbehind(f, unit.start)
            raw = OwnedBytes(bz2_stream_chunks(f, unit.start, unit.end), behind, unit.fmt, bof=bof)
        else:
            raise ValueError(f"unit kind {unit.kind!r} has no byte range")
    if unit.fmt == "mediawiki" and not (unit.sub == 0 and unit.last):
        raw = _XmlFragment(raw, opened=unit.sub == 0)
    return raw


class _XmlFragment(io.RawIOBase):
    """Pages cut out of a MediaWiki dump, put back inside a root element so that the XML parser takes them.

    The first unit of a file carries the real `<mediawiki …>` opening; the unit reaching the end of the
    file carries the real closing tag. Every other piece gets the missing tag(s) added around it."""

    _CLOSE = b"</mediawiki>"

    def __init__(self, inner: BinaryIO, opened: bool):
        self._inner = inner
        self._pending = b"" if opened else b"<mediawiki>"
        self._tail = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._pending and not self._done:
            data = self._inner.read(len(buffer))
            if data:
                self._tail = (self._tail + data)[-64:]
                self._pending = data
            else:
                self._done = True
                if not self._tail.rstrip().endswith(self._CLOSE):
                    self._pending = self._CLOSE
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


# --- unsplittable compressed files ----------------------------------------------------------------

@dataclass
class StreamPiece:
    """The decoded text of one unit of a "stream" source, as the driver's reader cut it."""

    sub: int
    data: bytes
    last: bool
    error: BaseException | None = None  # the decompression error that ended the file early, if any


def split_stream(path: Path, fmt: str, unit_bytes: int) -> Iterator[StreamPiece]:
    """Decompress `path` once, in order, and cut its text at the boundary after every `unit_bytes`.

    The cut rule is the same as for a "range" unit, applied to the decoded text, so the pieces depend
    only on the file's bytes and `unit_bytes`. A decompression error ends the file: what decoded cleanly
    becomes the last piece, carrying the error for the reader to count.
    """
    with contextlib.ExitStack() as stack:
        stream = open_decompressed(path, stack)
        buf = bytearray()
        base = lo = sub = 0  # base: absolute offset of buf[0]; lo: start of the current piece
        eof, error = False, None

        def pull() -> None:
            nonlocal eof, error
            try:
                data = stream.read(CHUNK)
            except (EOFError, OSError, *DECOMPRESSION_ERRORS) as exc:
                data, error = b"", exc
            if data:
                buf.extend(data)
            else:
                eof = True

        while True:
            cut = (sub + 1) * unit_bytes
            while not eof and base + len(buf) < cut + LOOKBEHIND:
                pull()
            if base + len(buf) <= cut:  # eof before the cut: the rest is the last piece
                hi = base + len(buf)
            else:
                while (found := find_boundary(buf, cut - base, fmt, base == 0, eof)) is None:
                    pull()
                hi = found + base
            last = eof and hi == base + len(buf)
            yield StreamPiece(sub, bytes(buf[lo - base : hi - base]), last, error if last else None)
            if last:
                return
            # The next search looks behind the next cut (which may lie before hi when a document is long).
            keep = max(0, min(hi, cut + unit_bytes) - LOOKBEHIND - base)
            del buf[:keep]
            base += keep
            lo, sub = hi, sub + 1


def iter_stream_units(source: Source, base: Path, unit_bytes: int) -> Iterator[tuple[Unit, StreamPiece]]:
    """The units of a "stream" source with their text, in order (the driver writes each to its work file)."""
    for piece in split_stream(base / source.files[0], source.fmt, unit_bytes):
        note = ""
        if piece.error is not None:
            reason = "truncated" if isinstance(piece.error, EOFError) else "corrupt"
            note = f"{reason}: {piece.error}"
        unit = Unit(source.index, piece.sub, "stream", source.files, len(piece.data), source.fmt,
                    last=piece.last, note=note)  # fmt: skip
        yield unit, piece


def unit_documents(base: Path, unit: Unit, stats, warn, work: Path | None = None) -> Iterator:
    """The documents a unit owns, in order (`corpus.Document`s; problems counted in `stats`)."""
    if unit.kind == "files":
        for name in unit.files:
            yield from read_documents(base / name, base, stats, warn)
        return
    source = unit.files[0]
    # A part of a file neither counts the file nor warns when empty: the driver does that once per file.
    yield from read_formatted(lambda stack: open_unit_bytes(base, unit, stack, work), source, unit.fmt, stats, warn,
                              whole_file=False)  # fmt: skip
    if unit.note:  # the driver's read of a compressed file ended early: count it once, in the last unit
        reason, _, detail = unit.note.partition(": ")
        warn(f"{source}: {reason} compressed data ({detail}); kept what decoded cleanly")
        stats.skip(reason)


class UnitLines:
    """The lines of a unit's documents in order (what a vocabulary counts), stopping after the document that brings
    the text read to `char_budget` characters (None: the whole unit); `chars` is what was read so far."""

    def __init__(self, base: Path, unit: Unit, stats, warn, char_budget: int | None = None):
        self.base, self.unit, self.stats, self.warn, self.char_budget = base, unit, stats, warn, char_budget
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for doc in unit_documents(self.base, self.unit, self.stats, self.warn):
            yield from doc.lines
            self.chars += sum(map(len, doc.lines))
            if self.char_budget is not None and self.chars >= self.char_budget:
                return
