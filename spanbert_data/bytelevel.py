"""Byte-level BPE words (GPT-2, RoBERTa), compiled: the pre-tokenizer's pieces found in the raw UTF-8 bytes.

`tokenizers`' ByteLevel pre-tokenizer (use_regex=True) cuts a line into the matches of GPT-2's pattern

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

and each match is one *word* (its word id). `_mark_pieces` runs that pattern as a scan over the characters
of a line with the regex engine's own character classes, probed from the installed `tokenizers` (`classes`:
the engine of its `Regex` is the one ByteLevel uses), so no Python regex of another Unicode version decides.

Word starts then need no offsets from the encoder: a byte-level token stands for a fixed byte string, so a
token's byte offset in its line is the sum of the byte lengths of the tokens before it, and it starts a word
exactly when that offset is where a piece starts (`token_word_starts`). A line whose token bytes do not add
up to the line (an unknown token, say) is reported so that its word ids come from `tokenizers` itself.

`split_words` hands the same pieces to the byte-level BPE trainer (bpe_vocab.py) as words to count.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile

import numpy as np
import tokenizers
from numba import njit, prange
from tokenizers import Regex, pre_tokenizers

from spanbert_data.wordpiece import line_bytes, plan_chunks
from spanbert_data.wordpiece_tables import N_CODEPOINTS, _cache_dir

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3  # the pattern's classes: [^\s\p{L}\p{N}], \p{L}, \p{N}, \s
# The pre-tokenizer the scan reproduces, as `tokenizers` serialises it (ByteLevel with use_regex, or a Split
# of this exact pattern, Isolated, before a ByteLevel without its regex).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_APOSTROPHE, _SPACE = 39, 32


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters (ByteLevel's alphabet): printable
    Latin-1 bytes map to themselves, the others to U+0100 onwards in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in keep)
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + k) for k, b in enumerate(extra)})
    return dict(sorted(table.items()))


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


@functools.cache
def classes() -> np.ndarray:
    """uint8[0x110000]: the class of every code point in the regex engine of the installed `tokenizers` (three
    Split probes over all code points, ~2 s; cached per process and on disk, keyed by the tokenizers version)."""
    key = hashlib.sha256(f"bytelevel-classes-v1-{tokenizers.__version__}".encode()).hexdigest()[:24]
    path = _cache_dir() / f"bytelevel-classes-{key}.npy"
    try:
        table = np.load(path, allow_pickle=False)
        if table.shape == (N_CODEPOINTS,) and table.dtype == np.uint8 and table.max() <= SPACE:
            return table
    except (OSError, ValueError):
        pass
    table = _probe()
    try:  # best effort, atomic: an unwritable cache only costs the probe again
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, table, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        pass
    return table


def _probe() -> np.ndarray:
    cps = np.arange(N_CODEPOINTS, dtype=np.uint32)
    cps[0xD800:0xE000] = ord("!")  # surrogates cannot occur in text; stand-ins keep one character per code point
    text = cps.tobytes().decode("utf-32-le")
    table = np.zeros(N_CODEPOINTS, dtype=np.uint8)
    for cls, pattern in ((LETTER, r"\p{L}"), (NUMBER, r"\p{N}"), (SPACE, r"\s")):
        split = pre_tokenizers.Split(Regex(pattern), "removed")  # what is left out of every piece matched
        covered = np.zeros(N_CODEPOINTS + 1, dtype=np.int32)
        step = 1 << 16
        for lo in range(0, N_CODEPOINTS, step):
            for _piece, (a, b) in split.pre_tokenize_str(text[lo : lo + step]):
                covered[lo + a] += 1
                covered[lo + b] -= 1
        table[np.cumsum(covered)[:-1] == 0] = cls
    table[0xD800:0xE000] = OTHER
    return table


# ------------------------------------------------------------------------------------------------- the scan
@njit(cache=True)
def _chars(buf, lo, hi, prefix_space, table, cp, cls, at):
    """Decode line buf[lo:hi] (valid UTF-8) into code points, classes and byte offsets (a virtual leading space
    first with prefix_space, at offset 0: the line's own bytes then start at 1). Returns the character count."""
    n = 0
    shift = 0
    if prefix_space:
        cp[0], cls[0], at[0] = _SPACE, SPACE, 0
        n = 1
        shift = 1
    i = lo
    while i < hi:
        b = buf[i]
        if b < 0x80:
            c, w = np.int64(b), 1
        elif b < 0xE0:
            c, w = ((np.int64(b) & 0x1F) << 6) | (buf[i + 1] & 0x3F), 2
        elif b < 0xF0:
            c, w = ((np.int64(b) & 0x0F) << 12) | ((np.int64(buf[i + 1]) & 0x3F) << 6) | (buf[i + 2] & 0x3F), 3
        else:
            c = ((np.int64(b) & 0x07) << 18) | ((np.int64(buf[i + 1]) & 0x3F) << 12)
            c |= ((np.int64(buf[i + 2]) & 0x3F) << 6) | (buf[i + 3] & 0x3F)
            w = 4
        cp[n], cls[n], at[n] = c, table[c], i - lo + shift
        n += 1
        i += w
    at[n] = hi - lo + shift
    return n


@njit(cache=True)
def _mark_pieces(n, cp, cls, at, starts):
    """starts[at[k]] = True for every character k where a match of GPT2_PATTERN begins (leftmost-first, like the
    regex engine: the alternatives in order, each greedy)."""
    k = 0
    while k < n:
        starts[at[k]] = True
        if cp[k] == _APOSTROPHE and k + 1 < n:  # 's 't 're 've 'm 'll 'd (lower case only)
            c1 = cp[k + 1]
            if c1 == 115 or c1 == 116 or c1 == 109 or c1 == 100:
                k += 2
                continue
            if k + 2 < n:
                c2 = cp[k + 2]
                if (c1 == 114 and c2 == 101) or (c1 == 118 and c2 == 101) or (c1 == 108 and c2 == 108):
                    k += 3
                    continue
        j = k
        if cp[k] == _SPACE and k + 1 < n and cls[k + 1] != SPACE:
            j = k + 1  # " ?" then a run of the next character's class
        if cls[j] != SPACE:
            c = cls[j]
            j += 1
            while j < n and cls[j] == c:
                j += 1
            k = j
            continue
        j = k + 1  # whitespace: \s+(?!\S) leaves the last one of a run before a non-space; \s+ takes a single one
        while j < n and cls[j] == SPACE:
            j += 1
        k = j if j == n or j - k == 1 else j - 1


@njit(cache=True)
def _line_word_starts(buf, lo, hi, prefix_space, table, ids, t0, t1, blen, out, cp, cls, at, starts):
    """Word-start flags of the tokens ids[t0:t1] of one line into out[t0:t1]; False when their bytes do not add
    up to the line's (the caller then asks `tokenizers`)."""
    n = _chars(buf, lo, hi, prefix_space, table, cp, cls, at)
    total = at[n]
    starts[: total + 1] = False
    _mark_pieces(n, cp, cls, at, starts)
    offset = 0
    for t in range(t0, t1):
        if offset >= total:
            return False
        out[t] = starts[offset]
        offset += blen[ids[t]]
    return offset == total


@njit(cache=True, parallel=True)
def _word_starts_chunks(buf, starts, ends, prefix_space, table, ids, tok_off, blen, chunk_lines, out, ok):
    for k in prange(len(chunk_lines) - 1):
        lo, hi = chunk_lines[k], chunk_lines[k + 1]
        longest = 1
        for li in range(lo, hi):
            longest = max(longest, ends[li] - starts[li] + 2)
        cp = np.empty(longest, np.int64)
        cls = np.empty(longest, np.uint8)
        at = np.empty(longest + 1, np.int64)
        marks = np.zeros(longest + 1, np.bool_)
        for li in range(lo, hi):
            pre = prefix_space and ends[li] > starts[li] and buf[starts[li]] != _SPACE  # as tokenizers: not before ""
            ok[li] = _line_word_starts(buf, starts[li], ends[li], pre, table, ids, tok_off[li], tok_off[li + 1],
                                       blen, out, cp, cls, at, marks)  # fmt: skip


def token_byte_lengths(vocab: dict[str, int], size: int) -> np.ndarray:
    """int64[size]: the bytes each byte-level token stands for (its characters, each one byte); 0 for a token with
    a character outside ByteLevel's alphabet (an added token), which then never adds up (`token_word_starts`)."""
    alphabet = unicode_to_bytes()
    out = np.zeros(size, dtype=np.int64)
    for token, i in vocab.items():
        if i < size and all(c in alphabet for c in token):
            out[i] = len(token)
    return out


def token_word_starts(lines: list[str], ids: np.ndarray, lens: np.ndarray, blen: np.ndarray, prefix_space: bool,
                      threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(bool per token: does it start a word, indices of the lines whose token bytes do not add up).

    `ids`/`lens`: the flat token ids of `lines` and the tokens per line, as the encoder gave them; `blen`:
    token_byte_lengths; `prefix_space`: the pre-tokenizer's add_prefix_space."""
    out = np.zeros(len(ids), dtype=np.bool_)
    if len(lines) == 0:
        return out, np.zeros(0, np.int64)
    buf, starts, ends = line_bytes(lines)
    tok_off = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(lens, out=tok_off[1:])
    chunk_lines, _ = plan_chunks(starts, ends, threads, 1.0)
    ok = np.zeros(len(lines), dtype=np.bool_)
    _word_starts_chunks(buf, starts, ends, bool(prefix_space), classes(), np.ascontiguousarray(ids), tok_off, blen,
                        chunk_lines, out, ok)  # fmt: skip
    return out, np.flatnonzero(~ok)


# ------------------------------------------------------------------------------------------- words for training
@njit(cache=True)
def _split_lines(buf, starts, ends, table, piece_ends, counts):
    """The end byte (in buf) of every piece of every line, in order; per line the number of pieces."""
    longest = 1
    for li in range(len(starts)):
        longest = max(longest, ends[li] - starts[li] + 2)
    cp = np.empty(longest, np.int64)
    cls = np.empty(longest, np.uint8)
    at = np.empty(longest + 1, np.int64)
    marks = np.zeros(longest + 1, np.bool_)
    w = 0
    for li in range(len(starts)):
        lo, hi = starts[li], ends[li]
        n = _chars(buf, lo, hi, False, table, cp, cls, at)
        marks[: at[n] + 1] = False
        _mark_pieces(n, cp, cls, at, marks)
        first = w
        for k in range(1, n):
            if marks[at[k]]:
                piece_ends[w] = lo + at[k]
                w += 1
        if n > 0:
            piece_ends[w] = hi
            w += 1
        counts[li] = w - first
    return w


def split_words(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes of the lines joined by newlines, int64 [start, end) byte range of each pre-tokenizer piece,
    shape (n_pieces, 2)): the words of byte-level BPE training, in order (add_prefix_space off)."""
    buf, starts, ends = line_bytes(lines)
    piece_ends = np.empty(max(1, int((ends - starts).sum())), dtype=np.int64)
    counts = np.zeros(len(lines), dtype=np.int64)
    n = _split_lines(buf, starts, ends, classes(), piece_ends, counts)
    piece_ends = piece_ends[:n]
    # a piece starts where the previous one ended, or at its line's start
    piece_starts = np.empty(n, dtype=np.int64)
    piece_starts[1:] = piece_ends[:-1]
    firsts = np.cumsum(counts) - counts
    has = counts > 0
    piece_starts[firsts[has]] = starts[has]
    return buf, np.stack([piece_starts, piece_ends], axis=1)
