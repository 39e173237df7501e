"""Tables of documents: Parquet files and Arrow IPC files or streams, one document per row of the text column.

This is what most corpora are held in today: the Hugging Face Hub serves Parquet (`wikimedia/wikipedia`, FineWeb),
`datasets.Dataset.save_to_disk` writes Arrow IPC streams, and pandas, polars, duckdb and Spark write Parquet. A
file is recognised by its bytes, never its name (`table_format`): `PAR1` (Parquet), `ARROW1` (an Arrow IPC file)
or the continuation marker 0xFFFFFFFF that opens an Arrow IPC stream's first message.

- **Planning** (the driver, `plan_table`) reads metadata only: a Parquet file's footer (its row groups and the
  uncompressed bytes of the text column in each), or an Arrow file's message headers one by one, skipping the
  bodies (the byte range of each record batch). Row groups and record batches are the *pieces* that units are cut
  from (units.py), so one 10 GB file spreads over every worker.
- **Reading** (a task, `table_texts`) reads only its pieces: its row groups' text column for Parquet (one ranged
  read of each column chunk in a bucket; decoded `_ROWS_PER_BATCH` rows at a time, so memory stays bounded even
  for huge row groups), or the bytes of its record batches behind the stream's schema message for Arrow.

A missing or non-string text column is the user's to fix: `CorpusError`, one line listing the file's string
columns. A file that cannot be read (a corrupt footer, a file cut short) raises `TableError` with the reason it is
counted under; the corpus reader warns and skips it, keeping the rows read before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spanbert_data.errors import CorpusError
from spanbert_data.inputs import InputFile

PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"  # then two bytes of padding; the messages start at offset 8
CONTINUATION = b"\xff\xff\xff\xff"  # before every message's length in the IPC format (since Arrow 0.15)
_HEADER_PROBE = 1 << 16  # bytes read at a message's start: its length prefix and (almost always) all its metadata
_MAX_METADATA = 1 << 28  # a message header longer than this is not one
_SCHEMA, _DICTIONARY, _RECORD_BATCH = 1, 2, 3  # Arrow's MessageHeader union types
_ROWS_PER_BATCH = 4096  # rows of a Parquet row group decoded at once
_CUT_SHORT = "Expected to be able to read"  # how pyarrow says that an IPC message ends after the data


class TableError(Exception):
    """A table file that cannot be read (all of it or from some point on); `reason` is its skip reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def table_format(head: bytes) -> str | None:
    """'parquet' or 'arrow' from a file's first 8 bytes, or None (text, compressed or anything else)."""
    if head[:4] == PARQUET_MAGIC:
        return "parquet"
    if head[:6] == ARROW_FILE_MAGIC:
        return "arrow"
    if head[:4] == CONTINUATION and 0 < int.from_bytes(head[4:8], "little", signed=True) < _MAX_METADATA:
        return "arrow"
    return None


# ------------------------------------------------------------------------------------------ the text column
def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def check_text_field(schema: pa.Schema, field: str, where: str) -> None:
    """CorpusError, naming the file and its string columns, unless `field` is a column of strings."""
    strings = ", ".join(f.name for f in schema if _is_text(f.type)) or "none"
    if field not in schema.names:
        raise CorpusError(f"{where}: no column {field!r} (its string columns: {strings}); name the column that holds "
                          "the text with --text-field")  # fmt: skip
    kind = schema.field(field).type
    if not _is_text(kind):
        raise CorpusError(f"{where}: column {field!r} holds {kind}, not strings (its string columns: {strings}); "
                          "name the column that holds the text with --text-field")  # fmt: skip


