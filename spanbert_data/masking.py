"""SpanBERT span masking and Span Boundary Objective targets (SPEC §2, §3), in Numba.

Three schemes share one budget, exactly ``ceil(mask_ratio * n)`` tokens per block of n content tokens:

- ``span`` (SpanBERT, the default): geometric spans of whole words, anchored uniformly, merged
  into maximal runs; the 80/10/10 choice is made once per merged span.
- ``subword`` (BERT): tokens chosen uniformly without replacement; 80/10/10 per token.
- ``whole-word``: whole words in random order, the last one cut at the budget; 80/10/10 per word.

Whatever the scheme, a *merged span* is a maximal run of masked positions; SBO targets (SPEC §3)
come from merged spans that have a content token on both sides.

Randomness comes from ``spanbert_data.rng``: one counter-based stream per block keyed by (seed,
epoch, global block index). The draws of a block happen in this order, which the pure-Python twin
in ``tests/naive_masking.py`` follows draw for draw:

1. selection — ``span``: per attempt, u for the length ℓ (inverse cdf), then u for the anchor
   (``int(u * n)``); ``subword``: one u per Fisher–Yates step over positions; ``whole-word``: one u
   per Fisher–Yates step over words;
2. replacement — positions in ascending order: at the first position of each decision unit
   (merged span / token / word) one u picks [MASK] (u < p_mask), random (u < p_mask + p_random)
   or keep; each position of a ``random`` unit then draws its token by inverse cdf over the vocab.
"""

from dataclasses import dataclass

import numpy as np
from numba import njit

from spanbert_data.config import REPLACEMENTS, MaskingConfig
from spanbert_data.rng import next_uniform, stream_key

KIND_MASK, KIND_RANDOM, KIND_KEEP, KIND_MIXED = 0, 1, 2, 3
_SCHEME_CODE = {"span": 0, "subword": 1, "whole-word": 2}
# ceil(ratio * n) must be the arithmetic ceiling: in float64, 0.15 * 100 = 15.000000000000002.
_BUDGET_TOL = 1e-9


@dataclass
class MaskedBlocks:
    """Masked input and targets of many blocks. Positions are content-relative (0..n-1 in the block);
    ``*_offsets[b]:*_offsets[b+1]`` slices block b's entries."""

    input_ids: np.ndarray  # same dtype/shape as the flat `tokens` input, replacements applied
    mlm_offsets: np.ndarray  # int64[n_blocks+1]
    mlm_positions: np.ndarray  # int32, ascending within a block
    mlm_labels: np.ndarray  # original token ids (dtype of tokens)
    mlm_kind: np.ndarray  # uint8 per MLM target: 0 = [MASK], 1 = random, 2 = kept
    mlm_word_starts: np.ndarray  # bool per MLM target: its original token starts a word
    sbo_offsets: np.ndarray  # int64[n_blocks+1]
    sbo_positions: np.ndarray  # int32, ascending within a block (a subset of mlm_positions)
    sbo_left: np.ndarray  # int32 left outside boundary s-1 of the target's merged span
    sbo_right: np.ndarray  # int32 right outside boundary e+1
    sbo_k: np.ndarray  # uint8 offset i - s of the target within its span
    sbo_labels: np.ndarray  # original token ids
    span_offsets: np.ndarray  # int64[n_blocks+1] merged spans = maximal runs of masked positions
    span_start: np.ndarray  # int32 first position of each merged span
    span_end: np.ndarray  # int32 last position (inclusive)
    span_kind: np.ndarray  # uint8 0/1/2 as mlm_kind; 3 = mixed (subword/whole-word runs of several units)
    drawn_words: np.ndarray | None  # int32 ℓ of every accepted span draw (diagnostics=True, span scheme)


