"""`spanbert-data inspect`: what a dataset holds, measured from its rows (not from the build's claims)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from spanbert_data.cache import CacheItem, ShardCache, choose_limit, default_cache_dir
from spanbert_data.errors import DatasetError
from spanbert_data.location import Location
from spanbert_data.packing import record_batch_columns, rows_lower_bound
from spanbert_data.shards import load_manifest, read_arrow_file
from spanbert_data.tokenizer import SubwordTokenizer, load_tokenizer
from spanbert_data.words import target_word_starts

KIND_NAMES = ("mask", "random", "keep")


def _spans(pos_off: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merged spans = maximal runs of consecutive target slots within a row: (start index, length) into `pos`."""
    if len(pos) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    row_start = np.zeros(len(pos), dtype=bool)
    row_start[pos_off[:-1][np.diff(pos_off) > 0]] = True
    breaks = np.ones(len(pos), dtype=bool)
    breaks[1:] = (np.diff(pos.astype(np.int64)) != 1) | row_start[1:]
    starts = np.flatnonzero(breaks)
    return starts, np.diff(np.append(starts, len(pos)))


class _Reader:
    """The tokenizer and shard columns of a dataset directory, or of a URL: its shards through the local cache
    (spanbert_data/cache.py, SHA-256 checked), its tokenizer read into memory and checked against the manifest."""

    def __init__(self, root, manifest: dict, shards: list[dict]):
        self.root, self.manifest, self.cache = Location.of(root), manifest, None
        if self.root.local is None:  # local shards are memory-mapped where they are
            self.cache = ShardCache(default_cache_dir(), limit=0)
            sizes = [int(s["bytes"]) for s in shards]
            self.cache.limit = choose_limit(self.cache.dir, self.cache.usage(), max(sizes, default=0), sum(sizes),
                                            None, f"inspecting {self.root}")  # fmt: skip

    def tokenizer(self) -> SubwordTokenizer:
        entry = self.manifest["tokenizer"]
        roles = entry.get("special_ids")  # the build's roles (a transformers folder's config may have named them)
        if self.root.local is not None:
            return load_tokenizer(self.root.local / entry["file"], roles=roles)
        data = self.root.read_bytes(entry["file"])
        if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise DatasetError(f"{self.root / entry['file']}: missing or not the tokenizer the manifest names; "
                               f"run `spanbert-data verify {self.root}`")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "tokenizer.json").write_bytes(data)
            return load_tokenizer(Path(tmp) / "tokenizer.json", roles=roles)

    def columns(self, entry: dict, then: dict | None = None) -> dict:
        """The columns of shard `entry`; a remote reader starts downloading the next one (`then`) meanwhile."""
        if self.root.local is not None:
            return record_batch_columns(read_arrow_file(self.root.local_path(entry["path"])))
        item = CacheItem(self.root, entry["path"], int(entry["bytes"]), entry["sha256"])
        path = self.cache.fetch(item).result()
        if then is not None:
            self.cache.fetch(CacheItem(self.root, then["path"], int(then["bytes"]), then["sha256"]))
        try:
            return record_batch_columns(read_arrow_file(path))
        finally:
            self.cache.release(item)  # evictable from now on; the memory map stays valid

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def dataset_stats(root, split: str = "train", max_rows: int = 200_000) -> dict:
    """Counts over the whole manifest, distributions measured on up to `max_rows` rows of `split` (`root`: a
    dataset directory or URL)."""
    manifest = load_manifest(root)
    shards = manifest["shards"][split]
    reader = _Reader(root, manifest, shards)
    try:
        return _stats(reader, manifest, shards, split, max_rows)
    finally:
        reader.close()


