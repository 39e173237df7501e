"""The compiled word counter (spanbert_data.wordcount) against its naive twin, `vocab.count_words`.

`count_words` is the plain-Python count the vocabulary was trained on before issue 24: `tokenizers`' own
BERT normaliser and a pre-tokenizer-probed regular expression feeding a `collections.Counter`. The
compiled counter must give the same words, the same counts and the same (first-seen) order on real
text, on the test assets, on 60,000 generated strings dense with everything BERT's normaliser and
pre-tokenizer treat specially, and across batch boundaries and table growth; so the trained
`tokenizer.json` is the same file, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spanbert_data import wordcount
from spanbert_data.listing import list_corpus
from spanbert_data.units import plan_sources
from spanbert_data.vocab import count_unit_words, count_words, train_from_counts
from spanbert_data.wordcount import WordCounter, count_lines
from tests.data.test_tokenizer import TRICKY, real_lines
from tests.data.test_wordpiece import asset_lines, corpus_lines
from tests.data.wordpiece_strings import generate

REPO = Path(__file__).resolve().parents[2]
WIKI = REPO / "examples" / "wiki"


def compiled_counts(lines) -> list[tuple[str, int]]:
    words, counts = count_lines(lines)
    assert counts.dtype == np.int64 and len(counts) == (words.count("\n") + 1 if words else 0)
    return list(zip(words.split("\n"), counts.tolist(), strict=True)) if len(counts) else []


def twin_counts(lines) -> list[tuple[str, int]]:
    return list(count_words(lines).items())


@pytest.mark.parametrize("source", ["real", "assets", "wiki"])
def test_same_words_counts_and_order_as_the_twin_on_text(source):
    lines = {"real": real_lines, "assets": asset_lines, "wiki": lambda: corpus_lines(WIKI)}[source]()
    assert compiled_counts(lines) == twin_counts(lines)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_as_the_twin_on_generated_strings(seed):
    """Accents precomposed and decomposed, CJK, emoji, every whitespace and punctuation, controls, unassigned
    and private-use code points (their lines go to `tokenizers`, in place), words far beyond 100 characters."""
    vocab = sorted({w for line in real_lines() for w in line.split()})
    lines = generate(20_000, seed=seed, vocab=vocab)
    assert compiled_counts(lines) == twin_counts(lines)


def test_routed_lines_keep_their_place_and_undo_what_they_started():
    # U+2FFFD is unknown to Python's Unicode database: its lines go to tokenizers. The first routed line
    # introduces new words before the routed character; they must not stay in the table or the order.
    unknown = "\U0002fffd"
    lines = ["alpha beta", f"gamma delta{unknown} beta", "", f"{unknown}", "epsilon, gamma!", "a\u00a0b\u3000c 東京"]
    assert compiled_counts(lines) == twin_counts(lines)
    assert compiled_counts(lines)[:4] == [("alpha", 1), ("beta", 2), ("gamma", 2), (f"delta{unknown}", 1)]


def test_batches_and_table_growth(monkeypatch):
    """Tiny batches: the state (table, arena, counts) carries across hundreds of calls and many rehashes."""
    monkeypatch.setattr(wordcount, "BATCH_CHARS", 300)
    lines = corpus_lines(WIKI)[:3000] + TRICKY
    assert compiled_counts(lines) == twin_counts(lines)


def test_edge_cases():
    assert compiled_counts([]) == [] == compiled_counts(["", "   ", "\t\u3000"])
    long_word = "é" * 5000 + "x" * 70000  # one word longer than any buffer the table starts with
    lines = [long_word, "a " + long_word + " b", "one\ntwo", "\x00\x07", "[MASK]x"]
    assert compiled_counts(lines) == twin_counts(lines)
    counter = WordCounter()
    counter.add_lines(["b a b"])
    counter.add_lines(["a c"])
    assert counter.joined() == "b\na\nc" and counter.counts().tolist() == [2, 2, 1]


def test_a_unit_trains_the_same_vocabulary_file_as_the_twin_counts():
    """The build's counting task (count_unit_words) gives the counts of the twin, so the same tokenizer.json."""
    corpus, files = list_corpus([WIKI])
    units = [u for s in plan_sources(files, 1 << 30) for u in s.units()]
    part = count_unit_words(corpus, units[0])
    twin = count_words(line for line in corpus_lines(WIKI))
    assert list(part.items()) == list(twin.items()) and part.chars == sum(map(len, corpus_lines(WIKI)))
    assert train_from_counts(dict(part.items()), 3000).to_json() == train_from_counts(dict(twin), 3000).to_json()
