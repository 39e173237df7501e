"""Slow, obvious pure-Python twins of spanbert_data.rng and spanbert_data.masking (SPEC §2, §3).

Written from SPEC §2–§3, one block at a time, with sets, lists and sorting instead of scratch arrays.
They consume the SAME counter-based stream in the same order as the Numba kernels, so their output
must be identical, not merely similar.
"""

import bisect
import math
from fractions import Fraction

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class Stream:
    """SplitMix64 stream of one block: state starts at the (seed, epoch, block) key, += GAMMA per draw."""

    def __init__(self, seed: int, epoch: int, block: int):
        h = mix64(seed + 0x243F6A8885A308D3)
        h = mix64(h ^ ((epoch + 0x13198A2E03707345) & M64))
        self.state = mix64(h ^ ((block + 0xA4093822299F31D1) & M64))

    def uniform(self) -> float:
        self.state = (self.state + GAMMA) & M64
        return (mix64(self.state) >> 11) * 2.0**-53

    def below(self, n: int) -> int:
        """Uniform integer in [0, n)."""
        return min(int(self.uniform() * n), n - 1)


def budget(n: int, ratio: float) -> int:
    """SPEC §2: exactly ceil(ratio * n), in exact rational arithmetic."""
    return math.ceil(Fraction(str(ratio)) * n)


def _words(tokens, word_start):
    """[start, end) of every word; position 0 always starts one. word_start: one flag per token."""
    starts = [i for i in range(len(tokens)) if i == 0 or word_start[i]]
    return list(zip(starts, starts[1:] + [len(tokens)], strict=False))


def _draw_length(stream, p, max_words):
    probs = [p * (1 - p) ** (k - 1) for k in range(1, max_words + 1)]
    total = sum(probs)
    u, acc = stream.uniform(), 0.0
    for k, q in enumerate(probs, start=1):
        acc += q / total
        if u < acc:
            return k
    return max_words


def _select_span(tokens, word_start, cfg, stream, drawn):
    """SPEC §2 span loop, returning the masked positions and the [first, last] of every span."""
    n, target = len(tokens), budget(len(tokens), cfg.mask_ratio)
    words = _words(tokens, word_start)
    word_of = [w for w, (s, e) in enumerate(words) for _ in range(s, e)]
    masked, spans = set(), []
    while len(masked) < target:
        length = _draw_length(stream, cfg.geometric_p, cfg.max_span_words)
        anchor = stream.below(n)
        if anchor in masked:
            continue
        drawn.append(length)
        first = word_of[anchor]
        covered = []
        for s, e in words[first : first + length]:  # stops at the block end by itself
            for i in range(s, e):
                if len(masked) == target:
                    break
                masked.add(i)
                covered.append(i)
        spans.append((covered[0], covered[-1]))
    return masked, spans


def _select_subword(n, cfg, stream):
    order = list(range(n))
    for i in range(budget(n, cfg.mask_ratio)):
        j = i + stream.below(n - i)
        order[i], order[j] = order[j], order[i]
    return set(order[: budget(n, cfg.mask_ratio)])


def _select_whole_word(tokens, word_start, cfg, stream):
    target = budget(len(tokens), cfg.mask_ratio)
    words = _words(tokens, word_start)
    masked = set()
    for w in range(len(words)):
        j = w + stream.below(len(words) - w)
        words[w], words[j] = words[j], words[w]
        s, e = words[w]
        masked.update(range(s, min(e, s + target - len(masked))))
        if len(masked) == target:
            break
    return masked


def _merge(intervals):
    """Sort [s, e] intervals and merge those that overlap or touch (SPEC §2)."""
    merged = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def naive_mask_block(tokens, word_start, cdf, mask_id, cfg, seed, epoch, key):
    """Mask one block (a list of content ids). Returns a dict of plain lists."""
    n = len(tokens)
    stream = Stream(seed, epoch, key)
    drawn = []
    if cfg.scheme == "span":
        masked, spans = _select_span(tokens, word_start, cfg, stream, drawn)
        spans = _merge(spans)
    else:
        if cfg.scheme == "subword":
            masked = _select_subword(n, cfg, stream)
        else:
            masked = _select_whole_word(tokens, word_start, cfg, stream)
        spans = _merge([(i, i) for i in masked])  # merged spans are the maximal runs of masked positions
    # Decision units of the 80/10/10 choice: the merged span (span), the token (subword), or the
    # masked part of a word (whole-word); visited in position order, as the kernel does.
    if cfg.scheme == "span":
        units = [list(range(s, e + 1)) for s, e in spans]
    elif cfg.scheme == "subword":
        units = [[i] for i in sorted(masked)]
    else:
        units = [[i for i in range(s, e) if i in masked] for s, e in _words(tokens, word_start)]
        units = [u for u in units if u]
    ids, kind_of = list(tokens), {}
    for unit in units:
        u = stream.uniform()
        kind = 0 if u < cfg.mask_token_prob else (1 if u < cfg.mask_token_prob + cfg.random_token_prob else 2)
        for i in unit:
            kind_of[i] = kind
            if kind == 0:
                ids[i] = mask_id
            elif kind == 1:
                ids[i] = bisect.bisect_right(cdf, stream.uniform())
    mlm = sorted(masked)
    span_kind = []
    for s, e in spans:
        kinds = {kind_of[i] for i in range(s, e + 1)}
        span_kind.append(kinds.pop() if len(kinds) == 1 else 3)
    sbo = []  # SPEC §3: (position, left, right, k, label) for interior spans, first max_sbo_offset tokens
    for s, e in spans:
        if s > 0 and e < n - 1:
            for i in range(s, min(e, s + cfg.max_sbo_offset - 1) + 1):
                sbo.append((i, s - 1, e + 1, i - s, tokens[i]))
    return {
        "input_ids": ids,
        "mlm_positions": mlm,
        "mlm_labels": [tokens[i] for i in mlm],
        "mlm_kind": [kind_of[i] for i in mlm],
        "spans": [tuple(x) for x in spans],
        "span_kind": span_kind,
        "sbo": sbo,
        "drawn_words": drawn,
    }
