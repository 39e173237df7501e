"""Corpus readers: the files under `--corpus` -> a deterministic stream of `Document`s (SPEC §1 "corpus layout").

Every file is detected by content, never by name: compression by magic bytes (gzip, bzip2, xz, zstd),
then the format by sniffing the first non-blank decompressed bytes:

- ``<mediawiki`` (after an optional ``<?xml …?>``): a raw MediaWiki XML dump, articles only (`wikixml.py`);
- ``<doc …>``: WikiExtractor text output (its header line repeating the title is dropped);
- ``{`` and a first line that is a JSON object: JSON Lines with a ``text`` field (WikiExtractor ``--json``
  and any other), ``id``/``title`` kept for provenance;
- anything else: plain text, one sentence or paragraph per line, a blank line between documents.

Everything streams: memory is bounded by `MAX_LINE_CHARS` and `MAX_DOC_CHARS`, never by the file size.
Longer lines are split at the last whitespace (the block builder splits over-long lines at word starts
anyway, SPEC §1) and longer documents are emitted in consecutive parts.

Bad input never raises from `read_documents`: it is warned about (one line naming the file) and counted in
`CorpusStats.skipped` (reason -> count). Reasons counting FILES: ``binary``, ``empty``, ``unreadable``
(open/read fails, a dangling symlink, a FIFO/socket/device), ``symlink_loop``, ``hidden`` (names starting
with "." are not read), ``truncated`` (compressed stream cut short: what decoded cleanly is kept),
``corrupt`` (bad compressed data or malformed XML: idem), ``unsupported_xml``, ``no_text`` (read fine, no
document). Reasons counting ITEMS inside files: ``redirect``, ``non_article`` (MediaWiki pages),
``bad_json_line``, ``empty_document``, ``text_outside_doc`` (lines outside WikiExtractor ``<doc>``).
"""

from __future__ import annotations

import contextlib
import errno
import html
import io
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from xml.etree.ElementTree import ParseError

from spanbert_data.errors import CorpusError
from spanbert_data.progress import stderr
from spanbert_data.streams import (
    ATTRIBUTE,
    CHUNK,
    DECOMPRESSION_ERRORS,
    MAX_LINE_CHARS,
    WIKIEXTRACTOR_DOC,
    CountingReader,
    clean_text,
    detect_format,
    json_lines,
    open_decompressed,
    sniff,
    text_lines,
)
from spanbert_data.wikixml import iter_pages, wikitext_to_lines

MAX_DOC_CHARS = 1 << 23  # a longer document is emitted in parts (a 20 GB file with no blank line)

FILE_REASONS = ("binary", "empty", "unreadable", "symlink_loop", "hidden", "truncated", "corrupt",
                "unsupported_xml", "no_text")


def print_to_stderr(message: str) -> None:
    """The default warning sink: one line on stderr."""
    stderr(f"warning: {message}")


@dataclass
class Document:
    """One document: its non-empty, whitespace-stripped text lines (sentences or paragraphs), in order."""

    lines: list[str]
    source: str  # file path relative to the corpus root, posix style (the file name if the root is a file)
    index: int  # 0-based index of the document within its file
    id: str | None = None
    title: str | None = None


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


# --- listing ---------------------------------------------------------------------------------------

