"""Pass 1 of the build: corpus units → token ids → blocks → the token store (docs/FORMAT.md).

The unit of work is a *unit* (`units.py`: small files together, or a byte range of a large file, about
`--unit-mb` of input). A unit is read, tokenized in large batches of lines and cut into blocks (SPEC §1)
with no Python loop over tokens, then written as one or more store parts plus a completion marker.
Units are independent, so any number of worker processes or machines writes the same bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from spanbert_data.blocks import make_blocks
from spanbert_data.corpus import CorpusStats
from spanbert_data.files import atomic_write_json, sha256_file
from spanbert_data.shards import write_arrow_file
from spanbert_data.tokenizer import SubwordTokenizer
from spanbert_data.unit_reader import unit_documents
from spanbert_data.units import Unit

LINES_PER_BATCH = 32768  # lines sent to the tokenizer at once: large batches keep its threads busy
TOKENS_PER_PART = 1 << 28  # a store part's token count stays far below Arrow's int32 list-offset limit


def store_schema(id_type: pa.DataType, word_starts: bool = False) -> pa.Schema:
    """The token store's columns (docs/FORMAT.md); `word_starts` for a tokenizer whose word starts are positional."""
    fields = [("tokens", pa.list_(id_type)), ("doc", pa.int32())]
    return pa.schema(fields + [("word_starts", pa.list_(pa.bool_()))] if word_starts else fields)


class _PartWriter:
    """Accumulates blocks of a unit and writes them as store parts of at most TOKENS_PER_PART tokens."""

    def __init__(self, out: Path, unit: Unit, tokenizer: SubwordTokenizer):
        self.out, self.unit, self.tok = out, unit, tokenizer
        self.id_type = pa.from_numpy_dtype(tokenizer.id_dtype)
        self.tokens: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.docs: list[np.ndarray] = []
        self.starts: list[np.ndarray] | None = None if tokenizer.words.per_token else []
        self.pending = 0
        self.parts: list[dict] = []
        self.unigram = np.zeros(tokenizer.vocab_size, dtype=np.int64)

    def add(self, ids: np.ndarray, starts: np.ndarray, block_offsets: np.ndarray, block_docs: np.ndarray) -> None:
        ids = ids[block_offsets[0] : block_offsets[-1]].astype(self.tok.id_dtype, copy=False)
        self.tokens.append(ids)
        if self.starts is not None:
            self.starts.append(starts[block_offsets[0] : block_offsets[-1]])
        self.lengths.append(np.diff(block_offsets))
        self.docs.append(block_docs.astype(np.int32))
        self.unigram += np.bincount(ids, minlength=self.tok.vocab_size)
        self.pending += len(ids)
        if self.pending >= TOKENS_PER_PART:
            self.flush()

    def flush(self) -> None:
        if not self.lengths and self.parts:
            return
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(self.tokens) if self.tokens else np.zeros(0, self.tok.id_dtype)
        docs = np.concatenate(self.docs) if self.docs else np.zeros(0, np.int32)
        tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=self.id_type))
        columns = [tokens, pa.array(docs)]
        if self.starts is not None:  # bit-packed by Arrow: 1/16 of the uint16 ids
            flags = np.concatenate(self.starts) if self.starts else np.zeros(0, bool)
            columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flags, type=pa.bool_())))
            self.starts = []
        batch = pa.record_batch(columns, schema=store_schema(self.id_type, self.starts is not None))
        path = self.unit.part(len(self.parts))
        info = write_arrow_file(self.out / path, batch)
        self.parts.append({"path": path, "blocks": len(lengths), "tokens": int(len(values)), **info})
        self.tokens, self.lengths, self.docs, self.pending = [], [], [], 0


def build_unit(out: Path, root: Path, unit: Unit, tokenizer: SubwordTokenizer, max_content: int) -> dict:
    """Pass 1 for one unit: read, tokenize, block, write its parts, then its marker (last). Returns the marker.

    A "stream" unit's text is read from its work file under `out` (written there by the driver)."""
    started = time.perf_counter()
    stats = CorpusStats()
    warnings: list[str] = []
    writer = _PartWriter(out, unit, tokenizer)
    lines: list[str] = []
    line_docs: list[int] = []
    doc_number = 0

    def encode_pending() -> None:
        if not lines:
            return
        ids, lengths, word_start = tokenizer.encode_with_words(lines)
        offsets, docs = make_blocks(lengths, np.asarray(line_docs, dtype=np.int64), word_start, max_content)
        writer.add(ids, word_start, offsets, docs)
        lines.clear()
        line_docs.clear()

    base = root if root.is_dir() else root.parent
    for doc in unit_documents(base, unit, stats, warnings.append, work=out):
        lines.extend(doc.lines)
        line_docs.extend([doc_number] * len(doc.lines))
        doc_number += 1
        if len(lines) >= LINES_PER_BATCH:  # only between documents: a block never spans two batches
            encode_pending()
    encode_pending()
    writer.flush()
    marker = {
        "unit": unit.key,
        "source": unit.source,
        "sub": unit.sub,
        "sources": list(unit.files),
        "parts": writer.parts,
        "documents": doc_number,
        "blocks": sum(p["blocks"] for p in writer.parts),
        "tokens": sum(p["tokens"] for p in writer.parts),
        "input_bytes": unit.bytes,
        "last": unit.last,
        "corpus": stats.to_dict(),
        "warnings": warnings[:100],
        "seconds": round(time.perf_counter() - started, 3),
        "unigram": writer.unigram.tolist(),
    }
    atomic_write_json(out / unit.marker, marker)
    return marker


def unit_is_complete(out: Path, unit: Unit, marker: dict | None) -> bool:
    """A unit is done when its marker exists, has its key and sources, and every part has its recorded size."""
    if marker is None or marker.get("unit") != unit.key or marker.get("sources") != list(unit.files):
        return False
    for part in marker.get("parts", []):
        path = out / part["path"]
        if not path.is_file() or path.stat().st_size != part["bytes"]:
            return False
    return True


def verify_part_hashes(out: Path, marker: dict) -> bool:
    return all(sha256_file(out / p["path"]) == p["sha256"] for p in marker["parts"])
