"""Words of every tokenizer family (spanbert_data/words.py, bytelevel.py; SPEC §2): the word starts pass 1
computes without `tokenizers`' offsets pass are exactly the word ids `tokenizers` reports, on real text and on
the adversarial strings of the compiled encoder's tests; and the special-token roles (specials.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, pre_tokenizers

from bench.subword_tokenizers import byte_level_bpe, sample_documents, sentencepiece_folder, unigram_metaspace
from spanbert_data import bytelevel
from spanbert_data.errors import TokenizerError
from spanbert_data.tokenizer import SubwordTokenizer, load_tokenizer
from spanbert_data.words import word_ids_starts
from tests.data.wordpiece_strings import generate

EDGES = ["", " ", "  ", "a  b", "a \t b", " \u00a0x", "x'sa", "x'S", "'ll've", " 's", "\t\tx", "x  ", "2020abc",
         "Hello, world's end.", "don't", "\u2581x \u2581\u2581y", "<mask> <s>", "emoji 👍🏽 x", "a\u3000b", "x\x85y"]


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return [line for d in sample_documents(12) for line in d]


@pytest.fixture(scope="module")
def bpe(lines) -> Tokenizer:
    return byte_level_bpe(lines)


@pytest.fixture(scope="module")
def unigram(lines) -> Tokenizer:
    return unigram_metaspace(lines)


def tricky(tok: Tokenizer, lines: list[str], n: int = 6000) -> list[str]:
    vocab = sorted(tok.get_vocab(), key=tok.get_vocab().get)[:2000]
    return lines[:1500] + generate(n, 7, vocab) + EDGES


def assert_word_ids(tok: SubwordTokenizer, texts: list[str], kind: str) -> None:
    """Our word starts equal `tokenizers`' word ids, line by line."""
    assert tok.words.kind == kind, tok.words.note
    ids, lens, starts = tok.encode_with_words(texts)
    encodings = tok._tok.encode_batch(texts, add_special_tokens=False)
    want_ids = np.array([i for e in encodings for i in e.ids], dtype=np.int32)
    np.testing.assert_array_equal(ids, tok._guard(want_ids))  # literal "<mask>" text a Unigram lattice made special
    want = word_ids_starts(encodings)
    bad = np.flatnonzero(starts != want)
    if bad.size:
        line = int(np.searchsorted(np.cumsum(lens), bad[0], side="right"))
        e = encodings[line]
        theirs = list(zip(e.tokens, e.word_ids, strict=True))
        pytest.fail(f"{texts[line]!r}: ours {starts[bad[0]]}, tokenizers {theirs}")
    assert want.sum() < len(want)  # words of several tokens exist: the test can fail


@pytest.mark.parametrize("prefix_space", [False, True])
def test_byte_level_word_starts_are_tokenizers_word_ids(bpe, lines, prefix_space):
    raw = Tokenizer.from_str(bpe.to_str())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    assert_word_ids(SubwordTokenizer(raw), tricky(bpe, lines), "byte-level")


def test_byte_level_as_split_then_byte_level(bpe, lines):
    """The same pre-tokenizer spelled as a Split of GPT-2's pattern before a ByteLevel without its regex."""
    raw = Tokenizer.from_str(bpe.to_str())
    spec = json.loads(raw.to_str())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": bytelevel.GPT2_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}  # fmt: skip
    assert_word_ids(SubwordTokenizer(Tokenizer.from_str(json.dumps(spec))), tricky(bpe, lines, 2000), "byte-level")


@pytest.mark.parametrize("scheme", ["always", "first", "never"])
def test_metaspace_word_starts_are_tokenizers_word_ids(unigram, lines, scheme):
    raw = Tokenizer.from_str(unigram.to_str())
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme)
    assert_word_ids(SubwordTokenizer(raw), tricky(unigram, lines), "metaspace")


def test_converted_sentencepiece_word_starts(lines, tmp_path):
    folder = sentencepiece_folder(lines[:1500], tmp_path / "spm", vocab_size=800)
    tok = load_tokenizer(folder)
    assert_word_ids(tok, tricky(tok._tok, lines, 3000), "metaspace")


