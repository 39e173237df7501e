"""Tables of documents (spanbert_data/tables.py, corpus.read_table): a Parquet or Arrow file, written by pyarrow,
reads as the JSON Lines file of the same texts; its units (row groups, record batches, planned from metadata alone)
read the documents of the whole file; a bad text column is one line naming the file; a corrupt or cut file is
counted and keeps what came before; the same files as objects (fsspec's memory://, through the Location seam and
remote.RangeReader) read alike. The builds from other writers (polars, duckdb, datasets) are
tests/data/test_corpus_formats.py."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spanbert_data.corpus import CorpusStats, read_documents
from spanbert_data.errors import CorpusError
from spanbert_data.listing import list_corpus
from spanbert_data.location import Location
from spanbert_data.tables import plan_table, table_format
from spanbert_data.unit_reader import unit_documents
from spanbert_data.units import plan_sources

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wiki" / "enwiki-sample.jsonl"
# Real articles, then what a row may hold that a reader must treat as JSON Lines does: an empty and a blank text,
# every line break str.splitlines knows, a NUL, and leading/trailing blanks on lines.
EDGE = ["", "  \n\t ", "one\r\ntwo\rthree\u2028four\x1cfive\x85six", "NUL\x00inside", "  padded  \n\n  lines  "]
TEXTS = [json.loads(line)["text"] for line in EXAMPLE.read_text().splitlines()[:12]] + EDGE
_names = itertools.count()


def write_jsonl(path: Path, texts: list) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": str(i)}) + "\n" for i, t in enumerate(texts)))
    return path


def write_parquet(path: Path, texts: list, rows_per_group: int = 3, **columns) -> Path:
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts, **columns}), path,
                   row_group_size=rows_per_group)  # fmt: skip
    return path


def write_arrow(path: Path, texts: list, rows_per_batch: int = 3, file_format: bool = False) -> Path:
    table = pa.table({"text": pa.array(texts, pa.large_string()), "id": list(range(len(texts)))})
    with pa.OSFile(str(path), "wb") as sink:
        writer = (pa.ipc.new_file if file_format else pa.ipc.new_stream)(sink, table.schema)
        writer.write_table(table, max_chunksize=rows_per_batch)
        writer.close()
    return path


WRITERS = {
    "parquet": write_parquet,
    "arrow-stream": write_arrow,
    "arrow-file": lambda path, texts: write_arrow(path, texts, file_format=True),
}


def read(path: Path, **kw) -> tuple[list[list[str]], CorpusStats, list[str]]:
    stats, warnings = CorpusStats(), []
    docs = [d.lines for d in read_documents(path, path.parent, stats, warnings.append, **kw)]
    return docs, stats, warnings


@pytest.mark.parametrize("writer", WRITERS)
def test_a_table_reads_as_the_json_lines_of_its_texts(writer, tmp_path):
    # the names mislead on purpose: formats are told by their bytes
    table = WRITERS[writer](tmp_path / "corpus.jsonl", TEXTS)
    jsonl = write_jsonl(tmp_path / "corpus.parquet", TEXTS)
    assert table_format(table.read_bytes()[:8]) == ("parquet" if writer == "parquet" else "arrow")
    assert table_format(jsonl.read_bytes()[:8]) is None
    docs, stats, _ = read(table)
    expected, expected_stats, _ = read(jsonl)
    assert docs == expected and len(docs) == len(TEXTS) - 2
    assert ["one", "two", "three", "four", "five", "six"] in docs and ["NULinside"] in docs
    for key in ("documents", "lines", "replaced_chars", "files"):
        assert getattr(stats, key) == getattr(expected_stats, key), key
    assert stats.skipped == expected_stats.skipped == {"empty_document": 2}


def test_null_texts_are_skipped_and_counted_and_other_columns_ignored(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", ["first text", None, "third text", None],
                         extra=[{"a": 1}, None, {"a": 3}, {"a": 4}])  # fmt: skip
    docs, stats, warnings = read(path)
    assert docs == [["first text"], ["third text"]]
    assert stats.skipped == {"null_text": 2} and any("2 rows whose 'text' is null" in w for w in warnings)


def test_bytes_that_are_not_utf8_are_replaced_and_counted_as_in_a_text_file(tmp_path):
    """A writer that did not check its strings: the bad byte becomes U+FFFD, counted, as a text file's would."""
    pq.write_table(pa.table({"text": pa.array([b"caf\xe9 au lait", b"fine"]).view(pa.string())}), tmp_path / "t.pq")
    (tmp_path / "t.txt").write_bytes(b"caf\xe9 au lait\n\nfine\n")
    docs, stats, warnings = read(tmp_path / "t.pq")
    assert docs == read(tmp_path / "t.txt")[0] == [["caf\ufffd au lait"], ["fine"]]
    assert stats.replaced_chars == 1 and "1 undecodable bytes replaced" in warnings[0]