def _texts(column: pa.Array | pa.ChunkedArray) -> Iterator[tuple[list, int, bool]]:
    """(texts, UTF-8 bytes, valid UTF-8) per chunk of a string column; None for a null. Bytes that are not UTF-8 (a
    writer that did not check) come back as lone surrogates, which the corpus reader replaces and counts like a
    text file's; valid UTF-8 holds none, and the reader need not look for them."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_decode()
        nbytes = int(pc.sum(pc.binary_length(chunk.cast(pa.large_binary()))).as_py() or 0)
        try:
            yield chunk.to_pylist(), nbytes, True
        except UnicodeDecodeError:
            raw = chunk.cast(pa.large_binary()).to_pylist()
            yield [None if b is None else b.decode("utf-8", "surrogateescape") for b in raw], nbytes, False


# ------------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class TablePieces:
    """What a unit of a table file can hold: `starts[i]` is piece i's cut (Parquet: its row-group index; Arrow: the
    byte offset of its record batch message) and `weights[i]` its text bytes, about; `end` is the cut after the
    last piece. `note` says why the pieces end before the file does ("truncated: ...")."""

    fmt: str
    starts: tuple[int, ...]
    weights: tuple[int, ...]
    end: int
    note: str = ""

    @property
    def weight(self) -> int:
        return sum(self.weights)


def plan_table(file: InputFile, fmt: str, field: str) -> TablePieces:
    """The pieces of a table file from its metadata alone (see the module docstring). TableError when it cannot be
    read; CorpusError when `field` is not a string column."""
    if fmt == "parquet":
        meta = _parquet_metadata(file)
        check_text_field(meta.schema.to_arrow_schema(), field, file.url)
        column = [meta.schema.column(i).path for i in range(meta.num_columns)].index(field)
        weights = tuple(meta.row_group(g).column(column).total_uncompressed_size for g in range(meta.num_row_groups))
        return TablePieces(fmt, tuple(range(meta.num_row_groups)), weights, meta.num_row_groups)
    scan = _scan_messages(file)
    check_text_field(_read_schema(scan.schema), field, file.url)
    if scan.dictionaries:  # batches need the dictionaries before them: read the file whole (one piece)
        return TablePieces(fmt, (scan.first,), (scan.end - scan.first,), scan.end, scan.note)
    weights = tuple(hi - lo for lo, hi in zip(scan.starts, (*scan.starts[1:], scan.end), strict=True))
    return TablePieces(fmt, scan.starts, weights, scan.end, scan.note)


def _parquet_metadata(file: InputFile) -> pq.FileMetaData:
    size = file.size
    if size < 12 or file.read_range(size - 4, size) != PARQUET_MAGIC:
        raise TableError("truncated", "Parquet file without its footer (cut short?)")
    try:
        with contextlib.closing(_random_access(file)) as source:
            return pq.ParquetFile(source).metadata
    except (pa.ArrowException, OSError, ValueError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise TableError("corrupt", f"unreadable Parquet footer ({_first_line(e)})") from None


def _random_access(file: InputFile):
    """What pyarrow reads: the local file memory-mapped, or the object in ranged reads of exactly what it asks."""
    if file.path is not None:
        return pa.memory_map(str(file.path))
    return file.reader(0)


@dataclass
class _Scan:
    schema: bytes  # the schema message, prefix included
    first: int  # offset of the first message after the schema
    starts: tuple[int, ...]  # offsets of the record batch messages
    end: int  # where the last complete message ends
    dictionaries: bool
    note: str


def _scan_messages(file: InputFile) -> _Scan:
    """Walk an Arrow IPC file or stream message by message, reading each header and skipping each body."""
    size = file.size
    pos = 8 if file.read_range(0, 6) == ARROW_FILE_MAGIC else 0
    schema, first, starts, dictionaries, note = b"", 0, [], False, ""
    with contextlib.closing(file.reader(0)) as f:
        while pos < size:
            f.seek(pos)
            head = f.read(_HEADER_PROBE)
            try:
                prefix, length = _message_prefix(head)
                if length == 0:
                    break  # the end-of-stream marker (an IPC file's footer follows it)
                if len(head) < prefix + length:
                    head += f.read(prefix + length - len(head))
                kind, body = _message_fields(head[prefix : prefix + length])
            except ValueError as e:
                if not schema:
                    raise TableError("corrupt", f"not a readable Arrow IPC file ({e})") from None
                note = f"corrupt: Arrow message at byte {pos}: {e}"
                break
            end = pos + prefix + length + body
            if end > size or len(head) < prefix + length:
                if not schema:
                    raise TableError("truncated", "Arrow IPC file cut short in its schema")
                note = f"truncated: the Arrow record batch at byte {pos} ends after the file"
                break
            if not schema:
                if kind != _SCHEMA:
                    raise TableError("corrupt", "Arrow IPC data that does not start with a schema")
                schema, first = head[: prefix + length], end
            elif kind == _DICTIONARY:
                dictionaries = True
            elif kind == _RECORD_BATCH:
                starts.append(pos)
            pos = end
    if not schema:
        raise TableError("truncated", "Arrow IPC file without a schema")
    return _Scan(schema, first, tuple(starts), pos, dictionaries, note)  # pos: the end of the last whole message


def _message_prefix(head: bytes) -> tuple[int, int]:
    """(prefix bytes, metadata length) of an IPC message: 0xFFFFFFFF then int32, or a bare int32 (before 0.15)."""
    if len(head) < 8:
        raise ValueError("message header cut short")
    if head[:4] == CONTINUATION:
        prefix, length = 8, int.from_bytes(head[4:8], "little", signed=True)
    else:
        prefix, length = 4, int.from_bytes(head[:4], "little", signed=True)
    if not 0 <= length < _MAX_METADATA:
        raise ValueError(f"impossible message length {length}")
    return prefix, length


def _message_fields(meta: bytes) -> tuple[int, int]:
    """(header type, body length) of a `Message` flatbuffer (Arrow's Message.fbs: field 1 `header_type`, a ubyte;
    field 3 `bodyLength`, an int64), read through the table's vtable without a flatbuffers library."""

    def u(at: int, n: int, signed: bool = False) -> int:
        if not 0 <= at <= len(meta) - n:
            raise ValueError("message metadata points outside itself")
        return int.from_bytes(meta[at : at + n], "little", signed=signed)

    table = u(0, 4)
    vtable = table - u(table, 4, signed=True)
    vt_size = u(vtable, 2)

    def field(i: int) -> int:  # offset of field i inside the table, 0 when absent
        return u(vtable + 4 + 2 * i, 2) if 4 + 2 * i < vt_size else 0

    kind = u(table + field(1), 1) if field(1) else 0
    body = u(table + field(3), 8, signed=True) if field(3) else 0
    if body < 0:
        raise ValueError(f"negative body length {body}")
    return kind, body


