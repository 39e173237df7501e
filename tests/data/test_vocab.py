"""Deterministic vocabulary training (spanbert_data/vocab.py, wordpiece_merges.py; docs/FORMAT.md "Vocabulary").

The default path of a user's first command: no --tokenizer, so the build trains its vocabulary. Its bytes
must not depend on processes, workers, threads or hash seeds, and its quality must match the `tokenizers`
trainer it replaces."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from spanbert_data.build import build_dataset
from spanbert_data.config import BuildConfig
from spanbert_data.corpus import CorpusStats, read_documents
from spanbert_data.executor import InlineExecutor
from spanbert_data.listing import list_corpus
from spanbert_data.tokenizer import SPECIAL_TOKENS, SubwordTokenizer, bert_pipeline, load_tokenizer
from spanbert_data.units import Unit, plan_sources
from spanbert_data.vocab import (
    WordSplitter,
    count_unit_words,
    count_words,
    sample_units,
    train_from_counts,
    train_vocabulary,
)
from tests.data.test_build import tree_bytes
from tests.data.test_tokenizer import TRICKY, real_lines
from tests.naive_vocab import naive_vocab

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "wiki" / "enwiki-sample.jsonl"
CLI = [str(Path(sys.executable).parent / "spanbert-data")]


def tokens_of(tok: SubwordTokenizer) -> list[str]:
    return [tok.id_to_token(i) for i in range(tok.vocab_size)]


def sample_documents(n: int | None = None) -> list[list[str]]:
    docs = [d.lines for d in read_documents(SAMPLE, SAMPLE.parent, CorpusStats(), warn=lambda _m: None)]
    return docs[:n] if n else docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The first 40 articles of the Wikipedia sample (~1 MB) in 4 JSON Lines files: several units."""
    root = tmp_path_factory.mktemp("vocab") / "corpus"
    root.mkdir()
    lines = SAMPLE.read_bytes().splitlines(keepends=True)[:40]
    for i in range(4):
        (root / f"part-{i}.jsonl").write_bytes(b"".join(lines[i * 10 : (i + 1) * 10]))
    return root


# ------------------------------------------------------------------------------------ the merge loop
def test_merge_loop_equals_its_naive_twin_on_ties_and_repeats():
    """Tiny alphabets make ties, repeated pairs ("abab", "aaa") and one string made by two splits."""
    rng = random.Random(0)
    for _ in range(150):
        alphabet = rng.choice(["ab", "abc", "aab", "xyzé", "ab東"])
        counts: dict[str, int] = {}
        for _ in range(rng.randint(1, 30)):
            word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
            counts[word] = counts.get(word, 0) + rng.randint(1, 5)
        size = rng.randint(6, 60)
        assert tokens_of(train_from_counts(counts, size)) == naive_vocab(counts, size), (counts, size)


def test_merge_loop_equals_its_naive_twin_on_real_text():
    counts = dict(count_words(real_lines()))
    ours = tokens_of(train_from_counts(counts, 700))
    assert ours == naive_vocab(counts, 700)
    assert len(ours) == 700 and ours[:5] == list(SPECIAL_TOKENS.values())


def test_result_does_not_depend_on_word_order():
    counts = dict(count_words(real_lines()))
    shuffled = list(counts.items())
    random.Random(1).shuffle(shuffled)
    assert train_from_counts(dict(shuffled), 700).sha256 == train_from_counts(counts, 700).sha256


def test_long_words_and_empty_input():
    long = "x" * 101  # longer than max_input_chars_per_word: encodes as [UNK], so it teaches nothing
    tok = train_from_counts({long: 50, "ab": 3}, 100)
    assert tokens_of(tok) == [*SPECIAL_TOKENS.values(), "a", "b", "##b", "ab"]
    assert tokens_of(train_from_counts({}, 100)) == list(SPECIAL_TOKENS.values())


# ----------------------------------------------------------------------------------------- counting
def test_word_splitter_equals_the_saved_tokenizers_pre_tokenization():
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                            lowercase=False)  # fmt: skip
    pre = pre_tokenizers.BertPreTokenizer()
    lines = real_lines() + TRICKY + ["a\u2028b\x85c\x1cd\u00a0e", "¿Qué? ¡Sí! «quoted» x—y"]
    want = Counter(w for line in lines for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)))
    assert count_words(lines) == want
    # and it is the saved tokenizer's own pipeline
    spec = json.loads(train_from_counts(dict(want), 200).to_json())
    assert spec["normalizer"] == json.loads(normalizer.__getstate__())
    assert WordSplitter().words("Hello, world!") == ["Hello", ",", "world", "!"]


def test_sample_units_is_a_pure_function_of_the_units():
    units = [Unit(i, 0, "files", (f"f{i}",), b) for i, b in enumerate([100, 300, 50, 200, 120])]
    assert sample_units(units, 0) == sample_units(units, 770) == [(u, None) for u in units]
    plan = sample_units(units, 400)
    whole = sum(u.bytes for u, budget in plan if budget is None)
    partial = [budget for _, budget in plan if budget is not None]
    assert whole + sum(partial) == 400 and len(partial) <= 1
    assert [u.source for u, _ in plan] == sorted(u.source for u, _ in plan)  # counted in unit order
    assert sample_units(list(reversed(units)), 400) == plan