def span_length_probs(p: float, max_words: int) -> np.ndarray:
    """P(ℓ) ∝ p·(1-p)^(ℓ-1) renormalised over ℓ = 1..max_words (SPEC §2 table for p = 0.2, 10 words)."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"geometric p must be in (0, 1], got {p}")
    if max_words < 1:
        raise ValueError(f"max span words must be >= 1, got {max_words}")
    probs = p * (1.0 - p) ** np.arange(max_words, dtype=np.float64)
    return probs / probs.sum()


def _cdf(weights: np.ndarray) -> np.ndarray:
    """Cumulative distribution whose entries from the last positive weight on are exactly 1.0, so that
    a u in [0, 1) never lands past it and zero-weight entries are never chosen by a right-bisection."""
    cdf = np.cumsum(weights, dtype=np.float64)
    cdf /= cdf[-1]
    cdf[np.flatnonzero(weights)[-1] :] = 1.0
    return cdf


def replacement_cdf(unigram_counts: np.ndarray, is_special: np.ndarray, mode: str) -> np.ndarray:
    """float64 cdf over the vocab for the 10% random replacements (SPEC §2): proportional to the corpus
    unigram counts (``mode="unigram"``) or uniform (``"uniform"``), zero for every special token.

    ``is_special`` must flag [PAD] [UNK] [CLS] [SEP] [MASK] and any other added special token."""
    counts = np.asarray(unigram_counts)
    special = np.asarray(is_special)
    if mode not in REPLACEMENTS:
        raise ValueError(f"masking.replacement must be one of {REPLACEMENTS}, got {mode!r}")
    if counts.ndim != 1 or special.shape != counts.shape or special.dtype != np.bool_:
        raise ValueError(
            f"unigram_counts must be 1-D and is_special a bool array of the same shape, "
            f"got {counts.shape} and {special.shape} ({special.dtype})"
        )
    if counts.size and (not np.issubdtype(counts.dtype, np.number) or counts.min() < 0):
        raise ValueError("unigram_counts must be non-negative numbers")
    weights = (np.ones(counts.shape, np.float64) if mode == "uniform" else counts.astype(np.float64)) * ~special
    if not weights.any():
        raise ValueError(f"no non-special token has a positive {mode} weight: random replacement is impossible")
    return _cdf(weights)


def block_budgets(lengths: np.ndarray, mask_ratio: float) -> np.ndarray:
    """int64 masked-token count per block: the arithmetic ceil(mask_ratio * n) (SPEC §2)."""
    return np.ceil(np.asarray(lengths, np.float64) * mask_ratio - _BUDGET_TOL).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Numba kernels. One stream per block; `masked` and `perm` are per-call scratch of the largest block.


@njit(cache=True)
def _select_span(ws, n, budget, len_cdf, state, masked, drawn, nd, diagnostics):
    """SPEC §2 loop: draw ℓ and an anchor; skip a masked anchor; else mask ℓ whole words from the
    anchor's word start, stopping at the block end or the moment the budget is reached."""
    count = 0
    while count < budget:
        state, u = next_uniform(state)
        length = 1
        while length < len_cdf.shape[0] and u >= len_cdf[length - 1]:
            length += 1
        state, u = next_uniform(state)
        anchor = min(int(u * n), n - 1)
        if masked[anchor]:
            continue  # both draws discarded
        if diagnostics:
            drawn[nd] = length
            nd += 1
        i = anchor
        while i > 0 and not ws[i]:
            i -= 1
        words_left = length
        while True:
            if not masked[i]:
                masked[i] = True
                count += 1
                if count == budget:
                    break
            i += 1
            if i == n:
                break
            if ws[i]:
                words_left -= 1
                if words_left == 0:
                    break
    return state, nd


@njit(cache=True)
def _select_subword(n, budget, state, masked, perm):
    """BERT: `budget` distinct positions uniformly at random (partial Fisher–Yates)."""
    for i in range(n):
        perm[i] = i
    for i in range(budget):
        state, u = next_uniform(state)
        j = i + min(int(u * (n - i)), n - i - 1)
        perm[i], perm[j] = perm[j], perm[i]
        masked[perm[i]] = True
    return state