def _read_schema(message: bytes) -> pa.Schema:
    try:
        return pa.ipc.read_schema(pa.py_buffer(message))
    except (pa.ArrowException, ValueError) as e:
        raise TableError("corrupt", f"unreadable Arrow schema ({_first_line(e)})") from None


# ------------------------------------------------------------------------------------------ reading
def table_texts(file: InputFile, fmt: str, field: str, lo: int | None = None,
                hi: int | None = None) -> Iterator[tuple[list, int, bool]]:  # fmt: skip
    """(texts, UTF-8 bytes, valid UTF-8) per row group or record batch of pieces [lo, hi) (the whole file when lo is
    None), in file order. TableError when the file (or a piece of it) cannot be read: the texts before it were
    yielded."""
    try:
        if fmt == "parquet":
            yield from _parquet_texts(file, field, lo, hi)
        else:
            yield from _arrow_texts(file, field, lo, hi)
    except (pa.ArrowException, OSError, EOFError, ValueError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise  # the file, not its data: counted unreadable
        reason = "truncated" if isinstance(e, EOFError) or _CUT_SHORT in str(e) else "corrupt"
        raise TableError(reason, f"unreadable {'Parquet' if fmt == 'parquet' else 'Arrow'} data ({_first_line(e)})") \
            from None


def _parquet_texts(file: InputFile, field: str, lo: int | None, hi: int | None) -> Iterator[tuple]:
    if lo is None:
        meta = _parquet_metadata(file)
        check_text_field(meta.schema.to_arrow_schema(), field, file.url)
        lo, hi = 0, meta.num_row_groups
    if hi <= lo:
        return
    with contextlib.closing(_random_access(file)) as source:
        reader = pq.ParquetFile(source)
        # Decoded a few thousand rows at a time: a row group of a GB holds no more than that many texts in memory.
        for batch in reader.iter_batches(_ROWS_PER_BATCH, row_groups=range(lo, hi), columns=[field]):
            yield from _texts(batch.column(field))


def _arrow_texts(file: InputFile, field: str, lo: int | None, hi: int | None) -> Iterator[tuple]:
    if lo is None:
        stream = _whole_stream(file)
        check_text_field(stream.schema, field, file.url)
    else:
        with contextlib.closing(file.reader(0)) as f:
            pos = 8 if f.read(6) == ARROW_FILE_MAGIC else 0
            f.seek(pos)
            head = f.read(_HEADER_PROBE)
            prefix, length = _message_prefix(head)
            if len(head) < prefix + length:
                head += f.read(prefix + length - len(head))
            f.seek(lo)
            stream = pa.ipc.open_stream(pa.py_buffer(head[: prefix + length] + f.read(hi - lo)))
    for batch in stream:
        yield from _texts(batch.column(field))


def _whole_stream(file: InputFile) -> pa.ipc.RecordBatchStreamReader:
    """The record batches of a whole IPC file or stream, read as a stream (so an IPC file cut short before its
    footer still gives the batches before the cut)."""
    if file.path is not None:
        data = pa.memory_map(str(file.path)).read_buffer()
    else:
        with contextlib.closing(file.reader()) as f:
            data = pa.py_buffer(f.read())
    offset = 8 if data.size >= 8 and data[:6].to_pybytes() == ARROW_FILE_MAGIC else 0
    return pa.ipc.open_stream(pa.BufferReader(data.slice(offset)))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
