"""The text formats of a corpus: a decoded byte stream → `Document`s (corpus.py picks the format and counts).

- plain text: one sentence or paragraph per line, a blank line between documents;
- WikiExtractor text output (``<doc …>`` … ``</doc>``; its header line repeating the title is dropped);
- JSON Lines with a string ``text`` field (or `--text-field`; WikiExtractor ``--json`` and any other);
- raw MediaWiki XML dumps (articles only, wikixml.py).

`DocumentBuilder` is the one place where text becomes a document's lines: each line stripped, blank lines dropped,
lines over `MAX_LINE_CHARS` cut at the last space, documents over `MAX_DOC_CHARS` emitted in parts. A JSON Lines
record's text and a table row's text (tables.py) go through `DocumentBuilder.text`, so the same text gives the
same lines in either container.
"""

from __future__ import annotations

import contextlib
import html
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from spanbert_data.streams import ATTRIBUTE, MAX_LINE_CHARS, WIKIEXTRACTOR_DOC, clean_text, json_lines, text_lines
from spanbert_data.wikixml import iter_pages, wikitext_to_lines

MAX_DOC_CHARS = 1 << 23  # a longer document is emitted in parts (a 20 GB file with no blank line)


@dataclass
class Document:
    """One document: its non-empty, whitespace-stripped text lines (sentences or paragraphs), in order."""

    lines: list[str]
    source: str  # file path relative to the corpus root, posix style (the file name if the root is a file)
    index: int  # 0-based index of the document within its file
    id: str | None = None
    title: str | None = None


class DocumentBuilder:
    """Collects the lines of the current document and cuts it into parts of at most MAX_DOC_CHARS."""

    def __init__(self, source: str, stats):  # stats: a corpus.CorpusStats (skip counts, replaced characters)
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

    def text(self, text: str, id: str | None = None, title: str | None = None) -> Iterator[Document]:
        """One document from a whole text (a JSON Lines record's, a table row's): its lines as `str.splitlines`
        cuts them, each stripped, blank ones dropped; an empty text is counted ``empty_document``."""
        yield from self.start(id, title)
        if len(text) < MAX_LINE_CHARS and not self.lines:  # no line to cut, no part to emit: what `add` does, at once
            self.lines = [line for line in map(str.strip, text.splitlines()) if line]
            self.chars = sum(map(len, self.lines))
        else:
            for part in text.splitlines():
                yield from self.add(part)
        yield from self.finish(count_empty=True)

    def texts(self, texts: Iterable[str | None], valid_utf8: bool = False) -> Iterator[Document]:
        """`text` of each text in turn (cleaned like a text file's: NULs removed, undecodable bytes replaced, unless
        `valid_utf8` says there are none); None (a null in a table) is passed over: the caller counts it."""
        for text in texts:
            if text is not None:
                yield from self.text(clean_text(text, self.stats, surrogates=not valid_utf8))

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
    builder = DocumentBuilder(source, stats)
    for line in text_lines(stream, stats):
        if line.strip():
            yield from builder.add(line)
        else:
            yield from builder.finish()
    yield from builder.finish()


def _read_wikiextractor(stream, source, stats, warn) -> Iterator[Document]:
    """WikiExtractor text output: ``<doc id=… url=… title=…>``, the title again, the text, ``</doc>``.
    WikiExtractor escapes & < > in the text; they are unescaped here."""
    builder = DocumentBuilder(source, stats)
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


def _read_jsonl(stream, source, stats, warn, text_field: str = "text") -> Iterator[Document]:
    """JSON Lines: one object per line with a string ``text`` (`text_field`); ``id`` and ``title`` kept if present.
    Records shaped like WikiExtractor ``--json`` output (a ``url`` with ``curid=``) get its
    HTML escaping of & < > undone."""
    builder = DocumentBuilder(source, stats)
    bad, first_bad = 0, 0
    for number, line in enumerate(json_lines(stream, stats), start=1):
        if line is not None and not line.strip():
            continue
        record = None
        if line is not None:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            bad += 1
            first_bad = first_bad or number
            continue
        text = clean_text(record[text_field], stats)  # JSON escapes can carry NULs and lone surrogates too
        if "curid=" in str(record.get("url", "")):
            text = html.unescape(text)
        ident, title = record.get("id"), record.get("title")
        yield from builder.text(text, None if ident is None else str(ident), None if title is None else str(title))
    if bad:
        warn(f"{source}: {bad} bad JSON lines skipped (not an object with a string {text_field!r}; first: line "
             f"{first_bad})")
        stats.skip("bad_json_line", bad)


def _read_mediawiki(stream, source, stats, warn) -> Iterator[Document]:
    builder = DocumentBuilder(source, stats)
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


# format (streams.detect_format) -> reader(stream, source, stats, warn); JSON Lines also takes text_field=
READERS = {"text": _read_plain, "wikiextractor": _read_wikiextractor, "jsonl": _read_jsonl,
           "mediawiki": _read_mediawiki}  # fmt: skip