@njit(cache=True)
def _select_whole_word(ws, n, budget, state, masked, perm):
    """Whole words in uniformly random order (partial Fisher–Yates over word starts) until the
    budget; the last word is cut there, keeping its first tokens."""
    if budget == 0:  # an empty block
        return state
    perm[0] = 0
    n_words = 1
    for i in range(1, n):  # branch-free: "##" tokens are frequent and unpredictable
        perm[n_words] = i
        n_words += ws[i]
    count = 0
    for w in range(n_words):
        state, u = next_uniform(state)
        j = w + min(int(u * (n_words - w)), n_words - w - 1)
        perm[w], perm[j] = perm[j], perm[w]
        i = perm[w]
        while True:
            masked[i] = True
            count += 1
            i += 1
            if count == budget or i == n or ws[i]:
                break
        if count == budget:
            break
    return state


@njit(cache=True)
def _guide_table(cdf):
    """guide[k] = the inverse-cdf answer for u = k / len(cdf): where a draw in bucket k starts searching."""
    m = cdf.shape[0]
    guide = np.empty(m, np.int32)
    i = 0
    for k in range(m):
        while cdf[i] <= k / m:  # stops at the last entry, which is 1.0
            i += 1
        guide[k] = i
    return guide


@njit(cache=True)
def _draw_token(cdf, guide, u):
    """Inverse cdf: the first id whose cdf exceeds u (numpy searchsorted side='right'), started from
    the guide table (Chen & Asau's indexed search) so that a draw costs O(1) probes, not log2(vocab)."""
    i = guide[min(int(u * guide.shape[0]), guide.shape[0] - 1)]
    while i > 0 and cdf[i - 1] > u:  # only if float rounding put u just below its bucket
        i -= 1
    while cdf[i] <= u:
        i += 1
    return i


