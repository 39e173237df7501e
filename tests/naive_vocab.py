"""A slow, obvious pure-Python twin of spanbert_data.wordpiece_merges (the rule in docs/FORMAT.md, "Vocabulary").

It recounts every pair of every word before each merge, with strings instead of ids, so it shares no
data structure with the Numba loop (pair table, word lists, lazy heap); their vocabularies must be equal."""

from collections import Counter

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def naive_vocab(counts: dict[str, int], vocab_size: int, min_frequency: int = 2, max_chars: int = 100) -> list[str]:
    """The token list (id order) of the deterministic WordPiece training on word counts."""
    words = [w for w in counts if 0 < len(w) <= max_chars]
    chars = sorted({c for w in words for c in w})
    cont = sorted({c for w in words for c in w[1:]})
    vocab = SPECIALS + chars + ["##" + c for c in cont]
    known = set(vocab)
    seqs = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for seq, w in zip(seqs, words, strict=True):
            for x, y in zip(seq, seq[1:], strict=False):
                pairs[(x, y)] += counts[w]
        if not pairs:
            break
        # highest count; then the smaller merged string (UTF-8 bytes); then the shorter left part
        best = min(pairs, key=lambda p: (-pairs[p], (p[0] + p[1][2:]).encode(), len(p[0].encode())))
        if pairs[best] < min_frequency:
            break
        new = best[0] + best[1][2:]
        if new not in known:
            known.add(new)
            vocab.append(new)
        _merge_everywhere(seqs, best, new)
    return vocab


def naive_bpe(counts: dict[bytes, int], vocab_size: int, min_frequency: int = 2) -> tuple[list[bytes], list]:
    """(tokens as bytes in id order after the 5 specials, merges as byte pairs) of the deterministic byte-level BPE
    training (bpe_vocab.py): the same rule over bytes, with no continuation prefix."""
    vocab = [bytes([b]) for b in range(256)]
    known, merges = set(vocab), []
    seqs = [[bytes([b]) for b in w] for w in counts]
    weights = list(counts.values())
    while 5 + len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for seq, n in zip(seqs, weights, strict=True):
            for x, y in zip(seq, seq[1:], strict=False):
                pairs[(x, y)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p[0] + p[1], len(p[0])))
        if pairs[best] < min_frequency:
            break
        new = best[0] + best[1]
        merges.append(best)
        if new not in known:
            known.add(new)
            vocab.append(new)
        _merge_everywhere(seqs, best, new)
    return vocab, merges


def _merge_everywhere(seqs: list[list], pair: tuple, new) -> None:
    """Replace every occurrence of `pair` in each sequence, left to right without overlap, by `new` (in place)."""
    for k, seq in enumerate(seqs):
        out, i = [], 0
        while i < len(seq):
            if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
                out.append(new)
                i += 2
            else:
                out.append(seq[i])
                i += 1
        seqs[k] = out