def list_corpus_files(root: str | Path, stats: CorpusStats | None = None,
                      warn: Callable[[str], None] = print_to_stderr) -> list[Path]:
    """All regular files under `root` (or `[root]` if it is a file), sorted by relative posix path.

    Symlinks to files and directories are followed; a symlink that leads back to one of its own
    ancestor directories (or to itself) is a loop: skipped, warned, counted as ``symlink_loop``.
    Entries whose name starts with "." (``.git``, ``.DS_Store``) are not read (counted ``hidden``).
    Dangling symlinks, FIFOs, sockets and devices are counted ``unreadable``. Raises `CorpusError`
    when `root` does not exist or holds no file to read.
    """
    stats = stats if stats is not None else CorpusStats()
    root = Path(root)
    try:
        root_stat = root.stat()
    except OSError as exc:
        why = "symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise CorpusError(f"corpus path {root} cannot be read: {why}") from None
    if stat.S_ISREG(root_stat.st_mode):
        return [root]
    if not stat.S_ISDIR(root_stat.st_mode):
        raise CorpusError(f"corpus path {root} is neither a regular file nor a directory")

    found: list[tuple[str, Path]] = []
    pending = [(root, "", frozenset({(root_stat.st_dev, root_stat.st_ino)}))]
    while pending:  # depth-first; the order does not matter, the result is sorted below
        directory, rel_dir, ancestors = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            warn(f"{rel_dir or directory}: directory cannot be listed ({exc.strerror}); skipped")
            stats.skip("unreadable")
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.name.startswith("."):
                stats.skip("hidden")
                continue
            try:
                st = os.stat(entry.path)  # follows symlinks
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    warn(f"{rel}: symlink loop; skipped")
                    stats.skip("symlink_loop")
                else:
                    warn(f"{rel}: cannot be read ({'dangling symlink' if entry.is_symlink() else exc.strerror})"
                         "; skipped")
                    stats.skip("unreadable")
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    warn(f"{rel}: symlink loop (leads back to a parent directory); skipped")
                    stats.skip("symlink_loop")
                else:
                    pending.append((Path(entry.path), rel, ancestors | {key}))
            elif stat.S_ISREG(st.st_mode):
                found.append((rel, Path(entry.path)))
            else:
                warn(f"{rel}: not a regular file (FIFO, socket or device); skipped")
                stats.skip("unreadable")
    if not found:
        raise CorpusError(f"no readable files under {root}: {describe_skipped(stats)}")
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def read_corpus(root: str | Path, stats: CorpusStats | None = None,
                warn: Callable[[str], None] = print_to_stderr) -> Iterator[Document]:
    """Every document under `root`, files in `list_corpus_files` order; `CorpusError` if there is none."""
    stats = stats if stats is not None else CorpusStats()
    root = Path(root)
    for path in list_corpus_files(root, stats, warn):
        yield from read_documents(path, root, stats, warn)
    require_documents(root, stats)


# --- one file ---------------------------------------------------------------------------------------

def read_documents(path: Path, root: Path, stats: CorpusStats,
                   warn: Callable[[str], None] = print_to_stderr) -> Iterator[Document]:
    """Stream the documents of one file (any compression, any supported format).

    Never raises for bad content: problems are warned about and counted in `stats` (see the module
    docstring); documents read before a truncation or corruption are kept.
    """
    path, root = Path(path), Path(root)
    source = _relative(path, root)
    try:
        head, head_error = sniff(path)
    except OSError as exc:
        warn(f"{source}: cannot be read ({exc.strerror or exc}); skipped")
        stats.skip("unreadable")
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

    yield from read_formatted(lambda stack: open_decompressed(path, stack), source, fmt, stats, warn)


def read_formatted(open_stream: Callable[[contextlib.ExitStack], BinaryIO], source: str, fmt: str,
                   stats: CorpusStats, warn: Callable[[str], None] = print_to_stderr,
                   whole_file: bool = True) -> Iterator[Document]:  # fmt: skip
    """The documents of a byte stream in a known text format (a whole file, or the part of one a unit owns).

    `open_stream(stack)` opens the stream; errors are counted as in `read_documents`. A part that is not
    the file's first (`whole_file=False`) neither counts the file nor warns when it holds no document.
    """
    reader = {"mediawiki": _read_mediawiki, "wikiextractor": _read_wikiextractor,
              "jsonl": _read_jsonl, "text": _read_plain}[fmt]
    documents_before, replaced_before, failed = stats.documents, stats.replaced_chars, False
    counter = None
    with contextlib.ExitStack() as stack:
        try:
            counter = CountingReader(open_stream(stack))
            stream = io.BufferedReader(counter, CHUNK)
            for doc in reader(stream, source, stats, warn):
                stats.documents += 1
                stats.lines += len(doc.lines)
                yield doc
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


