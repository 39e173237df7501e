"""Byte streams for the corpus readers: decompression chosen by magic bytes, sniffing, decoded lines.

- `open_decompressed(file, stack)`: gzip, bzip2, xz or zstd recognised by their first bytes (the file
  name is never looked at); a stream cut short raises `EOFError` once everything before the cut has
  been returned, so callers keep what decoded cleanly. `file` is a local path or anything with an `open()`
  that gives a buffered binary stream (`inputs.InputFile`: a local file or an object in a bucket).
- `sniff(file)` / `detect_format(head)`: the first non-blank decompressed bytes decide binary or text,
  and which text format.
- `text_lines` / `json_lines`: bounded-memory line iterators. Undecodable bytes become U+FFFD and NUL
  characters are removed; both are counted in `stats.replaced_chars` (`stats` is any object with that
  attribute, a `corpus.CorpusStats` in practice).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

CHUNK = 1 << 20  # bytes per read from disk / the decompressor
SNIFF_BYTES = 1 << 16  # decompressed bytes looked at to decide binary/format
MAX_LINE_CHARS = 1 << 20  # a longer text line is split at whitespace into pieces of about this size
MAX_JSON_LINE_CHARS = 1 << 26  # a longer JSON line is not kept (memory bound)
BINARY_FRACTION = 0.10  # control bytes + invalid UTF-8 above this share of the sniffed bytes -> binary

# What a failing decompressor raises, besides EOFError (truncation) and OSError (gzip.BadGzipFile).
DECOMPRESSION_ERRORS = (zlib.error, lzma.LZMAError, zstandard.ZstdError)


# --- compression ---------------------------------------------------------------------------------

def compression_of(magic: bytes) -> str | None:
    """The compression format announced by the first bytes of a file, or None."""
    if magic.startswith(b"\x1f\x8b"):
        return "gzip"
    if magic.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    # "BZh" + block size digit + the magic of a first block (pi) or of the end of stream (sqrt(pi)).
    if magic[:3] == b"BZh" and magic[3:4].isdigit() and magic[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    return None


def open_raw(file) -> io.BufferedIOBase:
    """A buffered binary stream of a local path, or of anything with an `open()` (see the module docstring)."""
    return open(file, "rb", buffering=CHUNK) if isinstance(file, (str, Path)) else file.open()


def open_decompressed(file, stack: contextlib.ExitStack) -> BinaryIO:
    raw = stack.enter_context(open_raw(file))
    kind = compression_of(raw.peek(16)[:16])
    if kind == "gzip":
        return stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == "bzip2":
        return stack.enter_context(bz2.BZ2File(raw))
    if kind == "xz":
        return stack.enter_context(lzma.LZMAFile(raw))
    if kind == "zstd":
        return stack.enter_context(_ZstdReader(raw))
    return raw


class _ZstdReader(io.RawIOBase):
    """Concatenated zstd frames; raises EOFError when the input ends inside a frame.

    zstandard's own `stream_reader` silently returns short data on a truncated file, so this
    drives a `decompressobj` and checks that the last frame ended.
    """

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._in_frame = False
        self._out = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pos >= len(self._out):
            # Small input chunks bound the output of one call (text compresses ~4x, not 1000x).
            data = self._raw.read(1 << 16)
            if not data:
                if self._in_frame:
                    raise EOFError("zstd stream ends inside a frame")
                return 0
            pieces = []
            while data:
                if not self._in_frame:
                    self._dobj = self._dctx.decompressobj()
                    self._in_frame = True
                pieces.append(self._dobj.decompress(data))
                data = b""
                if self._dobj.eof:
                    self._in_frame = False
                    data = self._dobj.unused_data
            self._out, self._pos = b"".join(pieces), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos:self._pos + n]
        self._pos += n
        return n


class CountingReader(io.RawIOBase):
    """Counts the decompressed bytes that go through it (`CorpusStats.bytes`)."""

    def __init__(self, inner: BinaryIO):
        self._inner = inner
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._inner.readinto(buffer)
        self.count += n or 0
        return n


def sniff(path) -> tuple[bytes, BaseException | None]:
    """Up to SNIFF_BYTES decompressed bytes from the first non-whitespace byte on, and the
    decompression error that stopped the read early, if any. Raises OSError if the file cannot be opened."""
    head, error = b"", None
    with contextlib.ExitStack() as stack:
        stream = open_decompressed(path, stack)
        try:
            while len(head) < SNIFF_BYTES:
                chunk = stream.read(SNIFF_BYTES)
                if not chunk:
                    break
                head = (head + chunk) if head else chunk.lstrip()
        except (EOFError, *DECOMPRESSION_ERRORS) as exc:
            error = exc
        except OSError as exc:
            if not isinstance(stream, io.BufferedReader):  # gzip.BadGzipFile etc.: the data, not the disk
                error = exc
            else:
                raise
    return head[:SNIFF_BYTES], error


# --- format detection ------------------------------------------------------------------------------

# Bytes that plain text may contain: everything but the C0 controls other than \t \n \v \f \r, ESC, DEL.
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\x0b\x0c\r\x1b") + b"\x7f"
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
WIKIEXTRACTOR_DOC = re.compile(r"<doc(\s[^>]*)?>")
ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')


def detect_format(head: bytes) -> str:
    """'binary', 'mediawiki', 'unsupported_xml', 'wikiextractor', 'jsonl' or 'text' from the first bytes."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16: not supported, and full of NULs
        return "binary"
    text = head.decode("utf-8", "surrogateescape")
    # The sample may end inside a multi-byte character: ignore invalid bytes in its last 3 positions.
    invalid = len(_LONE_SURROGATE.findall(text[:-3]))
    control = len(head.translate(None, _NOT_CONTROL))
    if invalid + control > BINARY_FRACTION * len(head):
        return "binary"
    text = text.lstrip("\ufeff \t\r\n")
    if text.startswith("<?xml") or text.startswith("<mediawiki"):
        return "mediawiki" if re.search(r"<mediawiki[\s>]", text) else "unsupported_xml"
    if WIKIEXTRACTOR_DOC.match(text):
        return "wikiextractor"
    if text.startswith("{"):
        lines = text.split("\n")
        complete = lines[:-1] if len(lines) > 1 else []
        for line in complete[:5]:
            try:
                if isinstance(json.loads(line), dict):
                    return "jsonl"
            except ValueError:
                continue
        if not complete and text.startswith('{"'):  # one line longer than the sample
            return "jsonl"
    return "text"