@njit(cache=True)
def _mask_kernel(tokens, offsets, budgets, block_keys, word_starts, len_cdf, cdf, guide, mask_id, scheme, p_mask,
                 p_random, max_sbo, seed, epoch, diagnostics, capacity, max_len):
    n_blocks = offsets.shape[0] - 1
    out_ids = tokens.copy()
    mlm_pos = np.empty(capacity, np.int32)
    mlm_lab = np.empty(capacity, tokens.dtype)
    mlm_kind = np.empty(capacity, np.uint8)
    sbo_off = np.zeros(n_blocks + 1, np.int64)
    sbo_pos = np.empty(capacity, np.int32)
    sbo_left = np.empty(capacity, np.int32)
    sbo_right = np.empty(capacity, np.int32)
    sbo_k = np.empty(capacity, np.uint8)
    sbo_lab = np.empty(capacity, tokens.dtype)
    span_off = np.zeros(n_blocks + 1, np.int64)
    span_s = np.empty(capacity, np.int32)
    span_e = np.empty(capacity, np.int32)
    span_kind = np.empty(capacity, np.uint8)
    drawn = np.empty(capacity if diagnostics else 0, np.int32)
    masked = np.zeros(max_len, np.bool_)
    perm = np.empty(max_len, np.int32)
    p_mask_or_random = p_mask + p_random
    nm = 0  # running counts of MLM targets, SBO targets, spans and accepted draws
    ns = 0
    nsp = 0
    nd = 0
    for b in range(n_blocks):
        lo = offsets[b]
        n = offsets[b + 1] - lo
        tok = tokens[lo : lo + n]
        ws = word_starts[lo : lo + n]
        out = out_ids[lo : lo + n]
        budget = budgets[b]
        state = stream_key(seed, epoch, np.uint64(block_keys[b]))
        masked[:n] = False
        if scheme == 0:
            state, nd = _select_span(ws, n, budget, len_cdf, state, masked, drawn, nd, diagnostics)
        elif scheme == 1:
            state = _select_subword(n, budget, state, masked, perm)
        else:
            state = _select_whole_word(ws, n, budget, state, masked, perm)

        # One ascending pass: 80/10/10 per decision unit, MLM targets, merged spans and their SBO targets.
        kind = 0
        run_start = 0
        run_kind = 0
        for i in range(n):
            if not masked[i]:
                continue
            starts_run = i == 0 or not masked[i - 1]
            if starts_run or scheme == 1 or (scheme == 2 and ws[i]):
                state, u = next_uniform(state)
                kind = KIND_MASK if u < p_mask else (KIND_RANDOM if u < p_mask_or_random else KIND_KEEP)
            if kind == KIND_MASK:
                out[i] = mask_id
            elif kind == KIND_RANDOM:
                state, u = next_uniform(state)
                out[i] = _draw_token(cdf, guide, u)
            mlm_pos[nm] = i
            mlm_lab[nm] = tok[i]
            mlm_kind[nm] = kind
            nm += 1
            if starts_run:
                run_start = i
                run_kind = kind
            elif kind != run_kind:
                run_kind = KIND_MIXED
            if i == n - 1 or not masked[i + 1]:  # the run [run_start, i] ends here
                span_s[nsp] = run_start
                span_e[nsp] = i
                span_kind[nsp] = run_kind
                nsp += 1
                if run_start > 0 and i < n - 1:  # SPEC §3: both outside neighbours are content
                    for t in range(run_start, min(i + 1, run_start + max_sbo)):
                        sbo_pos[ns] = t
                        sbo_left[ns] = run_start - 1
                        sbo_right[ns] = i + 1
                        sbo_k[ns] = t - run_start
                        sbo_lab[ns] = tok[t]
                        ns += 1
        sbo_off[b + 1] = ns
        span_off[b + 1] = nsp
    return (out_ids, mlm_pos, mlm_lab, mlm_kind, sbo_off, sbo_pos, sbo_left, sbo_right, sbo_k, sbo_lab,
            span_off, span_s, span_e, span_kind, drawn[:nd])


# ----------------------------------------------------------------------------------------------


def _check_inputs(tokens, offsets, block_keys, word_starts, cdf, mask_id, seed, epoch) -> None:
    if tokens.ndim != 1 or tokens.dtype not in (np.uint16, np.int32, np.int64):
        raise ValueError(f"tokens must be a flat uint16/int32/int64 array, got {tokens.dtype} shape {tokens.shape}")
    if offsets.ndim != 1 or offsets.dtype != np.int64 or offsets.size < 1:
        raise ValueError("offsets must be int64[n_blocks + 1]")
    if offsets[0] != 0 or offsets[-1] != tokens.size or np.any(np.diff(offsets) < 0):
        raise ValueError(f"offsets must start at 0, never decrease and end at len(tokens) = {tokens.size}")
    if block_keys.shape != (offsets.size - 1,) or block_keys.dtype != np.int64:
        raise ValueError(f"block_keys must be int64[{offsets.size - 1}] (one global block index per block)")
    if block_keys.size and block_keys.min() < 0:
        raise ValueError("block_keys must be non-negative global block indices")
    if word_starts.shape != tokens.shape or word_starts.dtype != np.bool_:
        raise ValueError(f"word_starts must be a bool array with one flag per token ({tokens.size}), got "
                         f"{word_starts.dtype} shape {word_starts.shape} (words.py)")
    vocab = cdf.size
    if cdf.ndim != 1 or cdf.dtype != np.float64 or vocab == 0:
        raise ValueError(f"cdf must be float64 over the vocab (see replacement_cdf), got {cdf.dtype} shape {cdf.shape}")
    if cdf[-1] != 1.0 or not cdf[0] >= 0.0 or not np.all(np.diff(cdf) >= 0):  # `not >=` also rejects NaN
        raise ValueError("cdf must be non-decreasing from >= 0 to exactly 1.0 (build it with replacement_cdf)")
    if not 0 <= mask_id < vocab:
        raise ValueError(f"mask_id {mask_id} is outside the vocab of {vocab} tokens")
    if cdf[mask_id] != (cdf[mask_id - 1] if mask_id > 0 else 0.0):
        raise ValueError("cdf gives [MASK] a positive probability: pass is_special to replacement_cdf")
    if tokens.size and (int(tokens.max()) >= vocab or int(tokens.min()) < 0):
        raise ValueError(f"tokens hold ids outside the vocab of {vocab} tokens (a cdf of another vocabulary?)")
    if not all(isinstance(v, int | np.integer) and 0 <= v < 2**64 for v in (seed, epoch)):
        raise ValueError(f"seed and epoch must be integers in [0, 2**64), got {seed} and {epoch}")


