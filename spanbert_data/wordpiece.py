"""A compiled BERT WordPiece encoder that gives exactly the ids of HF `tokenizers` (issue 13).

One pass over the UTF-8 bytes of a batch of lines, in Numba, with no Python object per line or token:

    bytes ─▶ code point ─▶ per-code-point code (wordpiece_tables: the BERT normaliser and pre-tokenizer,
          probed from `tokenizers` itself) ─▶ normalised word bytes ─▶ greedy longest-match-first over a
          byte trie of the vocabulary (`##` continuation) ─▶ ids

The WordPiece rules are `tokenizers`' own (models/wordpiece): a word of more than
`max_input_chars_per_word` characters is one [UNK]; a word with a position where no vocabulary entry
matches is one [UNK] as a whole. Lines holding a character whose normalisation could depend on its
neighbours (wordpiece_tables.ROUTE) are reported back so that the caller encodes them with `tokenizers`.

Lines are split into chunks of about equal bytes that run on Numba's thread pool (`prange`); each chunk
writes its own region of the output, so the ids never depend on the thread count.
"""

from __future__ import annotations

import json

import numba
import numpy as np
import tokenizers
from numba import njit, prange

from spanbert_data.wordpiece_tables import (
    ISOLATE,
    PUNCT,
    REMOVED,
    ROUTE,
    SEQ_BASE,
    SPACE,
    SPACE_CLASS,
    WORD,
    char_tables,
    unsupported_reason,
)

_HASH = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64 (wrapping multiply)


class UnsupportedTokenizer(Exception):
    """The tokenizer has a component that the fast encoder does not reproduce; the message says which."""


# --------------------------------------------------------------------------------------------- vocabulary trie
@njit(cache=True)
def _slot(key, mask):
    return ((key * _HASH) >> 29) & mask


@njit(cache=True)
def _build_trie(tok_bytes, tok_off, tok_ids, bits):
    """Byte trie of the vocabulary as an open-addressing hash (node << 8 | byte) -> child; term[node] = id or -1."""
    mask = (1 << bits) - 1
    keys = np.full(1 << bits, -1, np.int64)
    vals = np.zeros(1 << bits, np.int32)
    term = np.full(len(tok_bytes) + 1, -1, np.int32)
    n_nodes = 1
    for t in range(len(tok_ids)):
        node = 0
        for j in range(tok_off[t], tok_off[t + 1]):
            key = (np.int64(node) << 8) | tok_bytes[j]
            h = _slot(key, mask)
            while keys[h] != -1 and keys[h] != key:
                h = (h + 1) & mask
            if keys[h] == -1:
                keys[h] = key
                vals[h] = n_nodes
                n_nodes += 1
            node = vals[h]
        term[node] = tok_ids[t]
    return keys, vals, term[:n_nodes].copy()


@njit(cache=True, inline="always")
def _child(keys, vals, mask, node, byte):
    key = (np.int64(node) << 8) | byte
    h = _slot(key, mask)
    while True:
        k = keys[h]
        if k == key:
            return vals[h]
        if k == -1:
            return -1
        h = (h + 1) & mask


@njit(cache=True)
def _wordpiece(word, wlen, keys, vals, term, mask, cont_root, unk, out, pos):
    """Greedy longest-match-first pieces of word[:wlen] into out[pos:]; returns the new pos."""
    first = pos
    s = 0
    while s < wlen:
        node = 0 if s == 0 else cont_root
        best = -1
        best_end = s
        j = s
        while j < wlen and node >= 0:
            node = _child(keys, vals, mask, node, word[j])
            j += 1
            if node >= 0 and term[node] >= 0:
                best = term[node]
                best_end = j
        if best < 0:  # no entry matches here: the whole word is [UNK]
            out[first] = unk
            return first + 1
        out[pos] = best
        pos += 1
        s = best_end
    return pos


# --------------------------------------------------------------------------------------------- the encoder
@njit(cache=True, inline="always")
def _put_utf8(word, wlen, cp):
    if cp < 0x80:
        word[wlen] = cp
        return wlen + 1
    if cp < 0x800:
        word[wlen] = 0xC0 | (cp >> 6)
        word[wlen + 1] = 0x80 | (cp & 0x3F)
        return wlen + 2
    if cp < 0x10000:
        word[wlen] = 0xE0 | (cp >> 12)
        word[wlen + 1] = 0x80 | ((cp >> 6) & 0x3F)
        word[wlen + 2] = 0x80 | (cp & 0x3F)
        return wlen + 3
    word[wlen] = 0xF0 | (cp >> 18)
    word[wlen + 1] = 0x80 | ((cp >> 12) & 0x3F)
    word[wlen + 2] = 0x80 | ((cp >> 6) & 0x3F)
    word[wlen + 3] = 0x80 | (cp & 0x3F)
    return wlen + 4