def test_the_text_field_option_names_the_column_and_the_json_field(tmp_path):
    texts = ["alpha beta", "gamma delta"]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": texts, "title": ["A", "B"]}), path)
    assert read(path, text_field="content")[0] == [["alpha beta"], ["gamma delta"]]
    (tmp_path / "j").mkdir()
    jsonl = tmp_path / "j" / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    assert read(jsonl, text_field="content")[0] == [["alpha beta"], ["gamma delta"]]


def test_a_missing_or_non_string_text_column_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["a"], "title": ["A"], "n": [1]}), path)
    with pytest.raises(CorpusError, match=r"t\.parquet: no column 'text' \(its string columns: content, title\); "
                                          "name the column that holds the text with --text-field"):  # fmt: skip
        list(read_documents(path, path.parent, CorpusStats()))
    with pytest.raises(CorpusError, match=r"t\.parquet: column 'n' holds int64, not strings"):
        plan_sources(list_corpus([path], text_field="n")[1], 1 << 20, text_field="n")
    arrow = write_arrow(tmp_path / "t.arrow", ["x"])
    with pytest.raises(CorpusError, match=r"t\.arrow: no column 'body' \(its string columns: text\)"):
        plan_sources(list_corpus([arrow])[1], 1 << 20, text_field="body")


@pytest.mark.parametrize("writer", WRITERS)
def test_units_of_a_table_read_the_documents_of_the_whole_file(writer, tmp_path):
    path = WRITERS[writer](tmp_path / "t.bin", TEXTS * 3)
    whole = read(path)[0]
    corpus, files = list_corpus([path])
    kinds = set()
    for unit_bytes in (1, 5_000, 40_000, 10**9):
        docs, stats = [], CorpusStats()
        for source in plan_sources(files, unit_bytes):
            kinds.add(source.kind)
            for unit in source.units():
                docs += [d.lines for d in unit_documents(corpus, unit, stats, lambda m: None)]
        assert docs == whole, unit_bytes
        assert set(stats.skipped) <= {"empty_document"}
    assert kinds == {"table", "files"}


