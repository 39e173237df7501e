"""Corpus readers (spanbert_data.corpus / streams / wikixml) on real inputs and on nasty ones.

"Unreadable" here covers what a root user can still meet: a dangling symlink, a FIFO (not a regular
file) and a path that cannot be opened as a file (a directory passed to read_documents); chmod 000
does not stop root, so it is not used.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from pathlib import Path

import pytest
import zstandard

from spanbert_data.corpus import CorpusStats, Document, list_corpus_files, read_corpus, read_documents
from spanbert_data.errors import CorpusError
from spanbert_data.wikixml import wikitext_to_lines

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FIXTURE = ASSETS / "enwiki-excerpt-7pages.xml.bz2"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wiki" / "enwiki-sample.jsonl"
COMPRESSORS = {
    "gzip": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}
PLAIN = "First doc, line one.\nFirst doc, line two.\n\n\n  Second doc.  \n"


def read(path: Path, root: Path | None = None) -> tuple[list[Document], CorpusStats, list[str]]:
    stats, warnings = CorpusStats(), []
    docs = list(read_documents(path, root or path.parent, stats, warn=warnings.append))
    return docs, stats, warnings


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# --- real inputs ------------------------------------------------------------------------------------

def test_mediawiki_fixture_articles_only():
    docs, stats, warnings = read(FIXTURE)
    assert [d.title for d in docs] == ["Affirming the consequent", "Asia Minor (disambiguation)",
                                       "Transport in Angola", "Algorithms (journal)", "Abstract (law)"]
    assert [d.index for d in docs] == [0, 1, 2, 3, 4]
    assert docs[0].id == "675" and docs[0].source == FIXTURE.name
    assert stats.skipped == {"redirect": 1, "non_article": 1}
    assert stats.files == 1 and stats.documents == 5 and stats.lines == sum(len(d.lines) for d in docs)
    assert not warnings
    assert docs[0].lines[0].startswith("Affirming the consequent, sometimes called converse error")
    for doc in docs:  # clean prose: no markup left
        for line in doc.lines:
            assert line == line.strip() and line
            for junk in ("{{", "}}", "[[", "]]", "<ref", "|", "thumb", "Category:", "==", "''"):
                assert junk not in line, (doc.title, line)


def test_wikitext_rendering():
    text = """{{Infobox thing|name=X}}
