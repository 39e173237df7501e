"""Lines → the normalised words a BERT tokenizer hands to WordPiece, compiled (no vocabulary needed).

The first half of the compiled encoder (wordpiece.py) on its own: the BERT normaliser and
pre-tokenizer of a `tokenizers.Tokenizer`, exactly as `tokenizers` runs them, from UTF-8 bytes to the
UTF-8 bytes of each word. Meant for counting words (training a vocabulary) at the speed of the encoder.
Lines that the tables route (wordpiece_tables.ROUTE) are split by `tokenizers` itself and spliced in.
"""

from __future__ import annotations

import json

import numpy as np
import tokenizers
from numba import njit, prange

from spanbert_data.wordpiece import _item, _items, _next_code, _put_utf8, line_bytes, plan_chunks
from spanbert_data.wordpiece_tables import REMOVED, ROUTE, SPACE_CLASS, WORD, char_tables, pipeline_reason


@njit(cache=True)
def _split_range(buf, starts, ends, lo, hi, tables, out, pos, word_ends, wpos, counts, routed):
    """Words of lines lo..hi-1: their bytes into out[pos:], each word's end into word_ends[wpos:]."""
    ascii_codes, block_index, blocks, pool = tables
    for li in range(lo, hi):
        line_pos, line_wpos = pos, wpos
        start = pos  # of the current word
        i = starts[li]
        end = ends[li]
        route = False
        while i < end:
            cp, code, i = _next_code(buf, i, ascii_codes, block_index, blocks)
            if code >= 0:
                pos = _put_utf8(out, pos, code)
                continue
            if code == REMOVED:
                continue
            if code == ROUTE:
                route = True
                break
            p, n_items = _items(code, pool)  # SPACE, ISOLATE or a sequence: word characters, spaces, punctuation
            for k in range(n_items):
                cls, d = _item(code, cp, pool, p, k)
                if cls == WORD:
                    pos = _put_utf8(out, pos, d)
                    continue
                if pos > start:
                    word_ends[wpos] = pos
                    wpos += 1
                if cls != SPACE_CLASS:  # punctuation: a word of its own
                    pos = _put_utf8(out, pos, d)
                    word_ends[wpos] = pos
                    wpos += 1
                start = pos
        if route:
            pos, wpos = line_pos, line_wpos
            routed[li] = 1
            counts[li] = 0
            continue
        if pos > start:
            word_ends[wpos] = pos
            wpos += 1
        counts[li] = wpos - line_wpos
    return pos, wpos


@njit(cache=True, parallel=True)
def _split_chunks(buf, starts, ends, chunk_lines, chunk_words, tables, out, word_ends, counts, routed, chunk_end):
    for k in prange(len(chunk_lines) - 1):  # chunk k's bytes start at 4 x its first word slot
        b, w = _split_range(buf, starts, ends, chunk_lines[k], chunk_lines[k + 1], tables, out, 4 * chunk_words[k],
                            word_ends, chunk_words[k], counts, routed)  # fmt: skip
        chunk_end[k, 0] = b
        chunk_end[k, 1] = w


class WordSplitter:
    """The BERT normaliser + pre-tokenizer of a tokenizer, compiled; raises ValueError when it has others."""

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        spec = json.loads(tokenizer.to_str())
        reason = pipeline_reason(spec)
        if reason is not None:
            raise ValueError(f"cannot split words like this tokenizer: {reason}")
        self._tok = tokenizer
        self.chars = char_tables(tokenizer, spec)
        self._tables = (self.chars.ascii, self.chars.block_index, self.chars.blocks, self.chars.pool)

    def split(self, lines: list[str], threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(word bytes uint8, word offsets int64 of length n_words + 1, words per line int64): word k of the
        batch is bytes[offsets[k]:offsets[k + 1]], UTF-8, exactly a pre-token of `tokenizers`."""
        buf, starts, ends = line_bytes(lines)
        n = len(lines)
        if n == 0:
            return np.zeros(0, np.uint8), np.zeros(1, np.int64), np.zeros(0, np.int64)
        # words <= non-space normalised characters <= tokens_per_byte x input bytes; 4 bytes each at most
        chunk_lines, chunk_words = plan_chunks(starts, ends, threads, self.chars.tokens_per_byte)
        out = np.empty(4 * int(chunk_words[-1]), dtype=np.uint8)
        word_ends = np.empty(int(chunk_words[-1]), dtype=np.int64)
        counts = np.zeros(n, dtype=np.int64)
        routed = np.zeros(n, dtype=np.uint8)
        chunk_end = np.zeros((len(chunk_lines) - 1, 2), dtype=np.int64)
        _split_chunks(buf, starts, ends, chunk_lines, chunk_words, self._tables, out, word_ends, counts, routed,
                      chunk_end)  # fmt: skip
        parts, lengths = [], []
        for k, (b, w) in enumerate(chunk_end.tolist()):
            parts.append(out[4 * chunk_words[k] : b])
            lengths.append(np.diff(word_ends[chunk_words[k] : w], prepend=4 * chunk_words[k]))
        data = np.concatenate(parts)
        lens = np.concatenate(lengths)
        left = np.flatnonzero(routed)
        if len(left):  # tokenizers' own normaliser and pre-tokenizer for the routed lines
            data, lens, counts = self._splice(lines, left, data, lens, counts)
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        return data, offsets, counts

    def _splice(self, lines, left, data, lens, counts):
        norm, pre = self._tok.normalizer, self._tok.pre_tokenizer
        words = [[w.encode() for w, _ in pre.pre_tokenize_str(norm.normalize_str(lines[i]) if norm else lines[i])]
                 for i in left.tolist()]  # fmt: skip
        counts = counts.copy()
        counts[left] = [len(ws) for ws in words]
        flat = [w for ws in words for w in ws]
        from_hf = np.zeros(len(lines), dtype=bool)
        from_hf[left] = True
        from_hf = np.repeat(from_hf, counts)  # per word
        merged_lens = np.empty(len(from_hf), dtype=np.int64)
        merged_lens[~from_hf] = lens
        merged_lens[from_hf] = [len(w) for w in flat]
        byte_from_hf = np.repeat(from_hf, merged_lens)
        merged = np.empty(len(byte_from_hf), dtype=np.uint8)
        merged[~byte_from_hf] = data
        merged[byte_from_hf] = np.frombuffer(b"".join(flat), dtype=np.uint8)
        return merged, merged_lens, counts
