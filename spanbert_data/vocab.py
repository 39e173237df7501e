"""Deterministic WordPiece vocabulary training (SPEC §1; the rule is in docs/FORMAT.md, "Vocabulary").

The trained `tokenizer.json` is a pure function of the corpus bytes and the options: the same bytes for
any number of workers or threads, any `PYTHONHASHSEED`, on any machine with the same library versions.

    units ─▶ [count_unit_words, one task per unit, any process] word counts ─▶ merge_counts (unit order)
          ─▶ train_from_counts: alphabet + merge loop (wordpiece_merges.py, Numba) ─▶ SubwordTokenizer

`train_vocabulary` runs it on a corpus's units through the build's executor (`spanbert-data vocab`, and
`build` without --tokenizer); `train_wordpiece` on a few texts in this process. With `model="bpe"` the same
driver trains a byte-level BPE instead (bpe_vocab.py: its words, its counts, the same merge loop).

Words are what the saved tokenizer will see at encode time: the text goes through its own BERT
normaliser and is split the way its BERT pre-tokenizer splits (whitespace dropped, every punctuation
character a word of its own). A unit's words are counted by the compiled counter of wordcount.py (the
compiled encoder's normaliser and pre-tokenizer, and a hash table, in Numba). `count_words` below is the
same count in plain Python around `tokenizers`' own normaliser, a regular expression whose character
classes are filled by asking that pre-tokenizer about each new character: the reference the compiled
counter is tested against, and what `train_wordpiece` uses on small texts.

A large corpus is sampled (`--vocab-sample-mb`): whole units in a fixed hash order until the budget is
reached, the last one only up to the rest of the budget (`sample_units`).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from tokenizers import normalizers, pre_tokenizers

from spanbert_data.bpe_vocab import count_unit_byte_words, train_bpe_from_counts
from spanbert_data.corpus import CorpusStats
from spanbert_data.executor import Executor, make_executor, prepare_task_process, run_tasks, task_prefix
from spanbert_data.inputs import Corpus
from spanbert_data.listing import list_corpus
from spanbert_data.progress import stderr
from spanbert_data.rng import mix64
from spanbert_data.tokenizer import MAX_WORD_CHARS, SPECIAL_TOKENS, SubwordTokenizer, bert_tokenizer
from spanbert_data.unit_reader import UnitLines
from spanbert_data.units import Source, Unit, plan_sources
from spanbert_data.wordcount import batches, count_lines
from spanbert_data.wordpiece_merges import merge_loop

VOCAB_MODELS = {"wordpiece": "cased WordPiece", "bpe": "byte-level BPE"}

MIN_FREQUENCY = 2  # a pair seen fewer times is never merged
_CHUNK_CHARS = 1 << 16  # text normalised and split at once: large enough to amortise the calls


class WordSplitter:
    """Words of text exactly as the cased BERT normaliser + BERT pre-tokenizer of the saved tokenizer make them."""

    def __init__(self) -> None:
        self._normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
        )
        self._pre = pre_tokenizers.BertPreTokenizer()
        self._kind: dict[str, int] = {}  # character -> 0 whitespace, 1 punctuation, 2 word character
        self._pattern: re.Pattern | None = None

    def _classify(self, chars: set[str]) -> None:
        for c in sorted(chars):
            pieces = [w for w, _ in self._pre.pre_tokenize_str(f"a{c}a")]
            self._kind[c] = 0 if pieces == ["a", "a"] else 1 if pieces == ["a", c, "a"] else 2
        cls = {k: "".join(re.escape(c) for c in sorted(c for c, v in self._kind.items() if v == k)) for k in (0, 1)}
        punct = f"[{cls[1]}]|" if cls[1] else ""
        self._pattern = re.compile(f"{punct}[^{cls[0]}{cls[1]}]+" if cls[0] or cls[1] else r"[\s\S]+")

    def words(self, text: str) -> list[str]:
        """The pre-tokenized words of text (lines may be joined with "\\n": it is whitespace)."""
        text = self._normalizer.normalize_str(text)
        new = set(text).difference(self._kind)
        if new or self._pattern is None:
            self._classify(new)
        return self._pattern.findall(text)


def count_words(lines: Iterable[str], splitter: WordSplitter | None = None) -> Counter:
    """Word -> count over lines, normalised and split in chunks of about 64 K characters."""
    splitter = splitter or WordSplitter()
    counts: Counter = Counter()
    for chunk in batches(lines, _CHUNK_CHARS):
        counts.update(splitter.words("\n".join(chunk)))
    return counts


@dataclass
class WordCounts:
    """The word counts of one unit, compact for pickling: words joined by "\\n" (never inside a word)."""

    unit: str  # the unit's key, "SSSSS-JJJJJ"
    words: str
    counts: np.ndarray  # int64, one per word
    documents: int
    lines: int
    chars: int
    warnings: list[str]  # the corpus reader's first warnings (skipped files, bad lines)

    def items(self) -> Iterable[tuple[str, int]]:
        return zip(self.words.split("\n"), self.counts.tolist(), strict=True) if len(self.counts) else iter(())


def count_unit_words(corpus: Corpus, unit: Unit, char_budget: int | None = None) -> WordCounts:
    """Count the words of one unit (a task of its own: top-level and picklable, run in any process).

    With char_budget, only the unit's first documents are read, until their text holds char_budget
    characters (the document crossing the budget is counted whole)."""
    stats = CorpusStats()
    warnings: list[str] = []
    lines = UnitLines(corpus, unit, stats, warnings.append, char_budget)
    words, counts = count_lines(lines)  # compiled; the words and counts of count_words(lines)
    return WordCounts(unit.key, words, counts, stats.documents, stats.lines, lines.chars, warnings[:100])


def merge_counts(parts: Iterable) -> dict:
    """Sum the counts of several units, WordCounts or bpe_vocab.ByteWordCounts (pass them in unit order: the dict's
    order is then fixed too)."""
    total: dict[str, int] = {}
    get = total.get
    for part in parts:
        for word, n in part.items():
            total[word] = get(word, 0) + n
    return total


def _ranks(units: list[Unit]) -> dict[str, int]:
    """The order in which units enter a sample: SplitMix64's finaliser (rng.mix64) of each unit's (source, sub)
    key, salted and multiplied by the golden-ratio constant modulo 2**64."""
    keys = [((u.source << 24 | u.sub) + 0x564F434142) * 0x9E3779B97F4A7C15 & (1 << 64) - 1 for u in units]
    mixed = mix64(np.array(keys, dtype=np.uint64)) if keys else []
    return {u.key: int(z) for u, z in zip(units, mixed, strict=True)}


def sample_units(units: list[Unit], sample_bytes: int) -> list[tuple[Unit, int | None]]:
    """The units a vocabulary is counted on, in unit order, each with its character budget (None = whole).

    All units when they hold at most sample_bytes of text (or sample_bytes is 0). Otherwise units are
    taken in the order of `_ranks`, whole while their text bytes (`Unit.bytes`) fit in the budget; the
    first that does not fit is read only up to the remaining budget (in characters of text), and the
    sample ends."""
    def order(u: Unit) -> tuple[int, int]:
        return u.source, u.sub

    if sample_bytes <= 0 or sum(u.bytes for u in units) <= sample_bytes:
        return [(u, None) for u in sorted(units, key=order)]
    chosen: dict[str, int | None] = {}
    left = sample_bytes
    rank = _ranks(units)
    for u in sorted(units, key=lambda u: rank[u.key]):
        if u.bytes <= left:
            chosen[u.key] = None
            left -= u.bytes
        else:
            if left > 0:
                chosen[u.key] = left
            break
    return [(u, chosen[u.key]) for u in sorted(units, key=order) if u.key in chosen]


# ------------------------------------------------------------------------------------------- training
def train_from_counts(counts: dict[str, int], vocab_size: int = 28996, min_frequency: int = MIN_FREQUENCY,
                      ) -> SubwordTokenizer:  # fmt: skip
    """A cased BERT WordPiece tokenizer whose vocabulary is learnt from word counts (module docstring).

    At most vocab_size entries (fewer when the merges run out; more only when the specials and the
    alphabet alone exceed it). Words longer than MAX_WORD_CHARS are left out: they encode as [UNK]."""
    if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be an integer > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
    lengths = np.fromiter(map(len, counts), dtype=np.int64, count=len(counts))
    keep = lengths <= MAX_WORD_CHARS
    words = list(itertools.compress(counts, keep.tolist()))
    wcount = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))[keep]
    lengths = lengths[keep]
    wstart = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(lengths, out=wstart[1:])
    cps = np.frombuffer("".join(words).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    first = np.zeros(len(cps), dtype=bool)
    first[wstart[:-1][lengths > 0]] = True
    # ids: specials, every character (code-point order), then "##" + each non-initial character
    chars = np.unique(cps)
    cont = np.unique(cps[~first])
    base = len(SPECIAL_TOKENS)
    ids = np.zeros((2, int(chars[-1]) + 1 if len(chars) else 1), dtype=np.int32)  # code point -> id, plain/##
    ids[0, chars] = base + np.arange(len(chars), dtype=np.int32)
    ids[1, cont] = base + len(chars) + np.arange(len(cont), dtype=np.int32)
    sym = ids[(~first).astype(np.intp), cps]
    tokens = [*SPECIAL_TOKENS.values(), *map(chr, chars.tolist()), *("##" + chr(c) for c in cont.tolist())]
    spelled = [t.encode("utf-8", "surrogatepass") for t in tokens]
    tok_off = np.zeros(len(spelled) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in spelled], out=tok_off[1:])
    tok_bytes = np.frombuffer(b"".join(spelled), dtype=np.uint8).copy()
    tok_off, tok_bytes, n_tok, _ = merge_loop(sym, wstart, wcount, tok_off, tok_bytes,
                                              len(tokens), vocab_size, min_frequency)  # fmt: skip
    blob = tok_bytes.tobytes()
    vocab = {blob[tok_off[i] : tok_off[i + 1]].decode("utf-8", "surrogatepass"): i for i in range(n_tok)}
    assert len(vocab) == n_tok, "duplicate token in a trained vocabulary"
    return wordpiece_tokenizer(vocab)


def wordpiece_tokenizer(vocab: dict[str, int]) -> SubwordTokenizer:
    """The cased BERT `tokenizer.json` around a vocabulary (tokenizer.bert_tokenizer, not lower-cased)."""
    return SubwordTokenizer(bert_tokenizer(vocab, lowercase=False), "<trained WordPiece>")


def train_wordpiece(texts: Iterable[str], vocab_size: int = 28996, min_frequency: int = 2) -> SubwordTokenizer:
    """Train a cased BERT WordPiece vocabulary on texts in this process (SPEC §1).

    BERT normaliser without lower-casing (accents kept), BERT pre-tokenizer, `##` continuation prefix,
    the five specials at ids 0..4. Deterministic: the result depends on the texts and the arguments only
    (docs/FORMAT.md "Vocabulary"). A small corpus may yield fewer than vocab_size entries.
    """
    return train_from_counts(count_words(texts), vocab_size=vocab_size, min_frequency=min_frequency)


# ------------------------------------------------------------------------------------------- on a corpus
def train_vocabulary(corpus: Corpus, sources: list[Source], vocab_size: int, sample_bytes: int, executor: Executor,
                     log: Callable[[str], None] = stderr, model: str = "wordpiece",
                     ) -> tuple[SubwordTokenizer, dict]:  # fmt: skip
    """Train the cased WordPiece (or with model="bpe" the byte-level BPE) vocabulary of a corpus: the words of each
    sampled unit are counted as a task of its own (on the executor: processes or a Dask cluster), the counts summed
    in unit order, then merged in this process. Returns the tokenizer and what it was trained on (documents,
    lines, chars, words, the corpus reader's warnings)."""
    if model not in VOCAB_MODELS:
        raise ValueError(f"vocabulary model must be one of {', '.join(VOCAB_MODELS)}, got {model!r}")
    started = time.perf_counter()
    units = vocab_units(sources)
    plan = sample_units(units, sample_bytes)
    sampled = sum(u.bytes if budget is None else budget for u, budget in plan)
    log(f"training a {VOCAB_MODELS[model]} vocabulary of {vocab_size} on {len(plan)} of {len(units)} units "
        f"(about {sampled / 1e6:.1f} of {sum(u.bytes for u in units) / 1e6:.1f} MB) ...")  # fmt: skip
    parts: dict = {}
    prefix = task_prefix("\n".join(corpus.bases), "vocab" if model == "wordpiece" else f"vocab-{model}")
    run_tasks(executor, _vocab_task, ((f"{prefix}-{u.key}", (corpus, u, budget, model)) for u, budget in plan),
              lambda key, args, result: parts.__setitem__(args[1].key, result))  # fmt: skip
    ordered = [parts[u.key] for u, _ in plan]
    counts = merge_counts(ordered)
    tokenizer = (train_bpe_from_counts if model == "bpe" else train_from_counts)(counts, vocab_size)
    info = {key: sum(getattr(p, key) for p in ordered) for key in ("documents", "lines", "chars")}
    info["words"] = len(counts)
    info["warnings"] = [w for p in ordered for w in p.warnings]  # the build logs them in pass 1
    log(f"vocabulary: {tokenizer.vocab_size} entries from {info['words']} distinct words, {info['documents']} "
        f"documents, in {time.perf_counter() - started:.1f}s")  # fmt: skip
    return tokenizer, info


def corpus_vocabulary(entries, vocab_size: int, sample_bytes: int, unit_bytes: int, workers: int | None = None,
                      scheduler: str | None = None, log: Callable[[str], None] = stderr, model: str = "wordpiece",
                      storage_options: dict | None = None, split: str = "train", text_field: str = "text",
                      ) -> tuple[SubwordTokenizer, dict]:  # fmt: skip
    """`train_vocabulary` of a corpus (one or more --corpus values: paths, globs, URLs): the file listing, the unit
    plan and the executor as `build` makes them (workers None: one per usable core), so the result is the tokenizer
    `build` would train with the same options."""
    corpus, files = list_corpus(entries, storage_options, split, text_field, CorpusStats(),
                                warn=lambda m: log(f"warning: {m}"))  # fmt: skip
    sources = plan_sources(files, unit_bytes, text_field)
    with make_executor(workers, scheduler, log) as executor:
        return train_vocabulary(corpus, sources, vocab_size, sample_bytes, executor, log, model)


def vocab_units(sources: list[Source]) -> list[Unit]:
    """The units the vocabulary sample is drawn from: pass 1's units, except that a compressed file that only
    one reader can decompress ("stream") is one unit of its own, read from its start by one task."""
    units: list[Unit] = []
    for source in sources:
        if source.kind == "stream":
            units.append(Unit(source.index, 0, "files", source.files, source.text_bytes, root=source.root))
        else:
            units.extend(source.units())
    return units


def _vocab_task(corpus: Corpus, unit: Unit, char_budget: int | None, model: str = "wordpiece"):
    corpus.check_visible()
    prepare_task_process()
    if model == "bpe":
        return count_unit_byte_words(corpus, unit, char_budget)
    return count_unit_words(corpus, unit, char_budget)