def test_a_unit_counted_with_a_budget_reads_its_first_documents(corpus):
    root, files = list_corpus([corpus])
    sources = plan_sources(files, 1 << 30)
    units = [u for s in sources for u in s.units()]
    whole = count_unit_words(root, units[0])
    part = count_unit_words(root, units[0], char_budget=100_000)
    assert whole.documents == 40 and 0 < part.documents < 40 and 100_000 <= part.chars < whole.chars
    whole_counts = dict(whole.items())
    assert all(whole_counts[w] >= n for w, n in part.items())
    # a sample smaller than the corpus: the one unit is read up to the budget
    _, info = train_vocabulary(root, sources, 3000, 200_000, InlineExecutor(), log=lambda _m: None)
    assert info["documents"] == count_unit_words(root, units[0], char_budget=200_000).documents < 40


# ------------------------------------------------------------------------------- determinism (bytes)
def run_vocab(corpus: Path, out: Path, workers: int, hashseed: str, threads: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "RAYON_NUM_THREADS": threads}
    done = subprocess.run([*CLI, "vocab", "--corpus", corpus, "--out", out, "--workers", str(workers),
                           "--unit-mb", "0.3"], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cli_vocab(corpus, tmp_path_factory) -> tuple[Path, str, str]:
    """`spanbert-data vocab` run twice, in processes with other hash seeds, Rayon threads and --workers."""
    tmp = tmp_path_factory.mktemp("cli-vocab")
    a = run_vocab(corpus, tmp / "a.json", 1, "1", "1")
    return tmp / "a.json", a, run_vocab(corpus, tmp / "b.json", 2, "4242", "2")


def test_vocab_in_separate_processes_gives_identical_bytes(cli_vocab):
    path, a, b = cli_vocab
    assert a == b
    tok = load_tokenizer(path)
    assert 5000 < tok.vocab_size <= 28996  # a small corpus may run out of pairs seen twice
    assert tok.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    # a standard tokenizer.json: transformers reads it unchanged and encodes as we do
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    line = "The Quick brown fox, naïve café — 1999."
    assert hf(line, add_special_tokens=False)["input_ids"] == tok.encode_lines([line])[0].tolist()


def test_build_without_tokenizer_is_identical_for_1_and_2_workers(corpus, cli_vocab, tmp_path):
    """The default path: the build trains the vocabulary itself, and the bytes do not depend on --workers."""
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        build_dataset(BuildConfig(corpus=corpus, out=out, workers=workers, unit_bytes=300_000), log=lambda _m: None)
        outs.append(tree_bytes(out))
    assert outs[0] == outs[1]
    # the file `spanbert-data vocab` writes for that corpus (the whole corpus: the unit size does not matter)
    assert outs[0]["tokenizer.json"] == cli_vocab[0].read_bytes()


# ------------------------------------------------------------------------------------------ quality
def test_quality_matches_the_tokenizers_trainer_on_held_out_text():
    """Tokens per held-out word within 2% of the `tokenizers` WordPiece trainer at the same size (and the
    same algorithm, so in practice far closer; bench/vocab.py measures it on a larger corpus too)."""
    docs = sample_documents()
    held = [line for i, d in enumerate(docs) if i % 10 == 0 for line in d]
    train = [line for i, d in enumerate(docs) if i % 10 for line in d]
    peer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    bert_pipeline(peer, lowercase=False)
    peer.train_from_iterator(train, trainers.WordPieceTrainer(
        vocab_size=8000, min_frequency=2, special_tokens=list(SPECIAL_TOKENS.values()),
        continuing_subword_prefix="##", show_progress=False))  # fmt: skip
    ours = train_from_counts(dict(count_words(train)), 8000)
    words = len(WordSplitter().words("\n".join(held)))
    ours_tpw = ours.encode_lines(held)[0].size / words
    peer_tpw = SubwordTokenizer(peer).encode_lines(held)[0].size / words
    assert ours.vocab_size == 8000 and 1.1 < peer_tpw < 2.0
    assert abs(ours_tpw / peer_tpw - 1) < 0.02, (ours_tpw, peer_tpw)


def test_two_builds_in_one_process_each_use_their_own_tokenizer(tmp_path):
    """workers=1 runs pass 1 in the caller's process, which keeps the tokenizer it loaded: a second build
    with another tokenizer must not reuse it (it did, and wrote ids of the first build's vocabulary)."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"".join(SAMPLE.read_bytes().splitlines(keepends=True)[:3]))
    uncased = REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"
    for name, tokenizer in (("given", uncased), ("trained", None)):
        manifest = build_dataset(BuildConfig(corpus=corpus, out=tmp_path / name, tokenizer=tokenizer, vocab_size=2000,
                                             workers=1), log=lambda _m: None)  # fmt: skip
        tok = load_tokenizer(tmp_path / name / "tokenizer.json")
        assert manifest["tokenizer"]["vocab_size"] == tok.vocab_size == len(manifest["unigram_counts"])
