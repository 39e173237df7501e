"""Input units (units.py, unit_reader.py): a file cut into units reads as the same documents as the whole file.

For every format and every way of cutting (byte ranges, bzip2 streams, one reader over an unsplittable
compressed file), the documents of all units together equal the documents of the file read whole, for
unit sizes from smaller than one document to larger than the file.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import re
from pathlib import Path

import pytest

from spanbert_data.corpus import CorpusStats, read_documents
from spanbert_data.unit_reader import find_boundary, iter_stream_units, unit_documents
from spanbert_data.units import plan_sources

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wiki" / "enwiki-sample.jsonl"
UNIT_SIZES = [700, 4096, 30_000, 10**7]


def _whole(path: Path) -> list[list[str]]:
    stats = CorpusStats()
    return [d.lines for d in read_documents(path, path.parent, stats, warn=lambda m: None)]


def _by_units(path: Path, unit_bytes: int, work: Path) -> tuple[list[list[str]], list[str], CorpusStats]:
    stats = CorpusStats()
    docs, kinds = [], []
    for source in plan_sources([path], path, unit_bytes):
        kinds.append(source.kind)
        if source.kind == "stream":
            pairs = list(iter_stream_units(source, path.parent, unit_bytes))
            for unit, piece in pairs:
                (work / unit.work_file).parent.mkdir(parents=True, exist_ok=True)
                (work / unit.work_file).write_bytes(piece.data)
            units = [u for u, _ in pairs]
        else:
            units = source.units()
        for unit in units:
            docs += [d.lines for d in unit_documents(path.parent, unit, stats, lambda m: None, work)]
    return docs, kinds, stats


def _plain_text(rng: random.Random, n_docs: int = 400) -> bytes:
    words = "the of and to in a is that for it as was with be by on not he I this".split()
    out = []
    for _ in range(n_docs):
        for _ in range(rng.randint(1, 6)):
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 25))) + rng.choice(["", " ", "\r"]))
        out.append(rng.choice(["", "", "  ", "\t", "\r"]))  # blank lines, some with blanks or CR in them
    return "\n".join(out).encode()


def _wikiextractor(rng: random.Random, n_docs: int = 200) -> bytes:
    docs = []
    for i in range(n_docs):
        body = "\n".join(f"Sentence {j} of doc {i} &amp; {'x' * rng.randint(0, 120)}" for j in range(rng.randint(1, 9)))
        head = f'<doc id="{i}" url="https://en.wikipedia.org/wiki?curid={i}" title="T{i}">'
        docs.append(f"{head}\nT{i}\n{body}\n</doc>\n")
    return "".join(docs).encode()


def _mediawiki() -> bytes:
    return bz2.decompress((ASSETS / "enwiki-excerpt-7pages.xml.bz2").read_bytes())


FORMATS = {
    "text": lambda: _plain_text(random.Random(1)),
    "jsonl": lambda: EXAMPLE.read_bytes()[:400_000].rsplit(b"\n", 1)[0] + b"\n",
    "wikiextractor": lambda: _wikiextractor(random.Random(2)),
    "mediawiki": _mediawiki,
}


def _bz2_multistream(data: bytes, fmt: str) -> bytes:
    """Streams cut at page starts (Wikipedia's layout) for XML, at arbitrary bytes (pbzip2's) otherwise."""
    if fmt == "mediawiki":
        pieces = re.split(rb"(?=\n  <page>)", data)
    else:
        pieces = [data[i : i + 9_001] for i in range(0, len(data), 9_001)]
    return b"".join(bz2.compress(p) for p in pieces)


CODECS = {
    "none": (lambda data, fmt: data, "range"),
    "bz2-multistream": (_bz2_multistream, "streams"),
    "gzip": (lambda data, fmt: gzip.compress(data, mtime=0), "stream"),
    "xz": (lambda data, fmt: lzma.compress(data), "stream"),
    "bz2-single": (lambda data, fmt: bz2.compress(data), "stream"),
}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_units_read_the_same_documents_as_the_whole_file(fmt, codec, tmp_path):
    encode, split_kind = CODECS[codec]
    path = tmp_path / f"corpus.{fmt}"
    path.write_bytes(encode(FORMATS[fmt](), fmt))
    whole = _whole(path)
    assert len(whole) >= 5
    kinds_seen = set()
    for unit_bytes in UNIT_SIZES:
        docs, kinds, stats = _by_units(path, unit_bytes, tmp_path / f"work-{unit_bytes}")
        kinds_seen.update(kinds)
        assert docs == whole, (fmt, codec, unit_bytes)
        assert not {"corrupt", "truncated", "no_text"} & set(stats.skipped), stats.skipped
    assert split_kind in kinds_seen and "files" in kinds_seen  # small units cut the file; huge ones do not


def test_plain_text_without_blank_lines_is_cut_at_line_starts(tmp_path, monkeypatch):
    """No document boundary for BOUNDARY_WINDOW bytes: cut at a line start (every line kept, in order)."""
    import spanbert_data.unit_reader as unit_reader

    monkeypatch.setattr(unit_reader, "BOUNDARY_WINDOW", 20_000)
    lines = [f"line {i} {'y' * (i % 97)}" for i in range(3000)]
    path = tmp_path / "one-doc.txt"
    path.write_text("\n".join(lines))
    docs, kinds, _ = _by_units(path, 5_000, tmp_path)
    assert kinds == ["range"] and len(docs) > 1
    assert [line for doc in docs for line in doc] == [line.strip() for line in lines]


def test_cuts_depend_only_on_the_bytes_and_the_unit_size(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(_plain_text(random.Random(3)))
    plans = [[s.to_json() for s in plan_sources([path], path, 4096)] for _ in range(2)]
    assert plans[0] == plans[1]
    assert plans[0] != [s.to_json() for s in plan_sources([path], path, 5000)]


def test_small_files_are_grouped_and_compressed_ones_weigh_more(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"{i}.txt").write_bytes(b"word " * 200)  # 1,000 bytes each
    rng = random.Random(4)
    text = " ".join(f"w{rng.randrange(10**6)}" for _ in range(400)).encode()  # ~3.6 KB, ~1.6 KB gzipped
    (corpus / "y.txt.gz").write_bytes(gzip.compress(text[:1000], mtime=0))  # ~500 B: counts as ~2 KB
    (corpus / "z.txt.gz").write_bytes(gzip.compress(text, mtime=0))  # counts as ~6.5 KB: cut by the reader
    sources = plan_sources(sorted(corpus.iterdir()), corpus, 2_500)
    assert [(s.kind, len(s.files)) for s in sources] == [("files", 2)] * 3 + [("files", 1), ("stream", 1)]


@pytest.mark.parametrize(
    "fmt, data, pos, expected",
    [
        ("text", b"a\n\nb\nc\n\n\nd", 2, 3),  # the line after a blank line
        ("text", b"a\n\nb\nc\n\n\nd", 4, 8),  # several blank lines: the first line start after one of them
        ("text", b"a\n \t\r\nb", 1, 6),  # blanks and CR make a line blank
        ("jsonl", b'{"a":1}\n{"b":2}\n', 3, 8),
        ("wikiextractor", b'<doc id="1">\nx\n</doc>\n<doc id="2">\n', 1, 22),
        ("mediawiki", b"<mediawiki>\n  <page>\n  </page>\n  <page>\n", 13, 31),
    ],
)
def test_find_boundary(fmt, data, pos, expected):
    assert find_boundary(data, pos, fmt, bof=True, eof=True) == expected


def test_a_lone_bz2_header_inside_data_is_not_taken_for_a_stream(tmp_path):
    """Single-stream bzip2 is read by one reader, even when large."""
    path = tmp_path / "big.jsonl.bz2"
    path.write_bytes(bz2.compress("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(20_000)).encode()))
    (source,) = plan_sources([path], path, 1000)
    assert source.kind == "stream"
