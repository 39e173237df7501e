"""Deterministic byte-level BPE training (spanbert_data/bpe_vocab.py; docs/FORMAT.md "Vocabulary"): the words are
the ByteLevel pre-tokenizer's, the merges its naive twin's, the bytes the same in any process, and the quality
that of `tokenizers`' BpeTrainer."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from bench.subword_tokenizers import sample_documents
from spanbert_data.bpe_vocab import SPECIALS, count_byte_words, train_bpe_from_counts
from spanbert_data.build import build_dataset
from spanbert_data.bytelevel import bytes_to_unicode, unicode_to_bytes
from spanbert_data.config import BuildConfig
from spanbert_data.tokenizer import SubwordTokenizer, load_tokenizer
from tests.data.test_vocab import corpus  # noqa: F401 (the fixture: 40 articles in 4 files, several units)
from tests.data.wordpiece_strings import generate
from tests.naive_vocab import naive_bpe

CLI = [str(Path(sys.executable).parent / "spanbert-data")]


def counts_of(lines) -> dict[bytes, int]:
    data, off, counts = count_byte_words(lines).result()
    return {data[off[k] : off[k + 1]]: int(counts[k]) for k in range(len(counts))}


def test_words_are_the_byte_level_pre_tokenizers():
    lines = [line for d in sample_documents(4) for line in d] + generate(3000, 3, ["the", "ing", "Ġa"])
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    to_byte = unicode_to_bytes()
    want = Counter(bytes(to_byte[c] for c in w) for line in lines for w, _ in pre.pre_tokenize_str(line))
    got = counts_of(lines)
    assert got == dict(want) and list(got) == list(dict.fromkeys(want))  # same counts, in the order first seen


def test_merges_equal_their_naive_twin():
    rng = random.Random(0)
    for _ in range(60):
        alphabet = rng.choice([b"ab", b"abc", b"aab", "xé東".encode()])
        counts: dict[bytes, int] = {}
        for _ in range(rng.randint(1, 25)):
            word = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
            counts[word] = counts.get(word, 0) + rng.randint(1, 5)
        size = 261 + rng.randint(1, 40)
        tok = train_bpe_from_counts(counts, size)
        vocab, merges = naive_bpe(counts, size)
        to_char = bytes_to_unicode()
        spell = ["".join(to_char[b] for b in t) for t in vocab]
        assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == [*SPECIALS, *spell], (counts, size)
        got = json.loads(tok.to_json())["model"]["merges"]
        assert [tuple(m) for m in got] == [tuple("".join(to_char[b] for b in x) for x in m) for m in merges]
        shuffled = dict(rng.sample(list(counts.items()), len(counts)))
        assert train_bpe_from_counts(shuffled, size).sha256 == tok.sha256


def test_a_trained_tokenizer_is_roberta_style_and_encodes_like_tokenizers():
    lines = [line for d in sample_documents(6) for line in d]
    tok = train_bpe_from_counts(counts_of(lines), 1200)
    assert tok.vocab_size == 1200 and tok.special_ids == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": 4}
    assert tok.words.kind == "byte-level" and tok.encoder == "hf"
    text = "Naïve café — 1999, don't 😀!"
    raw = Tokenizer.from_str(tok.to_json())
    assert raw.decode(raw.encode(text).ids) == text  # every byte is spelled: no unknown token
    assert raw.encode(text).tokens[0] == "<s>" and raw.encode(text).tokens[-1] == "</s>"


def test_quality_matches_the_tokenizers_bpe_trainer_on_held_out_text():
    """Tokens per held-out word within 2% of `tokenizers`' BpeTrainer at the same size (bench/vocab.py on more)."""
    docs = sample_documents(40)
    held = [line for i, d in enumerate(docs) if i % 10 == 0 for line in d]
    train = [line for i, d in enumerate(docs) if i % 10 for line in d]
    peer = Tokenizer(models.BPE())
    peer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    peer.decoder = decoders.ByteLevel()
    peer.train_from_iterator(train, trainers.BpeTrainer(vocab_size=4000, min_frequency=2, special_tokens=list(SPECIALS),
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))  # fmt: skip
    ours = train_bpe_from_counts(counts_of(train), 4000)
    words = sum(len(peer.pre_tokenizer.pre_tokenize_str(line)) for line in held)
    ours_tpw = ours.encode_lines(held)[0].size / words
    peer_tpw = SubwordTokenizer(peer).encode_lines(held)[0].size / words
    assert ours.vocab_size == peer.get_vocab_size() == 4000 and 1.05 < peer_tpw < 2.0
    assert abs(ours_tpw / peer_tpw - 1) < 0.02, (ours_tpw, peer_tpw)


# ------------------------------------------------------------------------------- determinism (bytes)
def run_vocab(corpus: Path, out: Path, workers: int, hashseed: str, threads: str) -> str:  # noqa: F811
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "RAYON_NUM_THREADS": threads}
    done = subprocess.run([*CLI, "vocab", "--model", "bpe", "--corpus", corpus, "--out", out, "--vocab-size", "3000",
                           "--workers", str(workers), "--unit-mb", "0.3"], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "training a byte-level BPE vocabulary of 3000" in done.stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_vocab_bpe_in_separate_processes_gives_identical_bytes(corpus, tmp_path):  # noqa: F811
    a = run_vocab(corpus, tmp_path / "a.json", 1, "1", "1")
    assert a == run_vocab(corpus, tmp_path / "b.json", 2, "4242", "2")
    tok = load_tokenizer(tmp_path / "a.json")
    assert tok.vocab_size == 3000 and tok.words.kind == "byte-level"
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "a.json"))
    line = "The Quick brown fox, naïve café — 1999."
    assert hf(line, add_special_tokens=False)["input_ids"] == tok.encode_lines([line])[0].tolist()
    # build --vocab-model bpe trains the same file
    build_dataset(BuildConfig(corpus=corpus, out=tmp_path / "ds", vocab_model="bpe", vocab_size=3000,
                              unit_bytes=300_000, max_seq_len=128), log=lambda _m: None)  # fmt: skip
    assert (tmp_path / "ds" / "tokenizer.json").read_bytes() == (tmp_path / "a.json").read_bytes()