def _stats(reader: _Reader, manifest: dict, shards: list[dict], split: str, max_rows: int) -> dict:
    tok = reader.tokenizer()
    out = {
        "split": split,
        "shards": len(shards),
        "rows": sum(s["rows"] for s in shards),
        "examples": sum(s["examples"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "mlm_targets": sum(s["mlm_targets"] for s in shards),
        "sbo_targets": sum(s["sbo_targets"] for s in shards),
        "mask_epochs": manifest["mask_epochs"],
        "blocks": manifest["blocks"],
        "corpus": manifest["corpus"],
    }
    slots = out["rows"] * manifest["max_seq_len"]
    out["padding_fraction"] = 1 - out["tokens"] / slots if slots else 0.0
    content = out["tokens"] - 2 * out["examples"]
    out["masked_fraction"] = out["mlm_targets"] / content if content else 0.0
    out["sbo_targets_per_mlm_target"] = out["sbo_targets"] / out["mlm_targets"] if out["mlm_targets"] else 0.0

    ex_lengths, span_tokens, span_words, kinds, seen, fewest_rows = [], [], [], [], 0, 0
    for i, shard in enumerate(shards):
        if seen >= max_rows:
            break
        cols = reader.columns(shard, shards[i + 1] if i + 1 < len(shards) else None)
        ids = cols["input_ids"]
        ex_lengths.append(cols["example_lengths"][1])
        fewest_rows += rows_lower_bound(ex_lengths[-1], ids.shape[1])  # packing is per shard
        pos_off, pos = cols["mlm_positions"]
        labels = cols["mlm_labels"][1].astype(np.int64)
        starts, lengths = _spans(pos_off, pos)
        span_tokens.append(lengths)
        is_start = target_word_starts(cols, tok.word_start)
        words = np.add.reduceat(is_start.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
        words += ~is_start[starts]  # a span beginning inside a word still covers (part of) that word
        span_words.append(words)
        row_of = np.repeat(np.arange(len(ids)), np.diff(pos_off))
        shown = ids[row_of, pos].astype(np.int64)
        kinds.append(_span_kinds(shown, labels, starts, tok.special_ids["mask"]))
        seen += len(ids)
    lens = np.concatenate(ex_lengths) if ex_lengths else np.zeros(0, np.int64)
    st = np.concatenate(span_tokens) if span_tokens else np.zeros(0, np.int64)
    sw = np.concatenate(span_words) if span_words else np.zeros(0, np.int64)
    kd = np.concatenate(kinds) if kinds else np.zeros(0, np.int64)
    out["measured_rows"] = int(seen)
    # the least padding any packing of these examples could reach (Martello-Toth L2 bound per shard)
    out["padding_lower_bound"] = 1 - lens.sum() / (fewest_rows * manifest["max_seq_len"]) if fewest_rows else 0.0
    out["example_length_hist"] = _hist(lens, [0, 64, 128, 256, 384, 448, 500, 511, 512, 513])
    out["span_length_hist"] = {"tokens": _counts(st, 20), "words": _counts(sw, 12)}
    out["mean_span_tokens"] = float(st.mean()) if len(st) else 0.0
    out["replacement_split"] = {name: float((kd == i).mean()) if len(kd) else 0.0 for i, name in enumerate(KIND_NAMES)}
    return out


def _span_kinds(shown: np.ndarray, labels: np.ndarray, starts: np.ndarray, mask_id: int) -> np.ndarray:
    """0 = all [MASK], 2 = all unchanged, 1 = otherwise (random; a random draw equal to the original reads as keep)."""
    if len(starts) == 0:
        return np.zeros(0, np.int64)
    n = np.diff(np.append(starts, len(shown)))
    masked = np.add.reduceat((shown == mask_id).astype(np.int64), starts)
    same = np.add.reduceat((shown == labels).astype(np.int64), starts)
    return np.where(masked == n, 0, np.where(same == n, 2, 1))


def _counts(values: np.ndarray, cap: int) -> dict:
    """Histogram of small integers; the last bucket is '>=cap'."""
    c = np.bincount(np.minimum(values, cap), minlength=cap + 1)
    return {(str(i) if i < cap else f">={cap}"): int(c[i]) for i in range(1, cap + 1) if c[i]}


def _hist(values: np.ndarray, edges: list[int]) -> dict:
    c, _ = np.histogram(values, bins=edges)
    return {
        (f"{lo}-{hi - 1}" if hi - 1 > lo else str(lo)): int(n)
        for lo, hi, n in zip(edges[:-1], edges[1:], c, strict=True) if n}


def detokenize(tok: SubwordTokenizer, ids) -> str:
    """Text of ids: WordPiece pieces joined (a space between words), any other family through its decoder."""
    if tok.words.kind != "wordpiece":
        return tok.decode(ids)
    out = []
    for i in ids:
        t = tok.id_to_token(int(i))
        if t.startswith("##") and out:
            out[-1] += t[2:]
        else:
            out.append(t)
    return " ".join(out)


def show_examples(root: str | Path, n: int = 3) -> str:
    """The first `n` examples of the first training shard, original text with masked spans marked.

    «span»  = replaced by [MASK];  «span|random: shown»  = random tokens;  «span|kept» = left unchanged."""
    manifest = load_manifest(root)
    shards = manifest["shards"]["train"]
    if not shards:
        return "(no training rows)"
    reader = _Reader(root, manifest, shards[:1])
    try:
        tok = reader.tokenizer()
        cols = reader.columns(shards[0])
    finally:
        reader.close()
    ids = cols["input_ids"]
    lines = []
    for r in range(len(ids)):
        lo, hi = cols["mlm_positions"][0][r], cols["mlm_positions"][0][r + 1]
        pos, labels = cols["mlm_positions"][1][lo:hi], cols["mlm_labels"][1][lo:hi]
        original = ids[r].astype(np.int64)
        original[pos] = labels
        masked_at = dict(zip(pos.tolist(), range(len(pos)), strict=True))
        e_off, e_len = cols["example_lengths"]
        slot = 0
        for length in e_len[e_off[r] : e_off[r + 1]]:
            lines.append(f"--- row {r}, example of {length} slots")
            mask_id = tok.special_ids["mask"]
            lines.append(_render(tok, original, ids[r], slot + 1, slot + length - 1, masked_at, mask_id))
            slot += int(length)
            if len(lines) >= 2 * n:
                return "\n".join(lines)
    return "\n".join(lines)


def _texts(tok, ids, bounds: list[int]) -> list[str]:
    """The text of ids[bounds[k]:bounds[k+1]] for each k. WordPiece: each run on its own (joined with spaces later);
    any other family: differences of decoded prefixes, so that a run's leading space and the decoder's handling of
    the text's start come out as in the whole text (a run split inside a character is decoded on its own)."""
    if tok.words.kind == "wordpiece":
        return [detokenize(tok, ids[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    texts, before = [], ""
    for a, b in zip(bounds, bounds[1:], strict=False):
        upto = tok.decode(ids[bounds[0] : b])
        texts.append(upto[len(before) :] if upto.startswith(before) else tok.decode(ids[a:b]))
        before = upto
    return texts


def _render(tok, original, shown, lo, hi, masked_at, mask_id) -> str:
    bounds, s = [lo], lo
    while s < hi:  # runs of unmasked and of masked slots
        e = s
        while e < hi and (e in masked_at) == (s in masked_at):
            e += 1
        bounds.append(e)
        s = e
    pieces = []
    for (s, e), text in zip(zip(bounds, bounds[1:], strict=False), _texts(tok, original, bounds), strict=True):
        if s not in masked_at:
            pieces.append(text)
            continue
        lead = text[: len(text) - len(text.lstrip())]  # a byte-level run's space stays outside the marks
        text = text.lstrip()
        if (shown[s:e] == mask_id).all():
            pieces.append(f"{lead}«{text}»")
        elif (shown[s:e] == original[s:e]).all():
            pieces.append(f"{lead}«{text}|kept»")
        else:
            pieces.append(f"{lead}«{text}|random: {detokenize(tok, shown[s:e]).strip()}»")
    return (" " if tok.words.kind == "wordpiece" else "").join(p for p in pieces if p)