class _DocumentBuilder:
    """Collects the lines of the current document and cuts it into parts of at most MAX_DOC_CHARS."""

    def __init__(self, source: str, stats: CorpusStats):
        self.source, self.stats = source, stats
        self.index = 0
        self.lines: list[str] = []
        self.chars = 0
        self.id: str | None = None
        self.title: str | None = None

    def start(self, id: str | None = None, title: str | None = None) -> Iterator[Document]:
        yield from self.finish()
        self.id, self.title = id, title

    def add(self, line: str) -> Iterator[Document]:
        line = line.strip()
        while len(line) > MAX_LINE_CHARS:  # e.g. a JSON text without newlines: cut at the last space
            cut = line.rfind(" ", 0, MAX_LINE_CHARS)
            cut = cut if cut > 0 else MAX_LINE_CHARS
            yield from self.add(line[:cut])
            line = line[cut:].strip()
        if line:
            self.lines.append(line)
            self.chars += len(line)
            if self.chars >= MAX_DOC_CHARS:
                yield from self._emit()

    def finish(self, count_empty: bool = False) -> Iterator[Document]:
        if self.lines:
            yield from self._emit()
        elif count_empty:
            self.stats.skip("empty_document")
        self.id = self.title = None

    def _emit(self) -> Iterator[Document]:
        doc = Document(self.lines, self.source, self.index, self.id, self.title)
        self.index += 1
        self.lines, self.chars = [], 0
        yield doc


# --- the four formats -----------------------------------------------------------------------------

def _read_plain(stream, source, stats, warn) -> Iterator[Document]:
    builder = _DocumentBuilder(source, stats)
    for line in text_lines(stream, stats):
        if line.strip():
            yield from builder.add(line)
        else:
            yield from builder.finish()
    yield from builder.finish()


def _read_wikiextractor(stream, source, stats, warn) -> Iterator[Document]:
    """WikiExtractor text output: ``<doc id=… url=… title=…>``, the title again, the text, ``</doc>``.
    WikiExtractor escapes & < > in the text; they are unescaped here."""
    builder = _DocumentBuilder(source, stats)
    inside, expect_title, outside = False, False, 0
    for line in text_lines(stream, stats):
        stripped = line.strip()
        if not stripped:
            continue
        match = WIKIEXTRACTOR_DOC.match(stripped)
        if match:
            attrs = {k: html.unescape(v) for k, v in ATTRIBUTE.findall(match.group(1) or "")}
            yield from builder.finish(count_empty=inside)  # a <doc> left open ends here
            yield from builder.start(attrs.get("id"), attrs.get("title"))
            inside, expect_title = True, True
        elif stripped == "</doc>":
            yield from builder.finish(count_empty=inside)
            inside = False
        elif not inside:
            outside += 1
        else:
            text = html.unescape(stripped)
            if not (expect_title and text == builder.title):  # the header line repeating the title
                yield from builder.add(text)
            expect_title = False
    yield from builder.finish(count_empty=inside)
    if outside:
        warn(f"{source}: {outside} lines outside <doc> … </doc> ignored")
        stats.skip("text_outside_doc", outside)


def _read_jsonl(stream, source, stats, warn) -> Iterator[Document]:
    """JSON Lines: one object per line with a string ``text``; ``id`` and ``title`` kept if present.
    Records shaped like WikiExtractor ``--json`` output (a ``url`` with ``curid=``) get its
    HTML escaping of & < > undone."""
    builder = _DocumentBuilder(source, stats)
    bad, first_bad = 0, 0
    for number, line in enumerate(json_lines(stream, stats), start=1):
        if line is not None and not line.strip():
            continue
        record = None
        if line is not None:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            bad += 1
            first_bad = first_bad or number
            continue
        text = clean_text(record["text"], stats)  # JSON escapes can carry NULs and lone surrogates too
        if "curid=" in str(record.get("url", "")):
            text = html.unescape(text)
        ident, title = record.get("id"), record.get("title")
        yield from builder.start(None if ident is None else str(ident), None if title is None else str(title))
        for part in text.splitlines():
            yield from builder.add(part)
        yield from builder.finish(count_empty=True)
    if bad:
        warn(f"{source}: {bad} bad JSON lines skipped (not an object with a string 'text'; first: line {first_bad})")
        stats.skip("bad_json_line", bad)


def _read_mediawiki(stream, source, stats, warn) -> Iterator[Document]:
    builder = _DocumentBuilder(source, stats)
    for page in iter_pages(stream):
        if page.ns != 0:
            stats.skip("non_article")
        elif page.redirect:
            stats.skip("redirect")
        else:
            yield from builder.start(page.id, page.title)
            for line in wikitext_to_lines(clean_text(page.text, stats)):
                yield from builder.add(line)
            yield from builder.finish(count_empty=True)
