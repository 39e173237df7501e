"""A small dataset directory written exactly per docs/FORMAT.md, for trainer tests that must not depend on the builder.

Rows hold random but valid, *learnable* examples: each example's content is an arithmetic run of token
ids (start and stride random), so a masked token is predictable from its neighbours and the loss of a
tiny model falls within a few dozen steps. Spans are masked and SBO targets derived as SPEC §2–§3 say
(merged, non-touching spans; SBO only for interior spans; k < 15).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from spanbert_data.files import atomic_write_json, sha256_file
from spanbert_data.packing import rows_to_record_batch
from spanbert_data.shards import write_arrow_file

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
FIRST_WORD = 110  # ids below are reserved for specials (BERT layout, SPEC §1)


def _example(rng: np.random.Generator, n: int, vocab_size: int):
    """Content ids of one example and its merged spans [(s, e)], content-relative, ~15% masked."""
    period = vocab_size - FIRST_WORD
    content = FIRST_WORD + (rng.integers(0, period) + rng.integers(1, 3) * np.arange(n)) % period
    budget, spans, taken = int(np.ceil(0.15 * n)), [], np.zeros(n + 2, dtype=bool)
    for _ in range(50):
        if budget <= 0:
            break
        length = int(min(rng.integers(1, 5), budget))
        s = int(rng.integers(0, n - length + 1))
        e = s + length - 1
        if taken[s : e + 3].any():  # keep spans apart so they stay separate merged spans (shifted by 1)
            continue
        taken[s + 1 : e + 2] = True
        spans.append((s, e))
        budget -= length
    return content, sorted(spans)


def _rows(rng: np.random.Generator, n_rows: int, row_len: int, vocab_size: int, first_block: int) -> dict:
    ids = np.full((n_rows, row_len), PAD, dtype=np.uint16)
    cols = {name: [] for name in ("example_lengths", "block_ids", "mlm_positions", "mlm_labels", "sbo_positions",
                                  "sbo_left", "sbo_right", "sbo_offsets", "sbo_labels")}  # fmt: skip
    block = first_block
    for r in range(n_rows):
        row = {name: [] for name in cols}
        slot = 0
        while True:
            n = int(rng.integers(6, min(40, row_len - 2) + 1))
            if slot + n + 2 > row_len:
                break
            content, spans = _example(rng, n, vocab_size)
            ids[r, slot] = CLS
            ids[r, slot + 1 : slot + 1 + n] = content
            ids[r, slot + 1 + n] = SEP
            for s, e in spans:
                for i in range(s, e + 1):
                    row["mlm_positions"].append(slot + 1 + i)
                    row["mlm_labels"].append(content[i])
                    if s > 0 and e < n - 1 and i - s < 15:  # SPEC §3: interior spans, first 15 tokens
                        row["sbo_positions"].append(slot + 1 + i)
                        row["sbo_left"].append(slot + s)  # content s-1
                        row["sbo_right"].append(slot + e + 2)  # content e+1
                        row["sbo_offsets"].append(i - s)
                        row["sbo_labels"].append(content[i])
                ids[r, slot + 1 + s : slot + 2 + e] = MASK
            row["example_lengths"].append(n + 2)
            row["block_ids"].append(block)
            block += 1
            slot += n + 2
        for name in cols:
            cols[name].append(row[name])
    out = {"input_ids": ids}
    dtypes = {"example_lengths": np.uint16, "block_ids": np.int64, "sbo_offsets": np.uint8}
    for name, lists in cols.items():
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int32)
        values = np.array([v for x in lists for v in x], dtype=dtypes.get(name, np.uint16))
        out[name] = (offsets, values)
    return out, block


def _write_shard(root: Path, rel: str, columns: dict, row_len: int, epoch: int) -> dict:
    info = write_arrow_file(root / rel, rows_to_record_batch(columns, row_len))
    entry = {
        "path": rel, "epoch": epoch, "rows": len(columns["input_ids"]),
        "examples": len(columns["example_lengths"][1]), "tokens": int(columns["example_lengths"][1].sum()),
        "mlm_targets": len(columns["mlm_positions"][1]), "sbo_targets": len(columns["sbo_positions"][1]), **info,
    }  # fmt: skip
    atomic_write_json(root / rel.replace(".arrow", ".json"), entry)
    return entry


def make_dataset(root: str | Path, rows: int = 64, mask_epochs: int = 2, valid_rows: int = 16, row_len: int = 64,
                 vocab_size: int = 300, shards_per_epoch: int = 2, seed: int = 0) -> Path:  # fmt: skip
    """Write a complete dataset directory (manifest last) and return its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = {f"tok{i}": i for i in range(vocab_size)}
    Tokenizer(WordLevel(vocab, unk_token="tok100")).save(str(root / "tokenizer.json"))
    train, block = [], 0
    bounds = np.linspace(0, rows, shards_per_epoch + 1).astype(int)
    for epoch in range(mask_epochs):
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            columns, block = _rows(rng, int(hi - lo), row_len, vocab_size, block)
            train.append(_write_shard(root, f"epoch-{epoch}/part-{i:05d}.arrow", columns, row_len, epoch))
    valid = []
    if valid_rows:
        columns, block = _rows(rng, valid_rows, row_len, vocab_size, block)
        valid.append(_write_shard(root, "valid/part-00000.arrow", columns, row_len, 0))
    manifest = {
        "format": "spanbert-dataset", "format_version": 1, "created_by": "tests/train/dataset_fixture.py",
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(root / "tokenizer.json"),
                      "vocab_size": vocab_size,
                      "special_ids": {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}},
        "options": {"seed": seed, "fixture": True}, "max_seq_len": row_len, "mask_epochs": mask_epochs,
        "id_dtype": "uint16", "corpus": {}, "blocks": block, "tokens": sum(e["tokens"] for e in train),
        "unigram_counts": [], "store": [], "shards": {"train": train, "valid": valid},
    }  # fmt: skip
    atomic_write_json(root / "manifest.json", manifest)
    return root


def rewrite_manifest(root: Path, **changes) -> None:
    """Edit top-level manifest fields in place (tests of bad inputs)."""
    path = Path(root) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))
