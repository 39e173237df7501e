"""Generated strings for the differential tests of the compiled WordPiece encoder (issue 13).

Every string is a random mix of pieces drawn from pools that cover what BERT's normaliser and
pre-tokenizer treat specially: ASCII, accented Latin (precomposed and decomposed), CJK of every block
the normaliser isolates (and its neighbours), Hangul and kana, emoji (with ZWJ, skin tones, flags,
keycaps), combining marks of all three kinds, controls and format/zero-width characters, every Unicode
whitespace and space separator, every punctuation category and the ASCII symbols BERT counts as
punctuation, symbols it does not, case-mapping oddities, random code points from the whole range
(unassigned, private use, noncharacters), literal special-token text, vocabulary pieces glued into
words, and words around and far beyond the 100-character limit. Deterministic for a seed.
"""

from __future__ import annotations

import functools
import random
import sys
import unicodedata


@functools.cache
def _categories() -> list[str]:
    return [unicodedata.category(chr(c)) for c in range(sys.maxunicode + 1)]


def _by_category(prefixes: tuple[str, ...]) -> list[str]:
    return [chr(c) for c, cat in enumerate(_categories()) if cat.startswith(prefixes) and cat != "Cs"]


def _ranges(*spans: tuple[int, int]) -> list[str]:
    return [chr(c) for a, b in spans for c in range(a, b + 1)]


@functools.cache
def pools() -> dict[str, list[str]]:
    """Character (or short sequence) pools, by name."""
    ascii_printable = [chr(c) for c in range(0x20, 0x7F)]
    letters = [chr(c) for c in range(0x41, 0x5B)] + [chr(c) for c in range(0x61, 0x7B)]
    accented = _ranges((0xC0, 0x24F), (0x1E00, 0x1EFF))
    marks = _by_category(("Mn", "Mc", "Me"))
    p = {
        "ascii": ascii_printable,
        "letters": letters,
        "digits": [chr(c) for c in range(0x30, 0x3A)],
        "accented": accented,
        "decomposed": [unicodedata.normalize("NFD", ch) for ch in accented],
        "marks": marks,
        "cjk": _ranges((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B81F),
                       (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F), (0x2E80, 0x2FDF),
                       (0x3000, 0x303F), (0x30000, 0x3134F)),  # fmt: skip
        "hangul_kana": _ranges((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3040, 0x30FF), (0xFF61, 0xFF9F)),
        "emoji": _ranges((0x1F300, 0x1FAFF), (0x2600, 0x27BF), (0x1F1E6, 0x1F1FF))
        + ["👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "1️⃣", "🇩🇪", "❤️", "\u200d", "\ufe0f", "🏻"],
        "controls": _ranges((0x00, 0x1F), (0x7F, 0x9F)) + ["\ufffd", "\x00"],
        "format": _by_category(("Cf",)) + ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"],
        # White_Space (Python's str.isspace() minus the information separators) and all separators
        "spaces": _ranges((0x09, 0x0D), (0x1C, 0x20)) + ["\x85", "\xa0", "\u1680", "\u180e", "\u2028", "\u2029",
                                                          "\u202f", "\u205f", "\u3000"] + _by_category(("Z",)),
        "punct": _by_category(("P",)),
        "symbols": _by_category(("S",)),
        "ascii_symbols": [c for c in ascii_printable if unicodedata.category(c).startswith("S")],
        "case": list("İıßẞſǅǈǋǲΣσςΐΰ") + _ranges((0x10A0, 0x10FF), (0x1C90, 0x1CBF), (0x13A0, 0x13FF),
                                                 (0xAB70, 0xABBF), (0x2C00, 0x2C5F), (0xA7C0, 0xA7FF),
                                                 (0x1E900, 0x1E95F), (0x16E40, 0x16E9F), (0x10400, 0x1044F),
                                                 (0xFF21, 0xFF5A), (0x1D400, 0x1D4FF), (0x2160, 0x2188),
                                                 (0x24B6, 0x24E9), (0xFB00, 0xFB06)),  # fmt: skip
        "scripts": _ranges((0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F),
                           (0xE00, 0xE7F), (0x1000, 0x109F), (0x10000, 0x1007F), (0x1D165, 0x1D172)),  # fmt: skip
        "specials": ["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[mask]", "##", "##ing", "[", "]", "#"],
    }
    return p


def generate(n: int, seed: int, vocab: list[str]) -> list[str]:
    """n strings mixing the pools (and words glued from vocabulary pieces), deterministic for a seed.

    A run of k characters from a pool is a random slice of a shuffled copy of it (one random number per
    run, not per character: 100,000 strings take about a second)."""
    rng = random.Random(seed)
    texts = []
    for _name, pool in sorted(pools().items()):
        items = pool * (1 + 2000 // len(pool))
        rng.shuffle(items)
        text = "".join(items)
        texts.append(text + text[:400])  # a slice of up to 400 characters may start anywhere in text
    spaces, punct = pools()["spaces"], pools()["punct"]
    pieces = [v[2:] if v.startswith("##") else v for v in vocab if not (v.startswith("[") and v.endswith("]"))]
    rand, randrange, choice = rng.random, rng.randrange, rng.choice

    def run(k: int) -> str:
        text = choice(texts)
        start = randrange(len(text) - 400)
        return text[start : start + k]

    out = []
    for _ in range(n):
        kind = randrange(20)
        if kind == 0:  # any code point at all, surrogates excepted
            cps = [randrange(sys.maxunicode + 1) for _ in range(randrange(1, 12))]
            out.append("".join("\ufffd" if 0xD800 <= c < 0xE000 else chr(c) for c in cps))
        elif kind == 1:  # words near and beyond max_input_chars_per_word
            length = choice([99, 100, 101, 102, 150, 300])
            out.append(f"x {choice([run(length), 'é' * length, 'ab' * (length // 2), 'ab' * (length // 2) + 'c'])} y")
        else:
            parts = []
            for _ in range(randrange(1, 9)):
                if rand() < 0.35 and pieces:  # a word glued from vocabulary pieces, maybe re-cased
                    w = "".join(rng.choices(pieces, k=randrange(1, 4)))
                    r = rand()
                    parts.append(w.upper() if r < 0.2 else w.title() if r < 0.4 else w)
                else:
                    parts.append(run(randrange(1, 6)))
                sep = rand()
                parts.append(" " if sep < 0.5 else choice(spaces) if sep < 0.7 else choice(punct) if sep < 0.8 else "")
            out.append("".join(parts))
    return out