'''Foo''' is a [[bar|Bar]] of [[baz]]s<ref name="a">{{cite web|url=http://x}}</ref> born {{birth date|1934|4|11}}.
[[File:X.jpg|thumb|A caption [[link]]]] It is {{convert|10|km|mi}} long, see [http://example.com the site] &amp; more.
{| class="wikitable"
|-
| cell || cell
|}
* a list item
== See also ==
A sentence in a junk section.
== History ==
History prose.<!-- hidden --> <math>x^2</math>
[[Category:Things]]
[[de:Foo]]"""
    assert wikitext_to_lines(text) == [
        "Foo is a Bar of bazs born April 11, 1934.",
        "It is 10 km long, see the site & more.",
        "History prose.",
    ]


def test_example_corpus_reads():
    docs, stats, warnings = read(EXAMPLE)
    assert len(docs) >= 100 and not warnings and stats.skipped == {}
    assert EXAMPLE.stat().st_size < 3_000_000
    assert docs[0].title == "Anarchism" and docs[0].id == "12"
    assert stats.lines > 4000


# --- compression and format detection ------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_compression_by_magic_bytes_with_misleading_name(tmp_path, kind):
    # Named .txt (or like another compressor): the content decides.
    path = write(tmp_path / f"corpus.{'gz' if kind != 'gzip' else 'bz2'}", COMPRESSORS[kind](PLAIN.encode()))
    docs, stats, warnings = read(path)
    assert [d.lines for d in docs] == [["First doc, line one.", "First doc, line two."], ["Second doc."]]
    assert stats.bytes == len(PLAIN.encode()) and not warnings


def test_plain_named_gz_is_plain(tmp_path):
    docs, _, _ = read(write(tmp_path / "a.txt.gz", PLAIN))
    assert len(docs) == 2


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_truncated_compressed_keeps_clean_part(tmp_path, kind):
    lines = [f"Sentence number {i} of a rather long document about nothing." for i in range(40000)]
    text = "\n".join(lines[:20000]) + "\n\n" + "\n".join(lines[20000:]) + "\n"
    blob = COMPRESSORS[kind](text.encode())
    path = write(tmp_path / "cut.dat", blob[: len(blob) * 3 // 4])
    docs, stats, warnings = read(path)
    assert stats.skipped == {"truncated": 1}
    assert len(warnings) == 1 and "cut.dat" in warnings[0] and "truncated" in warnings[0]
    got = [line for d in docs for line in d.lines]
    assert 0 < len(got) < 40000 and got == lines[: len(got)]  # a clean prefix, whole lines only


def test_truncated_to_nothing(tmp_path):
    docs, stats, warnings = read(write(tmp_path / "x", gzip.compress(PLAIN.encode())[:5]))
    assert docs == [] and stats.skipped == {"truncated": 1} and "x" in warnings[0]


def test_concatenated_members_and_frames(tmp_path):
    for kind in ("gzip", "bz2", "xz", "zst"):
        blob = COMPRESSORS[kind](b"one.\n\n") + COMPRESSORS[kind](b"two.\n")
        docs, stats, _ = read(write(tmp_path / kind, blob))
        assert [d.lines for d in docs] == [["one."], ["two."]], kind


# --- bad bytes ----------------------------------------------------------------------------------------

def test_binary_file_skipped(tmp_path):
    path = write(tmp_path / "image.txt", bytes(range(256)) * 64)
    docs, stats, warnings = read(path)
    assert docs == [] and stats.skipped == {"binary": 1} and "image.txt" in warnings[0]
    path = write(tmp_path / "zipped.gz", gzip.compress(os.urandom(4096)))
    assert read(path)[1].skipped == {"binary": 1}


def test_invalid_utf8_and_nul_are_counted(tmp_path):
    prose = "A perfectly ordinary sentence of a text file, with nothing wrong in it.\n" * 3
    data = ("Caf\u00e9 ok.\n" + prose).encode() + b"bad \xff\xfe byte.\nnul\x00 here\x00.\n"
    docs, stats, warnings = read(write(tmp_path / "bad.txt", data))
    assert docs[0].lines[0] == "Caf\u00e9 ok." and docs[0].lines[-2:] == ["bad \ufffd\ufffd byte.", "nul here."]
    assert stats.replaced_chars == 4
    assert len(warnings) == 1 and "bad.txt" in warnings[0]


def test_twenty_megabyte_single_line(tmp_path):
    words = ("lorem ipsum dolor sit amet " * 800_000).encode()  # 21.6 MB, no newline
    expected = words.decode().split()
    docs, stats, _ = read(write(tmp_path / "long.txt", words))
    # Streamed in ~1 MiB line pieces cut at spaces; a document over MAX_DOC_CHARS comes in parts.
    assert [d.index for d in docs] == [0, 1, 2] and all(len(d.lines) >= 2 for d in docs)
    assert max(len(line) for d in docs for line in d.lines) <= 2 << 20
    assert " ".join(line for d in docs for line in d.lines).split() == expected
    record = json.dumps({"id": 1, "text": words.decode()}).encode() + b"\n"
    docs, stats, _ = read(write(tmp_path / "long.jsonl", record))
    assert {d.id for d in docs} == {"1"} and max(len(line) for d in docs for line in d.lines) <= 1 << 20
    assert " ".join(line for d in docs for line in d.lines).split() == expected


# --- files and directories ------------------------------------------------------------------------------

def test_empty_dir_and_missing_root(tmp_path):
    with pytest.raises(CorpusError, match="no readable files"):
        list_corpus_files(tmp_path)
    with pytest.raises(CorpusError, match="No such file"):
        list_corpus_files(tmp_path / "missing")


def test_nothing_readable_raises_one_line(tmp_path):
    write(tmp_path / "a.bin", bytes(range(256)) * 16)
    write(tmp_path / "b.bin", os.urandom(2048) + bytes(64))
    write(tmp_path / "c.txt", "")
    write(tmp_path / "d.txt", "  \n\n \t\n")
    with pytest.raises(CorpusError) as info:
        list(read_corpus(tmp_path, warn=lambda _m: None))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "4 files skipped (binary: 2, empty: 2)" in message


def test_listing_loops_dangling_fifo_hidden(tmp_path):
    write(tmp_path / "b" / "two.txt", "two")
    write(tmp_path / "a.txt", "one")
    write(tmp_path / ".hidden.txt", "secret")
    os.symlink(tmp_path, tmp_path / "b" / "loop")  # back to an ancestor
    os.symlink(tmp_path / "self", tmp_path / "self")  # ELOOP
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "b", tmp_path / "c")  # a directory reached twice is not a loop
    stats, warnings = CorpusStats(), []
    files = list_corpus_files(tmp_path, stats, warn=warnings.append)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.txt", "b/two.txt", "c/two.txt"]
    assert stats.skipped == {"symlink_loop": 3, "unreadable": 2, "hidden": 1}
    assert any("dangling" in w for w in warnings) and any(w.startswith("pipe:") for w in warnings)


def test_unreadable_path_and_empty_file(tmp_path):
    (tmp_path / "dir.txt").mkdir()
    docs, stats, warnings = read(tmp_path / "dir.txt")
    assert docs == [] and stats.skipped == {"unreadable": 1} and "dir.txt" in warnings[0]
    docs, stats, warnings = read(write(tmp_path / "empty.txt", b""))
    assert docs == [] and stats.skipped == {"empty": 1}
    docs, stats, _ = read(write(tmp_path / "empty.gz", gzip.compress(b"")))
    assert docs == [] and stats.skipped == {"empty": 1}


def test_sorted_deterministic_order(tmp_path):
    names = ["b/z.txt", "a-c.txt", "a/b.txt", "B.txt", "a/a/x.txt", "10.txt", "9.txt"]
    for i, name in enumerate(reversed(names)):
        write(tmp_path / name, f"doc {i}\n")
    first = [(d.source, d.lines) for d in read_corpus(tmp_path)]
    assert [s for s, _ in first] == sorted(names)  # code-point order of the relative posix path
    assert [(d.source, d.lines) for d in read_corpus(tmp_path)] == first


# --- formats ------------------------------------------------------------------------------------------

def test_plain_text_document_splitting(tmp_path):
    text = "\ufeffa1\r\na2\r\n\r\n\r\nb1\n \t \nc1\rc2\n"
    docs, _, _ = read(write(tmp_path / "p.txt", text))
    assert [(d.index, d.lines) for d in docs] == [(0, ["a1", "a2"]), (1, ["b1"]), (2, ["c1", "c2"])]
    assert all(d.id is None and d.source == "p.txt" for d in docs)


def test_wikiextractor_text(tmp_path):
    text = (
        '<doc id="12" url="https://en.wikipedia.org/wiki?curid=12" title="AT&amp;T">\nAT&T\n\n'
        "AT&amp;T is a company.\nIt sells &lt;things&gt;.\n\n</doc>\n"
        '<doc id="13" url="https://en.wikipedia.org/wiki?curid=13" title="Empty">\nEmpty\n\n\n</doc>\n'
        '<doc id="14" url="https://en.wikipedia.org/wiki?curid=14" title="Anarchism">\nAnarchism\n\n'
        "Anarchism is a philosophy.\n</doc>\nstray line\n"
    )
    docs, stats, warnings = read(write(tmp_path / "wiki_00", text))
    assert [(d.id, d.title, d.lines) for d in docs] == [
        ("12", "AT&T", ["AT&T is a company.", "It sells <things>."]),
        ("14", "Anarchism", ["Anarchism is a philosophy."]),
    ]
    assert stats.skipped == {"empty_document": 1, "text_outside_doc": 1} and len(warnings) == 1


def test_wikiextractor_json_and_bad_lines(tmp_path):
    rows = [
        json.dumps({"id": "12", "revid": "1", "url": "https://en.wikipedia.org/wiki?curid=12", "title": "AT&T",
                    "text": "AT&amp;T is a company.\nIt sells phones."}),
        "{not json",
        json.dumps({"id": 7, "body": "no text field"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"text": "Plain &amp; verbatim.\n\nSecond para.", "extra": {"ignored": True}}),
        json.dumps({"id": "9", "text": "  \n "}),
    ]
    docs, stats, warnings = read(write(tmp_path / "part.jsonl.txt", "\n".join(rows) + "\n"))
    assert [(d.index, d.id, d.title, d.lines) for d in docs] == [
        (0, "12", "AT&T", ["AT&T is a company.", "It sells phones."]),
        (1, None, None, ["Plain &amp; verbatim.", "Second para."]),
    ]
    assert stats.skipped == {"bad_json_line": 3, "empty_document": 1}
    assert len(warnings) == 1 and "part.jsonl.txt" in warnings[0] and "line 2" in warnings[0]


def test_other_xml_is_not_read_as_text(tmp_path):
    docs, stats, _ = read(write(tmp_path / "x.xml", '<?xml version="1.0"?>\n<root><a>text</a></root>\n'))
    assert docs == [] and stats.skipped == {"unsupported_xml": 1}


def test_malformed_mediawiki_keeps_pages_before_the_error(tmp_path):
    xml = bz2.decompress(FIXTURE.read_bytes())
    cut = xml[: xml.index(b"<title>Algorithms (journal)")] + b"<broken></mediawiki>"
    docs, stats, warnings = read(write(tmp_path / "dump.xml", cut))
    assert [d.title for d in docs] == ["Affirming the consequent", "Asia Minor (disambiguation)",
                                       "Transport in Angola"]
    assert stats.skipped["corrupt"] == 1 and "dump.xml" in warnings[0]


def test_stats_merge_and_dict_round_trip():
    a = CorpusStats(files=1, documents=2, lines=3, bytes=4, replaced_chars=5, skipped={"binary": 1})
    b = CorpusStats.from_dict({**a.to_dict(), "units": 9})
    a.merge(b)
    assert a.to_dict() == {"files": 2, "documents": 4, "lines": 6, "bytes": 8,
                           "skipped": {"binary": 2}, "replaced_chars": 10}