@pytest.mark.parametrize("file_format", [False, True])
def test_record_batches_are_found_from_the_message_headers_alone(file_format, tmp_path):
    """The offsets planning finds without reading a body are those where pyarrow's own reader finds each batch."""
    path = write_arrow(tmp_path / "t.arrow", TEXTS * 2, rows_per_batch=4, file_format=file_format)
    source = pa.memory_map(str(path))
    source.seek(8 if file_format else 0)
    reader, offsets = pa.ipc.MessageReader.open_stream(source), []
    while True:
        at = source.tell()
        try:
            message = reader.read_next_message()
        except StopIteration:
            break
        if message.type == "record batch":
            offsets.append(at)
    corpus, (file,) = list_corpus([path])
    pieces = plan_table(file, "arrow", "text")
    assert pieces.starts == tuple(offsets) and len(offsets) == -(-len(TEXTS) * 2 // 4)
    meta = pq.ParquetFile(write_parquet(tmp_path / "t.parquet", TEXTS * 2, 5)).metadata
    corpus, (file,) = list_corpus([tmp_path / "t.parquet"])
    pieces = plan_table(file, "parquet", "text")
    assert pieces.starts == tuple(range(meta.num_row_groups)) and pieces.end == meta.num_row_groups
    assert pieces.weights == tuple(meta.row_group(g).column(1).total_uncompressed_size for g in pieces.starts)


def test_a_corrupt_or_cut_table_is_counted_and_keeps_what_came_before(tmp_path):
    good = write_parquet(tmp_path / "good.parquet", TEXTS).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(good[: len(good) // 2])
    footer = len(good) - 8 - int.from_bytes(good[-8:-4], "little")
    (tmp_path / "bad-footer.parquet").write_bytes(good[:footer] + b"\xee" * (len(good) - footer - 4) + b"PAR1")
    stream = write_arrow(tmp_path / "s.arrow", TEXTS, rows_per_batch=4).read_bytes()
    (tmp_path / "cut.arrow").write_bytes(stream[: len(stream) * 3 // 4])
    for name, reason in (("cut.parquet", "truncated"), ("bad-footer.parquet", "corrupt"), ("cut.arrow", "truncated")):
        docs, stats, warnings = read(tmp_path / name)
        assert stats.skipped == {reason: 1}, name
        assert len(warnings) == 1 and warnings[0].startswith(name), warnings
        assert (docs == []) == name.endswith(".parquet")  # the Arrow stream keeps its batches before the cut
    docs, stats, _ = read(tmp_path / "cut.arrow")
    assert docs == read(tmp_path / "s.arrow")[0][: len(docs)] and 0 < len(docs) < len(TEXTS) - 2


def test_a_large_cut_arrow_stream_is_planned_up_to_the_cut_and_counted_once(tmp_path):
    stream = write_arrow(tmp_path / "s.arrow", TEXTS * 4, rows_per_batch=4).read_bytes()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cut.arrow").write_bytes(stream[: len(stream) - 100])
    corpus, files = list_corpus([tmp_path / "c"])
    (source,) = plan_sources(files, 20_000)
    assert source.kind == "table" and source.note.startswith("truncated")
    stats, warnings, docs = CorpusStats(), [], []
    for unit in source.units():
        docs += [d.lines for d in unit_documents(corpus, unit, stats, warnings.append)]
    assert docs == read(tmp_path / "s.arrow")[0][: len(docs)] and stats.skipped["truncated"] == 1


# ------------------------------------------------------------------------------------------ objects
def _upload(local: Path) -> str:
    url = f"memory://tables-{next(_names)}/corpus"
    fs = fsspec.filesystem("memory")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{url}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return url


def test_objects_in_a_bucket_plan_and_read_as_the_local_files(tmp_path):
    local = tmp_path / "c"
    local.mkdir()
    write_parquet(local / "a.parquet", TEXTS * 2)
    write_arrow(local / "b.arrow", TEXTS)
    write_jsonl(local / "c.jsonl", TEXTS)
    (local / "d.txt").write_text("A small plain text file.\n\nIts second document.\n")
    (local / ".hidden.txt").write_text("never read\n")
    url = _upload(local)
    results = []
    for where in (local, url):
        stats = CorpusStats()
        corpus, files = list_corpus([where], stats=stats)
        sources = plan_sources(files, 10_000)
        docs = [d.lines for s in sources for u in s.units() for d in unit_documents(corpus, u, stats, lambda m: None)]
        results.append(([s.to_json() for s in sources], docs, stats.to_dict()))
    assert results[0] == results[1] and len(results[0][1]) == 4 * (len(TEXTS) - 2) + 2
    assert {s[0] for s in results[0][0]} == {"table", "range", "files"} and results[0][2]["skipped"]["hidden"] == 1


def test_a_range_reader_reads_every_range_of_an_object_in_blocks(tmp_path):
    data = bytes(range(256)) * 1000
    fsspec.filesystem("memory").pipe_file(f"{(url := f'memory://rr-{next(_names)}')}/x.bin", data)
    location = Location.of(url)
    with location.reader("x.bin", block=4096) as f:  # sequential reads cross blocks (the next one read ahead)
        got = b"".join(iter(lambda: f.read(1000), b""))
        assert got == data
        f.seek(-10, 2)
        assert f.read(100) == data[-10:] and f.read(5) == b""
        f.seek(12_345)
        assert f.read(70_000) == data[12_345:82_345]  # larger than a block: one exact read
    with location.reader("x.bin", block=0) as f:
        f.seek(5)
        assert f.read(3) == data[5:8]
    with pytest.raises(FileNotFoundError, match=r"memory://rr-\d+/missing\.bin: object not found"):
        location.reader("missing.bin").read(1)