@njit(cache=True, inline="always")
def _next_code(buf, i, ascii_codes, block_index, blocks):
    """(code point, its code, next position) of the valid UTF-8 (the bytes of a Python str) at buf[i]."""
    b = buf[i]
    if b < 0x80:
        return np.int64(b), ascii_codes[b], i + 1
    if b < 0xE0:
        cp = (np.int64(b & 0x1F) << 6) | (buf[i + 1] & 0x3F)
        n = 2
    elif b < 0xF0:
        cp = (np.int64(b & 0x0F) << 12) | (np.int64(buf[i + 1] & 0x3F) << 6) | (buf[i + 2] & 0x3F)
        n = 3
    else:
        cp = ((np.int64(b & 0x07) << 18) | (np.int64(buf[i + 1] & 0x3F) << 12)
              | (np.int64(buf[i + 2] & 0x3F) << 6) | (buf[i + 3] & 0x3F))  # fmt: skip
        n = 4
    return cp, blocks[block_index[cp >> 8] * 256 + (cp & 255)], i + n


@njit(cache=True, inline="always")
def _items(code, pool):
    """(p, count) of the items a SPACE, ISOLATE or sequence code stands for: one, or pool[p] of a sequence."""
    if code <= -SEQ_BASE:
        p = -code - SEQ_BASE
        return p, pool[p]
    return 0, 1


@njit(cache=True, inline="always")
def _item(code, cp, pool, p, k):
    """(class, code point) of the k-th item of a SPACE, ISOLATE or sequence code."""
    if code == SPACE:
        return SPACE_CLASS, np.int64(0)
    if code == ISOLATE:
        return PUNCT, cp
    item = pool[p + 1 + k]
    return item & 3, np.int64(item >> 2)


@njit(cache=True)
def _encode_range(buf, starts, ends, lo, hi, tables, trie, out, pos, counts, routed, word):
    """Encode lines lo..hi-1 (byte ranges starts..ends of buf) into out[pos:]; returns the end position.

    A line holding a ROUTE character is rolled back: counts 0, routed 1."""
    ascii_codes, block_index, blocks, pool = tables
    keys, vals, term, mask, cont_root, unk, max_chars = trie
    for li in range(lo, hi):
        line_pos = pos
        i = starts[li]
        end = ends[li]
        wlen = 0
        wchars = 0
        route = False
        while i < end:
            cp, code, i = _next_code(buf, i, ascii_codes, block_index, blocks)
            if code >= 0:  # a word character
                if wchars < max_chars:
                    wlen = _put_utf8(word, wlen, code)
                wchars += 1
                continue
            if code == REMOVED:
                continue
            if code == ROUTE:
                route = True
                break
            p, n_items = _items(code, pool)  # SPACE, ISOLATE or a sequence: each space or punctuation ends a word
            for k in range(n_items):
                cls, d = _item(code, cp, pool, p, k)
                if cls == WORD:
                    if wchars < max_chars:
                        wlen = _put_utf8(word, wlen, d)
                    wchars += 1
                    continue
                if wchars:
                    pos = _flush(word, wlen, wchars, trie, out, pos)
                    wlen = 0
                    wchars = 0
                if cls != SPACE_CLASS:  # punctuation: a word of its own
                    wlen = _put_utf8(word, 0, d)
                    pos = _flush(word, wlen, 1, trie, out, pos)
                    wlen = 0
        if route:
            pos = line_pos
            routed[li] = 1
            counts[li] = 0
            continue
        if wchars:
            pos = _flush(word, wlen, wchars, trie, out, pos)
        counts[li] = pos - line_pos
    return pos


@njit(cache=True, inline="always")
def _flush(word, wlen, wchars, trie, out, pos):
    keys, vals, term, mask, cont_root, unk, max_chars = trie
    if wchars > max_chars:
        out[pos] = unk
        return pos + 1
    return _wordpiece(word, wlen, keys, vals, term, mask, cont_root, unk, out, pos)


@njit(cache=True, parallel=True)
def _encode_chunks(buf, starts, ends, chunk_lines, chunk_out, tables, trie, out, counts, routed, chunk_end, wbytes):
    for k in prange(len(chunk_lines) - 1):
        word = np.empty(wbytes, np.uint8)
        chunk_end[k] = _encode_range(buf, starts, ends, chunk_lines[k], chunk_lines[k + 1], tables, trie, out,
                                     chunk_out[k], counts, routed, word)  # fmt: skip


