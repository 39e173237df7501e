"""The merge loop of WordPiece and BPE vocabulary training, in Numba, with every tie broken explicitly
(docs/FORMAT.md).

WordPiece vocabularies are learnt like BPE with a `##` continuation prefix: every word starts as its
characters (the first plain, the others as `##c`), and the most frequent adjacent pair of symbols over
all words (weighted by word counts) is merged into one new symbol, until the vocabulary is full or the
best pair is rarer than `min_frequency`. The vocabulary is the set of symbols ever made. Byte-level BPE
(bpe_vocab.py) is the same loop over the bytes of words, with no prefix (`strip=0`).

Order, so that the result is a pure function of the word counts:
- ids: the specials (0..4), every character of the words in code-point order, the `##` form of every
  character seen after a word's first position in code-point order, then new tokens in the order they
  are made (a merge whose string is already a token adds nothing);
- the pair to merge: the highest count; among equal counts the merged string with the smaller UTF-8
  bytes; for one string made by two different splits, the shorter left part.

Speed: the pair counts are kept up to date incrementally. Each pair knows the words it occurs in (a
linked list of word ids; stale entries are skipped), so a merge visits only the words holding it, and
a binary heap with lazy deletion gives the best pair (an entry whose count is out of date is re-queued
with the current count when it surfaces).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_EMPTY = -1
_PAIR_MUL = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True)
def _grow(a, need):
    """A copy of a with room for at least `need` elements (capacity doubles)."""
    n = max(a.shape[0], 16)
    while n < need:
        n *= 2
    b = np.empty(n, dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


# ------------------------------------------------------------------------------------------ pair table
@njit(cache=True)
def _pair_slot(keys, x, y):
    """Slot of pair (x, y) in the open-addressing table `keys` (key = x << 32 | y): its own or the empty one."""
    key = (np.int64(x) << 32) | np.int64(y)
    mask = keys.shape[0] - 1
    h = np.int64((np.uint64(key) * _PAIR_MUL) >> np.uint64(33)) & mask
    while keys[h] != key and keys[h] != _EMPTY:
        h = (h + 1) & mask
    return h


@njit(cache=True)
def _rehash_pairs(keys, vals, cap):
    new_keys = np.full(cap, _EMPTY, dtype=np.int64)
    new_vals = np.empty(cap, dtype=np.int32)
    for i in range(keys.shape[0]):
        if keys[i] != _EMPTY:
            h = _pair_slot(new_keys, keys[i] >> 32, keys[i] & 0xFFFFFFFF)
            new_keys[h] = keys[i]
            new_vals[h] = vals[i]
    return new_keys, new_vals


# ----------------------------------------------------------------------------------------- token table
@njit(cache=True)
def _bytes_hash(buf, lo, hi):
    h = _FNV_OFFSET
    for k in range(lo, hi):
        h = (h ^ np.uint64(buf[k])) * _FNV_PRIME
    return h


@njit(cache=True)
def _token_slot(table, tok_off, tok_bytes, buf, lo, hi):
    """Slot of the token spelled buf[lo:hi] in `table` (token ids, -1 = empty): its own or the empty one."""
    return _hashed_slot(table, tok_off, tok_bytes, buf, lo, hi, _bytes_hash(buf, lo, hi))


@njit(cache=True)
def _hashed_slot(table, tok_off, tok_bytes, buf, lo, hi, fnv):
    """`_token_slot` with the FNV-1a hash of buf[lo:hi] already known (wordcount.py hashes as it writes)."""
    mask = table.shape[0] - 1
    h = np.int64(fnv >> np.uint64(1)) & mask
    n = hi - lo
    while table[h] != _EMPTY:
        t = table[h]
        s = tok_off[t]
        if tok_off[t + 1] - s == n:
            same = True
            for k in range(n):
                if tok_bytes[s + k] != buf[lo + k]:
                    same = False
                    break
            if same:
                return h
        h = (h + 1) & mask
    return h


# ------------------------------------------------------------------------------------------------ heap
@njit(cache=True)
def _merged_byte(a, b, k, la, tok_off, tok_bytes, strip):
    """Byte k of the string that merging tokens a and b makes: a's bytes, then b's without its first `strip` (the
    `##` of WordPiece)."""
    if k < la:
        return tok_bytes[tok_off[a] + k]
    return tok_bytes[tok_off[b] + strip + k - la]


@njit(cache=True)
def _before(c1, p1, c2, p2, pair_a, pair_b, tok_off, tok_bytes, strip):
    """True when queue entry (count c1, pair p1) is merged before (c2, p2) (the module docstring's order)."""
    if c1 != c2:
        return c1 > c2
    if p1 == p2:
        return False
    a1, b1, a2, b2 = pair_a[p1], pair_b[p1], pair_a[p2], pair_b[p2]
    la1 = tok_off[a1 + 1] - tok_off[a1]
    la2 = tok_off[a2 + 1] - tok_off[a2]
    n1 = la1 + tok_off[b1 + 1] - tok_off[b1] - strip
    n2 = la2 + tok_off[b2 + 1] - tok_off[b2] - strip
    for k in range(min(n1, n2)):
        x = _merged_byte(a1, b1, k, la1, tok_off, tok_bytes, strip)
        y = _merged_byte(a2, b2, k, la2, tok_off, tok_bytes, strip)
        if x != y:
            return x < y
    if n1 != n2:
        return n1 < n2
    return la1 < la2


@njit(cache=True)
def _push(hc, hp, n, c, p, pair_a, pair_b, tok_off, tok_bytes, strip):
    """Push (c, p) onto the heap of n entries held in hc/hp (room must exist); sift up."""
    i = n
    while i > 0:
        parent = (i - 1) >> 1
        if not _before(c, p, hc[parent], hp[parent], pair_a, pair_b, tok_off, tok_bytes, strip):
            break
        hc[i] = hc[parent]
        hp[i] = hp[parent]
        i = parent
    hc[i] = c
    hp[i] = p


@njit(cache=True)
def _sift_down(hc, hp, n, i, pair_a, pair_b, tok_off, tok_bytes, strip):
    c, p = hc[i], hp[i]
    while True:
        m = 2 * i + 1
        if m >= n:
            break
        if m + 1 < n and _before(hc[m + 1], hp[m + 1], hc[m], hp[m], pair_a, pair_b, tok_off, tok_bytes, strip):
            m += 1
        if not _before(hc[m], hp[m], c, p, pair_a, pair_b, tok_off, tok_bytes, strip):
            break
        hc[i] = hc[m]
        hp[i] = hp[m]
        i = m
    hc[i] = c
    hp[i] = p


# ------------------------------------------------------------------------------------------ merge loop
@njit(cache=True)
def merge_loop(sym, wstart, wcount, tok_off, tok_bytes, n_tok, vocab_size, min_frequency, strip=2):
    """Run the merges. sym: int32 symbols of all words back to back (word w is sym[wstart[w]:wstart[w+1]]),
    wcount: int64 count per word, tok_off/tok_bytes: UTF-8 spelling of the n_tok initial tokens (for BPE: their
    bytes), strip: the length of the prefix a right-hand token loses in a merge (2, WordPiece's `##`; 0 for BPE).

    Returns (tok_off, tok_bytes, n_tok, merges): the token table grown by the new tokens and the
    (left, right, result) id triple of every merge in order. `sym` is rewritten in place."""
    n_words = wcount.shape[0]
    wlen = (wstart[1:] - wstart[:-1]).astype(np.int64)
    # token lookup by spelling: ids, open addressing, load <= 1/2
    tcap = 64
    while tcap < 2 * max(vocab_size, n_tok):
        tcap *= 2
    table = np.full(tcap, _EMPTY, dtype=np.int32)
    for t in range(n_tok):
        table[_token_slot(table, tok_off, tok_bytes, tok_bytes, tok_off[t], tok_off[t + 1])] = t
    tok_off = _grow(tok_off, vocab_size + 2)
    # pairs: table key -> pair id; per pair: symbols, count, head of its word list, last word listed
    pcap = 1 << 14  # grows with the pairs; a small table stays in cache
    keys = np.full(pcap, _EMPTY, dtype=np.int64)
    vals = np.empty(pcap, dtype=np.int32)
    pair_a = np.empty(pcap // 2, dtype=np.int32)
    pair_b = np.empty(pcap // 2, dtype=np.int32)
    pcount = np.zeros(pcap // 2, dtype=np.int64)
    phead = np.full(pcap // 2, _EMPTY, dtype=np.int32)
    plast = np.full(pcap // 2, _EMPTY, dtype=np.int32)
    touched = np.zeros(pcap // 2, dtype=np.bool_)
    n_pairs = 0
    node_word = np.empty(max(16, sym.shape[0]), dtype=np.int32)
    node_next = np.empty(max(16, sym.shape[0]), dtype=np.int32)
    n_nodes = 0
    touched_list = np.empty(1024, dtype=np.int32)
    n_touched = 0
    merges = np.empty((max(16, vocab_size), 3), dtype=np.int32)
    n_merges = 0
    word_stamp = np.full(n_words, _EMPTY, dtype=np.int64)
    longest = np.max(wstart[1:] - wstart[:-1]) if n_words else 0
    inc_x = np.empty(2 * longest + 2, dtype=np.int32)  # scratch: the pairs one word gains
    inc_y = np.empty(2 * longest + 2, dtype=np.int32)
    hc = np.empty(16, dtype=np.int64)  # the queue: (count, pair) entries, a binary heap
    hp = np.empty(16, dtype=np.int32)
    n_heap = 0
    a = b = new = target = words_todo = np.int32(0)
    stamp = 0

    for phase in range(2):  # 0: count the pairs of every word; 1: merge
        if phase == 1:
            hc = np.empty(max(16, n_pairs), dtype=np.int64)
            hp = np.empty(max(16, n_pairs), dtype=np.int32)
            n_heap = 0
            for p in range(n_pairs):
                if pcount[p] > 0:
                    hc[n_heap] = pcount[p]
                    hp[n_heap] = p
                    n_heap += 1
            for i in range(n_heap // 2 - 1, -1, -1):
                _sift_down(hc, hp, n_heap, i, pair_a, pair_b, tok_off, tok_bytes, strip)
        while True:
            if phase == 0:
                if stamp == 1:  # one pass over all words
                    break
                words_todo = n_words
            else:
                if n_tok >= vocab_size or n_heap == 0:
                    break
                c, p = hc[0], hp[0]
                n_heap -= 1
                hc[0], hp[0] = hc[n_heap], hp[n_heap]
                _sift_down(hc, hp, n_heap, 0, pair_a, pair_b, tok_off, tok_bytes, strip)
                if c != pcount[p]:  # out of date: a decrease re-queues, an increase was queued when it happened
                    if 0 < pcount[p] < c:
                        _push(hc, hp, n_heap, pcount[p], p, pair_a, pair_b, tok_off, tok_bytes, strip)
                        n_heap += 1
                    continue
                if c < min_frequency:
                    break
                a, b = pair_a[p], pair_b[p]
                # the merged spelling, appended tentatively at the end of the token bytes
                la = tok_off[a + 1] - tok_off[a]
                lb = tok_off[b + 1] - tok_off[b] - strip
                lo = tok_off[n_tok]
                if lo + la + lb > tok_bytes.shape[0]:
                    tok_bytes = _grow(tok_bytes, lo + la + lb)
                tok_bytes[lo : lo + la] = tok_bytes[tok_off[a] : tok_off[a] + la]
                tok_bytes[lo + la : lo + la + lb] = tok_bytes[tok_off[b] + strip : tok_off[b] + strip + lb]
                slot = _token_slot(table, tok_off, tok_bytes, tok_bytes, lo, lo + la + lb)
                if table[slot] == _EMPTY:
                    new = n_tok
                    table[slot] = new
                    n_tok += 1
                    tok_off[n_tok] = lo + la + lb
                else:
                    new = table[slot]
                if n_merges == merges.shape[0]:
                    bigger = np.empty((2 * n_merges, 3), dtype=np.int32)
                    bigger[:n_merges] = merges
                    merges = bigger
                merges[n_merges, 0], merges[n_merges, 1], merges[n_merges, 2] = a, b, new
                n_merges += 1
                target = p
                words_todo = 0
            stamp += 1
            node = phead[target] if phase == 1 else _EMPTY
            k = 0
            while True:  # the words to (re)count: all of them in phase 0, those listed under the pair in phase 1
                if phase == 0:
                    if k == words_todo:
                        break
                    w = k
                    k += 1
                else:
                    if node == _EMPTY:
                        break
                    w = node_word[node]
                    node = node_next[node]
                    if word_stamp[w] == stamp:
                        continue
                word_stamp[w] = stamp
                s, n, cw = wstart[w], wlen[w], wcount[w]
                n_inc = 0  # the pairs whose count grows by cw, collected in inc_x/inc_y
                if phase == 0:
                    for i in range(s, s + n - 1):
                        inc_x[n_inc], inc_y[n_inc] = sym[i], sym[i + 1]
                        n_inc += 1
                else:  # merge left to right, non-overlapping, in place; only the merges' neighbours change
                    j = s
                    i = s
                    merged_at = -1  # output position of the previous merge in this word
                    while i < s + n:
                        if i + 1 < s + n and sym[i] == a and sym[i + 1] == b:
                            pcount[target] -= cw
                            if j > s and merged_at == j - 1:  # "a b a b": its (new, a) becomes (new, new)
                                inc_y[n_inc - 1] = new
                            elif j > s:
                                pcount[vals[_pair_slot(keys, sym[j - 1], a)]] -= cw
                                inc_x[n_inc], inc_y[n_inc] = sym[j - 1], new
                                n_inc += 1
                            merged_at = j
                            if i + 2 < s + n:
                                pcount[vals[_pair_slot(keys, b, sym[i + 2])]] -= cw
                                inc_x[n_inc], inc_y[n_inc] = new, sym[i + 2]
                                n_inc += 1
                            sym[j] = new
                            i += 2
                        else:
                            sym[j] = sym[i]
                            i += 1
                        j += 1
                    wlen[w] = j - s
                for t in range(n_inc):
                    x, y = inc_x[t], inc_y[t]
                    h = _pair_slot(keys, x, y)
                    if keys[h] == _EMPTY:
                        if 2 * (n_pairs + 1) > keys.shape[0]:
                            keys, vals = _rehash_pairs(keys, vals, 2 * keys.shape[0])
                            h = _pair_slot(keys, x, y)
                        if n_pairs == pair_a.shape[0]:
                            pair_a = _grow(pair_a, n_pairs + 1)
                            pair_b = _grow(pair_b, n_pairs + 1)
                            pcount = _grow(pcount, n_pairs + 1)
                            phead = _grow(phead, n_pairs + 1)
                            plast = _grow(plast, n_pairs + 1)
                            touched = _grow(touched, n_pairs + 1)
                        keys[h] = (np.int64(x) << 32) | np.int64(y)
                        vals[h] = n_pairs
                        pair_a[n_pairs], pair_b[n_pairs] = x, y
                        pcount[n_pairs], phead[n_pairs], plast[n_pairs] = 0, _EMPTY, _EMPTY
                        touched[n_pairs] = False
                        n_pairs += 1
                    q = vals[h]
                    pcount[q] += cw
                    if plast[q] != w:
                        if n_nodes == node_word.shape[0]:
                            node_word = _grow(node_word, n_nodes + 1)
                            node_next = _grow(node_next, n_nodes + 1)
                        node_word[n_nodes], node_next[n_nodes] = w, phead[q]
                        phead[q] = n_nodes
                        plast[q] = w
                        n_nodes += 1
                    if phase == 1 and not touched[q]:
                        touched[q] = True
                        if n_touched == touched_list.shape[0]:
                            touched_list = _grow(touched_list, n_touched + 1)
                        touched_list[n_touched] = q
                        n_touched += 1
            if phase == 1:  # queue the pairs whose count grew (those holding the new token)
                for t in range(n_touched):
                    q = touched_list[t]
                    touched[q] = False
                    if pcount[q] > 0:
                        if n_heap == hc.shape[0]:
                            hc = _grow(hc, n_heap + 1)
                            hp = _grow(hp, n_heap + 1)
                        _push(hc, hp, n_heap, pcount[q], q, pair_a, pair_b, tok_off, tok_bytes, strip)
                        n_heap += 1
                n_touched = 0
    return tok_off[: n_tok + 1].copy(), tok_bytes[: tok_off[n_tok]].copy(), n_tok, merges[:n_merges].copy()