def mask_blocks(tokens: np.ndarray, offsets: np.ndarray, block_keys: np.ndarray, word_starts: np.ndarray,
                cdf: np.ndarray, mask_id: int, cfg: MaskingConfig, seed: int, epoch: int,
                diagnostics: bool = False) -> MaskedBlocks:
    """Mask many blocks at once (SPEC §2) and derive their SBO targets (SPEC §3).

    tokens: flat content ids (no [CLS]/[SEP]) of all blocks; offsets: int64[n_blocks+1] into tokens;
    block_keys: int64[n_blocks] global block indices (the RNG key, with seed and epoch);
    word_starts: bool per token, does it start a word (SPEC §2, words.py); cdf: float64[vocab] from
    replacement_cdf; mask_id: the MASK id.
    Block b's result depends only on its tokens and their word starts, (seed, epoch, block_keys[b]) and cfg.
    """
    cfg.validate()
    tokens, offsets, block_keys = np.asarray(tokens), np.asarray(offsets), np.asarray(block_keys)
    word_starts, cdf = np.asarray(word_starts), np.asarray(cdf)
    _check_inputs(tokens, offsets, block_keys, word_starts, cdf, mask_id, seed, epoch)
    lengths = np.diff(offsets)
    budgets = block_budgets(lengths, cfg.mask_ratio)
    mlm_offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(budgets)])
    len_cdf = _cdf(span_length_probs(cfg.geometric_p, cfg.max_span_words))
    diag = bool(diagnostics and cfg.scheme == "span")
    out = _mask_kernel(
        tokens, offsets, budgets, block_keys, word_starts, len_cdf, cdf, _guide_table(cdf), np.int64(mask_id),
        _SCHEME_CODE[cfg.scheme], cfg.mask_token_prob, cfg.random_token_prob, cfg.max_sbo_offset,
        np.uint64(seed), np.uint64(epoch), diag, int(mlm_offsets[-1]), int(lengths.max(initial=0)),
    )
    ids, mpos, mlab, mkind, soff, spos, sleft, sright, sk, slab, spoff, sps, spe, spk, drawn = out
    # SBO and span arrays were sized for the worst case (one per masked token): trim to what was written.
    ns, nsp = int(soff[-1]), int(spoff[-1])
    return MaskedBlocks(
        input_ids=ids, mlm_offsets=mlm_offsets, mlm_positions=mpos, mlm_labels=mlab, mlm_kind=mkind,
        mlm_word_starts=word_starts[np.repeat(offsets[:-1], budgets) + mpos],
        sbo_offsets=soff, sbo_positions=spos[:ns], sbo_left=sleft[:ns], sbo_right=sright[:ns], sbo_k=sk[:ns],
        sbo_labels=slab[:ns], span_offsets=spoff, span_start=sps[:nsp].copy(), span_end=spe[:nsp].copy(),
        span_kind=spk[:nsp].copy(), drawn_words=drawn if diag else None,
    )