# --------------------------------------------------------------------------------------------- Python side
def line_bytes(lines: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(UTF-8 bytes of the lines joined by newlines, start and end byte of each line). Raises UnicodeEncodeError."""
    text = "\n".join(lines)
    buf = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    if text.count("\n") == len(lines) - 1:
        newlines = np.flatnonzero(buf == 10)
        starts = np.concatenate([[0], newlines + 1]).astype(np.int64)
        ends = np.concatenate([newlines, [len(buf)]]).astype(np.int64)
    else:  # some line holds a newline itself: measure every line
        sizes = np.fromiter((len(s.encode("utf-8")) + 1 for s in lines), dtype=np.int64, count=len(lines))
        ends = np.cumsum(sizes) - 1
        starts = ends - sizes + 1
    return buf, starts, ends


def plan_chunks(starts, ends, threads: int | None, per_byte: float) -> tuple[np.ndarray, np.ndarray]:
    """Lines cut into chunks of about equal bytes for Numba's threads: (first line of each chunk + the
    end, start of each chunk's output region + the end), a region holding per_byte x its bytes."""
    if threads is not None:  # numba's setting is per calling thread
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    n = len(starts)
    sizes = ends - starts + 1
    n_chunks = max(1, min(n, 4 * numba.get_num_threads() if n >= 4096 else 1))
    bounds = np.searchsorted(np.cumsum(sizes), np.linspace(0, int(sizes.sum()), n_chunks + 1)[1:-1])
    chunk_lines = np.unique(np.concatenate([[0], bounds, [n]])).astype(np.int64)
    cap = np.ceil(np.add.reduceat(sizes, chunk_lines[:-1]) * per_byte).astype(np.int64) + 1
    return chunk_lines, np.concatenate([[0], np.cumsum(cap)]).astype(np.int64)


class FastWordPiece:
    """The compiled encoder for one `tokenizers.Tokenizer`; raises UnsupportedTokenizer when it cannot be exact."""

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        spec = json.loads(tokenizer.to_str())
        reason = unsupported_reason(spec)
        if reason is not None:
            raise UnsupportedTokenizer(reason)
        model = spec["model"]
        vocab: dict[str, int] = model["vocab"]
        self.max_chars = int(model.get("max_input_chars_per_word", 100))
        self.unk_id = int(vocab[model["unk_token"]])
        self.chars = char_tables(tokenizer, spec)
        encoded = [tok.encode("utf-8") for tok in vocab]
        tok_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        tok_off = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=tok_off[1:])
        bits = max(10, int(2 * len(tok_bytes)).bit_length())
        keys, vals, term = _build_trie(tok_bytes, tok_off, np.fromiter(vocab.values(), np.int32, len(vocab)), bits)
        cont_root = 0
        for byte in model.get("continuing_subword_prefix", "##").encode("utf-8"):
            cont_root = _child(keys, vals, (1 << bits) - 1, cont_root, byte) if cont_root >= 0 else -1
        self._tables = (self.chars.ascii, self.chars.block_index, self.chars.blocks, self.chars.pool)
        self._trie = (keys, vals, term, np.int64((1 << bits) - 1), np.int64(cont_root), np.int32(self.unk_id),
                      np.int64(self.max_chars))  # fmt: skip

    def encode(self, lines: list[str], threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flat ids int32, per-line counts int64, indices of the lines left for `tokenizers`).

        Left lines count 0 tokens here. Raises UnicodeEncodeError for a str that is not valid Unicode."""
        buf, starts, ends = line_bytes(lines)
        n = len(lines)
        if n == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        chunk_lines, chunk_out = plan_chunks(starts, ends, threads, self.chars.tokens_per_byte)
        out = np.empty(int(chunk_out[-1]), dtype=np.int32)
        counts = np.zeros(n, dtype=np.int64)
        routed = np.zeros(n, dtype=np.uint8)
        chunk_end = np.zeros(len(chunk_lines) - 1, dtype=np.int64)
        _encode_chunks(buf, starts, ends, chunk_lines, chunk_out, self._tables, self._trie, out, counts, routed,
                       chunk_end, 4 * self.max_chars + 8)  # fmt: skip
        parts = [out[a:b] for a, b in zip(chunk_out[:-1], chunk_end, strict=True)]
        ids = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return ids, counts, np.flatnonzero(routed)