def test_other_pre_tokenizers_use_tokenizers_word_ids(bpe, lines):
    """A pre-tokenizer the fast rules do not cover (here Whitespace before a BPE) takes tokenizers' own word ids,
    and says so in its note; a byte-level BPE with a normaliser too."""
    raw = Tokenizer.from_str(bpe.to_str())
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = SubwordTokenizer(raw)
    assert "Whitespace is not one the fast rules cover" in tok.words.note
    assert_word_ids(tok, lines[:300] + EDGES, "word-ids")
    spec = json.loads(bpe.to_str())
    spec["normalizer"] = {"type": "NFC"}
    assert "has a normalizer" in SubwordTokenizer(Tokenizer.from_str(json.dumps(spec))).words.note


def test_a_line_without_pre_tokenizer_is_one_word(unigram):
    raw = Tokenizer.from_str(unigram.to_str())
    raw.pre_tokenizer = None
    tok = SubwordTokenizer(raw)
    _, lens, starts = tok.encode_with_words(["two words", "", "and three words"])
    assert tok.words.kind == "line" and starts.sum() == 2 and lens[1] == 0


def test_byte_level_lines_that_do_not_add_up_go_to_tokenizers(bpe):
    """A token whose bytes are unknown (an added token) makes its line's bytes not add up: that line's word starts
    come from tokenizers, the others from the scan, and together they are still tokenizers' word ids."""
    texts = ["Hello, world's end.", "plain text here", "x"]
    vocab = bpe.get_vocab()
    lengths = bytelevel.token_byte_lengths(vocab, len(vocab))
    ids, lens = SubwordTokenizer(Tokenizer.from_str(bpe.to_str())).encode_lines(texts)
    lengths[ids[0]] = 0  # pretend the first token's bytes are unknown
    starts, left = bytelevel.token_word_starts(texts, ids, lens, lengths, False)
    assert left.tolist() == [0]
    want = word_ids_starts(bpe.encode_batch(texts[1:], add_special_tokens=False))
    np.testing.assert_array_equal(starts[lens[0] :], want)


def test_character_classes_are_the_regex_engines():
    table = bytelevel.classes()
    letter, number, space, other = bytelevel.LETTER, bytelevel.NUMBER, bytelevel.SPACE, bytelevel.OTHER
    want = [letter] * 4 + [number] * 2 + [space] * 4 + [other] * 4
    assert [table[ord(c)] for c in "aZé東٣½ \t\u3000\x85!'-😀"] == want
    assert table[0xD800] == other and table.shape == (0x110000,)
    to_char = bytelevel.bytes_to_unicode()
    assert set(to_char.values()) == set(pre_tokenizers.ByteLevel.alphabet()) and to_char[32] == "Ġ"
    text = "é\n a\x00€😀"
    plain = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)[0][0]
    assert plain == "".join(to_char[b] for b in text.encode())


# --------------------------------------------------------------------------------------------- special roles
def test_roles_of_each_family(bpe, unigram, lines, tmp_path):
    assert SubwordTokenizer(bpe).special_ids == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": 4}
    assert SubwordTokenizer(unigram).special_ids == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": 4}
    folder = sentencepiece_folder(lines[:800], tmp_path / "spm", vocab_size=600)
    tok = load_tokenizer(folder)
    # <pad> and <mask> are plain pieces of the converted vocabulary: the folder's config names them
    assert tok.special_ids == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": tok.vocab_size - 1}
    assert tok.is_special[[0, 1, 2, 3, tok.vocab_size - 1]].all()


def test_a_missing_mask_is_one_line_naming_it_and_the_fix(bpe, tmp_path):
    spec = json.loads(bpe.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<mask>"]
    del spec["model"]["vocab"]["<mask>"]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(spec["model"]["vocab"])}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(tmp_path / "tokenizer.json")
    message = str(err.value)
    assert "\n" not in message and "no MASK ([MASK] or <mask>) token" in message
    assert "add_special_tokens" in message and "mask_token" in message
    # a folder whose config names another token as the mask is fine
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mask_token": "Ġthe"}), encoding="utf-8")
    assert load_tokenizer(tmp_path).special_ids["mask"] == spec["model"]["vocab"]["Ġthe"]