# --- decoded lines -----------------------------------------------------------------------------------

def clean_text(text: str, stats, surrogates: bool = True) -> str:
    """Remove NULs and replace undecodable bytes (decoded as lone surrogates) by U+FFFD, counting both.
    `surrogates=False`: the text was decoded from valid UTF-8, which holds none (and the search is the slow part)."""
    if "\x00" in text:
        stats.replaced_chars += text.count("\x00")
        text = text.replace("\x00", "")
    if surrogates and not text.isascii():
        text, n = _LONE_SURROGATE.subn("\ufffd", text)
        stats.replaced_chars += n
    return text


def _pieces(stream: BinaryIO, stats, size: int) -> Iterator[tuple[str, bool]]:
    """(text, ends_line) pieces of at most `size` characters; universal newlines; cleaned."""
    # surrogateescape keeps every undecodable byte as one lone surrogate, which _clean counts and replaces.
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline=None)
    first = True
    while True:
        piece = text.readline(size)
        if not piece:
            return
        if first:
            piece, first = piece.lstrip("\ufeff"), False
        ends = piece.endswith("\n")
        yield clean_text(piece[:-1] if ends else piece, stats), ends


def text_lines(stream: BinaryIO, stats) -> Iterator[str]:
    """Lines of a text stream; a line longer than MAX_LINE_CHARS comes out in pieces cut at whitespace."""
    carry = ""
    for piece, ends in _pieces(stream, stats, MAX_LINE_CHARS):
        piece, carry = carry + piece, ""
        if not ends and len(piece) >= MAX_LINE_CHARS:
            cut = max(piece.rfind(" "), piece.rfind("\t"))
            if cut > 0:
                piece, carry = piece[:cut], piece[cut + 1:]
        yield piece
    if carry:
        yield carry


def json_lines(stream: BinaryIO, stats) -> Iterator[str | None]:
    """Whole lines of a JSON Lines stream; None for a line longer than MAX_JSON_LINE_CHARS (not kept)."""
    parts: list[str] = []
    size, too_long = 0, False
    for piece, ends in _pieces(stream, stats, MAX_LINE_CHARS):
        if not too_long:
            parts.append(piece)
            size += len(piece)
            if size > MAX_JSON_LINE_CHARS:
                parts, too_long = [], True
        if ends:
            yield None if too_long else "".join(parts)
            parts, size, too_long = [], 0, False
    if parts or too_long:
        yield None if too_long else "".join(parts)


