"""Corpus readers: the files under `--corpus` -> a deterministic stream of `Document`s (SPEC §1 "corpus layout").

Every file is detected by content, never by name. A Parquet file or an Arrow IPC file or stream (their magic
bytes, tables.py) gives one document per row of its text column (`--text-field`, default ``text``), its text
split into lines exactly as a JSON Lines record's. Otherwise compression by magic bytes (gzip, bzip2, xz, zstd),
then the format by sniffing the first non-blank decompressed bytes (streams.detect_format), read by its reader in
formats.py:

- ``<mediawiki`` (after an optional ``<?xml …?>``): a raw MediaWiki XML dump, articles only (`wikixml.py`);
- ``<doc …>``: WikiExtractor text output;
- ``{`` and a first line that is a JSON object: JSON Lines with a ``text`` field (or `--text-field`);
- anything else: plain text, one sentence or paragraph per line, a blank line between documents.

Everything streams: memory is bounded by `MAX_LINE_CHARS` and `MAX_DOC_CHARS`, never by the file size.
Longer lines are split at the last whitespace (the block builder splits over-long lines at word starts
anyway, SPEC §1) and longer documents are emitted in consecutive parts.

Bad input never raises from `read_documents`: it is warned about (one line naming the file) and counted in
`CorpusStats.skipped` (reason -> count). Reasons counting FILES: ``binary``, ``empty``, ``unreadable``
(open/read fails, a dangling symlink, a FIFO/socket/device), ``symlink_loop``, ``hidden`` (names starting
with "." are not read), ``truncated`` (compressed stream cut short: what decoded cleanly is kept),
``corrupt`` (bad compressed data, malformed XML, a bad Parquet footer or Arrow message: idem), ``unsupported_xml``,
``no_text`` (read fine, no document). Reasons counting ITEMS inside files: ``redirect``, ``non_article``
(MediaWiki pages), ``bad_json_line``, ``empty_document``, ``null_text`` (a table row whose text is null),
``text_outside_doc`` (lines outside WikiExtractor ``<doc>``).

The listing of a corpus (directories, globs, URLs, Hugging Face folders) is listing.py; the files come here one at
a time, as local paths or `inputs.InputFile`s.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from xml.etree.ElementTree import ParseError

from spanbert_data.errors import CorpusError
from spanbert_data.formats import READERS, Document, DocumentBuilder
from spanbert_data.inputs import InputFile
from spanbert_data.location import Location
from spanbert_data.progress import stderr
from spanbert_data.streams import (
    CHUNK,
    DECOMPRESSION_ERRORS,
    CountingReader,
    detect_format,
    open_decompressed,
    open_raw,
    sniff,
)
from spanbert_data.tables import TableError, table_format, table_texts

FILE_REASONS = ("binary", "empty", "unreadable", "symlink_loop", "hidden", "truncated", "corrupt",
                "unsupported_xml", "no_text")


def print_to_stderr(message: str) -> None:
    """The default warning sink: one line on stderr."""
    stderr(f"warning: {message}")


@dataclass
class CorpusStats:
    """What reading produced and what it skipped (merged across files, units and workers)."""

    files: int = 0  # files that yielded at least one document
    documents: int = 0
    lines: int = 0
    bytes: int = 0  # decompressed bytes read
    replaced_chars: int = 0  # undecodable bytes replaced by U+FFFD + NUL characters removed
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (see the module docstring)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def merge(self, other: CorpusStats) -> None:
        self.files += other.files
        self.documents += other.documents
        self.lines += other.lines
        self.bytes += other.bytes
        self.replaced_chars += other.replaced_chars
        for reason, count in other.skipped.items():
            self.skip(reason, count)

    @classmethod
    def from_dict(cls, data: dict) -> CorpusStats:
        """The inverse of `to_dict` (extra keys, e.g. a manifest's ``units``, are ignored)."""
        return cls(files=data.get("files", 0), documents=data.get("documents", 0), lines=data.get("lines", 0),
                   bytes=data.get("bytes", 0), replaced_chars=data.get("replaced_chars", 0),
                   skipped=dict(data.get("skipped", {})))

    def to_dict(self) -> dict:
        return {"files": self.files, "documents": self.documents, "lines": self.lines, "bytes": self.bytes,
                "skipped": dict(sorted(self.skipped.items())), "replaced_chars": self.replaced_chars}


def describe_skipped(stats: CorpusStats) -> str:
    """What reading skipped, for messages and the build's summary: '3 files skipped (binary: 2, empty: 1)', then
    the item-level reasons ('skipped redirect: 4'), or 'nothing skipped'."""
    per_file = {r: n for r, n in sorted(stats.skipped.items()) if r in FILE_REASONS}
    items = {r: n for r, n in sorted(stats.skipped.items()) if r not in FILE_REASONS}
    parts = []
    if per_file:
        parts.append(f"{sum(per_file.values())} files skipped (" + ", ".join(f"{r}: {n}" for r, n in per_file.items())
                     + ")")  # fmt: skip
    if items:
        parts.append("skipped " + ", ".join(f"{r}: {n}" for r, n in items.items()))
    return "; also ".join(parts) or "nothing skipped"


def require_documents(root: str | Path, stats: CorpusStats) -> None:
    """Raise `CorpusError` when reading everything under `root` produced no document."""
    if stats.documents == 0:
        raise CorpusError(f"no readable text under {root}: {describe_skipped(stats)}")


# --- one file ---------------------------------------------------------------------------------------

def read_documents(path: Path | InputFile, root: Path | None, stats: CorpusStats,
                   warn: Callable[[str], None] = print_to_stderr, text_field: str = "text") -> Iterator[Document]:
    """Stream the documents of one file (any compression, any supported format): a local path (named relative to
    `root` in messages) or an `InputFile` (named by its name; `root` is not used).

    Never raises for bad content: problems are warned about and counted in `stats` (see the module
    docstring); documents read before a truncation or corruption are kept. A table without a string column
    `text_field` is the exception: CorpusError (the option is wrong, not the file).
    """
    if isinstance(path, InputFile):
        source = path.name
    else:
        path, root = Path(path), Path(root)
        source = _relative(path, root)
    try:
        with open_raw(path) as raw:
            fmt = table_format(raw.peek(8)[:8])
        head, head_error = (b"", None) if fmt else sniff(path)
    except OSError as exc:
        warn(f"{source}: cannot be read ({exc.strerror or exc}); skipped")
        stats.skip("unreadable")
        return
    if fmt:
        file = path if isinstance(path, InputFile) else InputFile(Location.of(path.parent), 0, path.name)
        yield from read_table(file, source, fmt, text_field, stats, warn)
        return
    if not head:
        if head_error is not None:
            reason = "truncated" if isinstance(head_error, EOFError) else "corrupt"
            warn(f"{source}: {reason} compressed data, nothing decoded ({head_error}); skipped")
            stats.skip(reason)
        else:
            warn(f"{source}: empty (no text); skipped")
            stats.skip("empty")
        return
    fmt = detect_format(head)
    if fmt == "binary":
        warn(f"{source}: looks binary (control bytes or invalid UTF-8 in its first bytes); skipped")
        stats.skip("binary")
        return
    if fmt == "unsupported_xml":
        warn(f"{source}: XML but not a MediaWiki export (<mediawiki>); skipped")
        stats.skip("unsupported_xml")
        return

    yield from read_formatted(lambda stack: open_decompressed(path, stack), source, fmt, stats, warn,
                              text_field=text_field)  # fmt: skip


def read_formatted(open_stream: Callable[[contextlib.ExitStack], BinaryIO], source: str, fmt: str,
                   stats: CorpusStats, warn: Callable[[str], None] = print_to_stderr,
                   whole_file: bool = True, text_field: str = "text") -> Iterator[Document]:  # fmt: skip
    """The documents of a byte stream in a known text format (a whole file, or the part of one a unit owns).

    `open_stream(stack)` opens the stream; errors are counted as in `read_documents`. A part that is not
    the file's first (`whole_file=False`) neither counts the file nor warns when it holds no document.
    """
    reader = functools.partial(READERS[fmt], text_field=text_field) if fmt == "jsonl" else READERS[fmt]
    documents_before, replaced_before, failed = stats.documents, stats.replaced_chars, False
    counter = None
    with contextlib.ExitStack() as stack:
        try:
            counter = CountingReader(open_stream(stack))
            stream = io.BufferedReader(counter, CHUNK)
            yield from _counted(reader(stream, source, stats, warn), stats)
        except EOFError as exc:
            warn(f"{source}: truncated compressed data ({exc}); kept what decoded cleanly")
            stats.skip("truncated")
            failed = True
        except (OSError, ParseError, *DECOMPRESSION_ERRORS) as exc:
            warn(f"{source}: corrupt {'XML' if isinstance(exc, ParseError) else 'data'} ({exc}); "
                 "kept what decoded cleanly")
            stats.skip("corrupt")
            failed = True
        finally:
            stats.bytes += counter.count if counter is not None else 0
    _file_done(source, stats, warn, documents_before, replaced_before, failed, whole_file)


def read_table(file: InputFile, source: str, fmt: str, text_field: str, stats: CorpusStats,
               warn: Callable[[str], None] = print_to_stderr, lo: int | None = None, hi: int | None = None,
               whole_file: bool = True) -> Iterator[Document]:  # fmt: skip
    """The documents of a Parquet or Arrow file (pieces [lo, hi), or all of it): one per row of `text_field`, its
    text made into lines as JSON Lines makes a record's (`DocumentBuilder.text`). Null texts are skipped and
    counted; a file that cannot be read is warned about and counted, keeping the rows read before."""
    documents_before, replaced_before, failed, nulls = stats.documents, stats.replaced_chars, False, 0
    builder = DocumentBuilder(source, stats)
    try:
        for texts, nbytes, valid_utf8 in table_texts(file, fmt, text_field, lo, hi):
            stats.bytes += nbytes
            nulls += texts.count(None)
            yield from _counted(builder.texts(texts, valid_utf8), stats)
    except TableError as exc:
        kept = "kept the rows before it" if stats.documents > documents_before else "skipped"
        warn(f"{source}: {exc}; {kept}")
        stats.skip(exc.reason)
        failed = True
    except OSError as exc:
        warn(f"{source}: cannot be read ({exc.strerror or exc}); skipped")
        stats.skip("unreadable")
        failed = True
    if nulls:
        warn(f"{source}: {nulls} rows whose {text_field!r} is null skipped")
        stats.skip("null_text", nulls)
    _file_done(source, stats, warn, documents_before, replaced_before, failed, whole_file)


def _counted(documents: Iterator[Document], stats: CorpusStats) -> Iterator[Document]:
    for doc in documents:
        stats.documents += 1
        stats.lines += len(doc.lines)
        yield doc


def _file_done(source: str, stats: CorpusStats, warn, documents_before: int, replaced_before: int, failed: bool,
               whole_file: bool) -> None:  # fmt: skip
    """After a file (or a part of one): warn about replaced characters; count the file, or warn that it held no
    text (a part that is not a whole file does neither: the driver counts such files once)."""
    if stats.replaced_chars > replaced_before:
        warn(f"{source}: {stats.replaced_chars - replaced_before} undecodable bytes replaced by U+FFFD "
             "or NUL characters removed")
    if not whole_file:
        return
    if stats.documents > documents_before:
        stats.files += 1
    elif not failed:
        warn(f"{source}: no text found; skipped")
        stats.skip("no_text")


def _relative(path: Path, root: Path) -> str:
    if path == root:
        return path.name
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()
