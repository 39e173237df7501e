"""Input blocks: pack the lines of each document greedily into blocks of at most 510 content tokens (SPEC §1).

Lines are consecutive in the flat token array of a tokenized batch, and a block is a run of whole
lines (or line pieces) of one document, so blocks are contiguous token ranges that tile the array:
their offsets are the whole output and no token is copied.

Rules (SPEC §1, "block" and "over-long line" rows):
- add the next line to the current block if the block stays within max_content tokens, else emit
  the block and start a new one with that line; a new document always starts a new block;
- a line of 0 tokens contributes nothing, and a document with no tokens yields no block;
- a line longer than max_content is cut into pieces of at most max_content tokens, each cut at the
  last word start that keeps the piece within max_content (inside the word when one word alone is
  longer); each piece then goes through the greedy rule like a line. Nothing is dropped (the
  method dropped such lines, and the pending block with them);
- the last block of a document is emitted however short.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _pack(line_lengths, line_docs, word_start, max_content, block_ends, block_docs):
    """Walk the lines once; return the number of blocks. Writes each block's end offset and document
    into block_ends/block_docs when they are large enough (pass empty arrays to only count)."""
    write = block_ends.shape[0] > 0
    n_blocks = 0
    pos = 0  # flat offset of the current line's first token
    block_len = 0  # tokens in the pending block; it starts at the previous block's end
    doc = line_docs[0] if line_docs.shape[0] > 0 else 0
    for i in range(line_lengths.shape[0]):
        if line_docs[i] != doc:  # blocks never cross documents
            if block_len > 0:
                if write:
                    block_ends[n_blocks] = pos
                    block_docs[n_blocks] = doc
                n_blocks += 1
                block_len = 0
            doc = line_docs[i]
        end = pos + line_lengths[i]
        p = pos
        while p < end:  # one iteration per piece; a line that fits is a single piece
            piece = end - p
            if piece > max_content:
                q = p + max_content  # first token of the next piece: the last word start within reach
                while q > p and not word_start[q]:
                    q -= 1
                piece = q - p if q > p else max_content  # one word longer than max_content: cut inside it
            if block_len + piece > max_content:
                if write:
                    block_ends[n_blocks] = p
                    block_docs[n_blocks] = doc
                n_blocks += 1
                block_len = 0
            block_len += piece
            p += piece
        pos = end
    if block_len > 0:
        if write:
            block_ends[n_blocks] = pos
            block_docs[n_blocks] = doc
        n_blocks += 1
    return n_blocks


def _int_vector(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {a.shape} dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def make_blocks(
    line_lengths: np.ndarray, line_docs: np.ndarray, token_word_start: np.ndarray, max_content: int = 510
) -> tuple[np.ndarray, np.ndarray]:
    """Blocks as contiguous ranges of the flat token array (lines are consecutive in it).

    line_lengths: int64[n_lines] tokens per line; line_docs: int64[n_lines] document number per line
    (non-decreasing; a change starts a new document); token_word_start: bool[n_tokens], the
    tokenizer's word_start table gathered at the flat ids.
    Returns (block_offsets int64[n_blocks+1] into the flat tokens, block_docs int64[n_blocks]);
    block b is tokens block_offsets[b]:block_offsets[b+1], block_offsets[0] == 0 and
    block_offsets[-1] == n_tokens.
    """
    line_lengths = _int_vector("line_lengths", line_lengths)
    line_docs = _int_vector("line_docs", line_docs)
    token_word_start = np.asarray(token_word_start)
    if line_docs.shape != line_lengths.shape:
        raise ValueError(f"line_docs has {line_docs.size} entries but line_lengths has {line_lengths.size}")
    if line_lengths.size and line_lengths.min() < 0:
        raise ValueError("line_lengths must be >= 0")
    if line_docs.size > 1 and np.any(line_docs[1:] < line_docs[:-1]):
        raise ValueError("line_docs must be non-decreasing (the lines of a document are consecutive)")
    if token_word_start.ndim != 1 or token_word_start.dtype != np.bool_:
        raise ValueError(f"token_word_start must be a 1-D bool array, got dtype {token_word_start.dtype}")
    n_tokens = int(line_lengths.sum())
    if token_word_start.size != n_tokens:
        raise ValueError(f"token_word_start has {token_word_start.size} entries but line_lengths sum to {n_tokens}")
    if isinstance(max_content, bool) or not isinstance(max_content, (int, np.integer)) or max_content < 1:
        raise ValueError(f"max_content must be an integer >= 1, got {max_content!r}")
    token_word_start = np.ascontiguousarray(token_word_start)

    empty = np.zeros(0, np.int64)
    n_blocks = _pack(line_lengths, line_docs, token_word_start, int(max_content), empty, empty)
    offsets = np.zeros(n_blocks + 1, np.int64)
    block_docs = np.zeros(n_blocks, np.int64)
    if n_blocks:
        _pack(line_lengths, line_docs, token_word_start, int(max_content), offsets[1:], block_docs)
    return offsets, block_docs
