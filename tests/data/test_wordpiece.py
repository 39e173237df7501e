"""The compiled WordPiece encoder (spanbert_data.wordpiece): exactly the ids of `tokenizers`, always.

Differential tests: every line of the bundled corpus and of the test assets, and 100,000 generated
strings (tests/data/wordpiece_strings.py), with the bundled uncased BERT vocabulary and a cased one
trained on the corpus; any mismatch fails. Plus the kernels against naive twins, the routing of lines
to `tokenizers`, the encoder choice, and the build's bytes under --encoder fast and hf.
"""

from __future__ import annotations

import bz2
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, normalizers

from spanbert_data import wordpiece_tables
from spanbert_data.corpus import CorpusStats, read_documents
from spanbert_data.errors import TokenizerError
from spanbert_data.listing import list_corpus_files
from spanbert_data.tokenizer import SubwordTokenizer, load_tokenizer
from spanbert_data.vocab import train_wordpiece
from spanbert_data.wordpiece import FastWordPiece, UnsupportedTokenizer, _build_trie, _child, _wordpiece, line_bytes
from spanbert_data.wordpiece_tables import ROUTE, char_tables
from tests.data.wordpiece_strings import generate

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets"
UNCASED_JSON = ASSETS / "bert-uncased-tokenizer.json"
UNCASED_TXT = ASSETS / "bert-uncased-vocab.txt"


def corpus_lines(root: Path) -> list[str]:
    return [line for f in list_corpus_files(root) for d in read_documents(f, root, CorpusStats()) for line in d.lines]


def asset_lines() -> list[str]:
    """Every line of every text asset, raw, plus the documents our readers make of the corpus-format ones."""
    lines = corpus_lines(ASSETS)
    for path in sorted(ASSETS.rglob("*")):
        if path.is_file():
            data = bz2.decompress(path.read_bytes()) if path.suffix == ".bz2" else path.read_bytes()
            lines += data.decode("utf-8", errors="replace").split("\n")
    return lines


@pytest.fixture(scope="module")
def uncased() -> SubwordTokenizer:
    return load_tokenizer(UNCASED_JSON)


@pytest.fixture(scope="module")
def cased() -> SubwordTokenizer:
    """A cased vocabulary trained on the bundled corpus (the build's default tokenizer)."""
    return train_wordpiece(corpus_lines(REPO / "examples" / "wiki"), vocab_size=8000)


def compiled(tok: SubwordTokenizer) -> FastWordPiece:
    """The tokenizer's compiled encoder (built at its first encode)."""
    tok.encode_lines(["warm up"])
    return tok._fast


def hf_reference(tok: SubwordTokenizer, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encs = tok._tok.encode_batch_fast(lines, add_special_tokens=False)
    return np.array([i for e in encs for i in e.ids], np.int32), np.array([len(e.ids) for e in encs], np.int64)


def assert_same_ids(tok: SubwordTokenizer, lines: list[str]) -> None:
    assert tok.encoder == "fast"
    flat, lens = tok.encode_lines(lines)
    want_flat, want_lens = hf_reference(tok, lines)
    if np.array_equal(lens, want_lens) and np.array_equal(flat, want_flat):
        return
    ours = np.split(flat, np.cumsum(lens)[:-1])
    theirs = np.split(want_flat, np.cumsum(want_lens)[:-1])
    bad = [i for i in range(len(lines)) if not np.array_equal(ours[i], theirs[i])]
    i = bad[0]
    pytest.fail(f"{len(bad)} of {len(lines)} lines differ; first {lines[i]!r}: {ours[i].tolist()} != "
                f"{theirs[i].tolist()}")


@pytest.mark.parametrize("vocab", ["uncased", "cased"])
def test_every_corpus_and_asset_line(vocab, request):
    tok = request.getfixturevalue(vocab)
    lines = corpus_lines(REPO / "examples" / "wiki") + asset_lines()
    assert len(lines) > 20000
    assert_same_ids(tok, lines)


def test_vocab_txt_loads_the_same_encoder():
    tok = load_tokenizer(UNCASED_TXT)
    assert_same_ids(tok, asset_lines())


@pytest.mark.parametrize("vocab", ["uncased", "cased"])
def test_100k_generated_strings(vocab, request):
    tok = request.getfixturevalue(vocab)
    strings = generate(100_000, seed=13, vocab=sorted(tok._tok.get_vocab(with_added_tokens=False)))
    assert_same_ids(tok, strings)
    # Routing (to tokenizers) is for rare characters only: even these strings, dense with them (and 5%
    # of them random code points, mostly unassigned), mostly stay on the compiled path.
    _, _, left = compiled(tok).encode(strings)
    assert len(left) < 0.35 * len(strings)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("vocab", ["uncased", "cased"])
def test_generated_strings_many_seeds(vocab, seed, request):
    tok = request.getfixturevalue(vocab)
    assert_same_ids(tok, generate(200_000, seed=1000 + seed, vocab=sorted(tok._tok.get_vocab(with_added_tokens=False))))


@pytest.mark.parametrize("flags", [dict(lowercase=True, strip_accents=False), dict(lowercase=False, strip_accents=True),
                                   dict(clean_text=False, handle_chinese_chars=False, lowercase=True)])  # fmt: skip
def test_other_bert_normaliser_settings(uncased, flags):
    raw = Tokenizer.from_str(uncased.to_json())
    raw.normalizer = normalizers.BertNormalizer(**flags)
    tok = SubwordTokenizer(raw, "variant")
    assert_same_ids(tok, generate(10_000, seed=7, vocab=sorted(raw.get_vocab())) + asset_lines()[:3000])


# ------------------------------------------------------------------------------------------------ routing
def test_routed_lines_are_spliced_back_in_order(uncased):
    # U+1D165 is a spacing mark with a nonzero combining class that survives accent stripping: its
    # order against neighbouring marks is NFD's business, so its lines go to tokenizers.
    assert compiled(uncased).chars.code(0x1D165) == ROUTE
    unassigned = chr(0x2FFFD)  # unknown to Python's Unicode database: routed too
    lines = ["plain words", "x\U0001d165\u0301y stem", "", f"a{unassigned}b", "more plain words [MASK]"]
    _, counts, left = compiled(uncased).encode(lines)
    assert left.tolist() == [1, 3] and counts[[1, 3]].tolist() == [0, 0]
    assert_same_ids(uncased, lines)


def test_lines_holding_newlines_and_empty_batches(uncased):
    lines = ["one\ntwo", "", "three\r\nfour", "\n"]
    buf, starts, ends = line_bytes(lines)
    assert [bytes(buf[a:b]).decode() for a, b in zip(starts, ends, strict=True)] == lines
    assert_same_ids(uncased, lines)
    flat, lens = uncased.encode_lines([])
    assert flat.shape == lens.shape == (0,) and flat.dtype == np.int32 and lens.dtype == np.int64


def test_lone_surrogate_behaves_like_tokenizers(uncased):
    with pytest.raises(Exception) as ours:
        uncased.encode_lines(["ok", "bad \ud800 text"])
    with pytest.raises(Exception) as theirs:
        uncased._tok.encode_batch_fast(["ok", "bad \ud800 text"], add_special_tokens=False)
    assert type(ours.value) is type(theirs.value)


def test_thread_count_does_not_change_ids(uncased):
    lines = corpus_lines(REPO / "examples" / "wiki")
    one = compiled(uncased).encode(lines, threads=1)
    many = compiled(uncased).encode(lines, threads=2)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


def test_table_cache_is_written_and_checked(uncased, tmp_path, monkeypatch):
    monkeypatch.setenv("SPANBERT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(wordpiece_tables, "_MEMO", {})
    first = char_tables(uncased._tok, json.loads(uncased.to_json()))  # probes tokenizers, writes the cache
    [path] = tmp_path.glob("wordpiece-chars-*.npz")
    np.testing.assert_array_equal(wordpiece_tables._load(path).blocks, first.blocks)
    with np.load(path) as z:
        arrays = dict(z)
    arrays["blocks"][ord("a")] += 1  # a changed code under the old digest: not used
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    assert wordpiece_tables._load(path) is None
    path.write_bytes(b"not a cache file")
    assert wordpiece_tables._load(path) is None


# ------------------------------------------------------------------------------------------------ kernels
def naive_wordpiece(word: str, vocab: dict[str, int], unk: int, prefix: str = "##") -> list[int]:
    """tokenizers' models/wordpiece algorithm, literally: shrink the end one character at a time."""
    ids, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            sub = (prefix if start else "") + word[start:end]
            if sub in vocab:
                break
            end -= 1
        if end == start:
            return [unk]
        ids.append(vocab[sub])
        start = end
    return ids


def test_wordpiece_kernel_matches_naive_twin():
    vocab = {t: i for i, t in enumerate(["[UNK]", "un", "##aff", "##able", "a", "##b", "##bc", "é", "##é", "中",
                                         "##", "###", "abc", "##c", "b"])}  # fmt: skip
    enc = [t.encode() for t in vocab]
    tok_bytes = np.frombuffer(b"".join(enc), np.uint8)
    tok_off = np.concatenate([[0], np.cumsum([len(e) for e in enc])]).astype(np.int64)
    keys, vals, term = _build_trie(tok_bytes, tok_off, np.arange(len(vocab), dtype=np.int32), 10)
    cont = 0
    for byte in b"##":
        cont = _child(keys, vals, np.int64(1023), cont, byte)
    rng = np.random.default_rng(0)
    alphabet = ["a", "b", "c", "é", "中", "u", "n", "f", "l", "e", "#"]
    for _ in range(3000):
        word = "".join(rng.choice(alphabet, rng.integers(1, 9)))
        data = np.frombuffer(word.encode(), np.uint8)
        out = np.zeros(64, np.int32)
        end = _wordpiece(data, len(data), keys, vals, term, np.int64(1023), np.int64(cont), np.int32(0), out, 0)
        assert out[:end].tolist() == naive_wordpiece(word, vocab, 0), word


# ------------------------------------------------------------------------------------------------ choice
def test_unsupported_tokenizers_fall_back_or_refuse(uncased, tmp_path):
    spec = json.loads(uncased.to_json())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    tok = load_tokenizer(path)
    assert tok.encoder == "hf" and "Sequence" in tok.encoder_note and "\n" not in tok.encoder_note
    with pytest.raises(TokenizerError, match=r"tokenizer.json.*Sequence.*--encoder"):
        load_tokenizer(path, encoder="fast")
    with pytest.raises(UnsupportedTokenizer, match="Sequence"):
        FastWordPiece(Tokenizer.from_file(str(path)))
    assert load_tokenizer(UNCASED_JSON, encoder="hf").encoder == "hf"
    with pytest.raises(ValueError, match="encoder"):
        load_tokenizer(UNCASED_JSON, encoder="turbo")


def test_build_bytes_do_not_depend_on_the_encoder(tmp_path):
    """The default build (trains its vocabulary, --encoder auto) against --encoder hf with that vocabulary
    (the tokenizers trainer is not deterministic, so the second build is handed the first one's)."""
    from tests.data.test_build import small_corpus, tree_bytes

    corpus = small_corpus(tmp_path, copies=1)
    base = [sys.executable, "-m", "spanbert_data.cli", "build", "--corpus", str(corpus), "--unit-mb", "1",
            "--vocab-size", "3000"]  # fmt: skip
    given = ["--encoder", "hf", "--tokenizer", str(tmp_path / "auto" / "tokenizer.json")]
    for out, extra in (("auto", []), ("hf", given)):
        cmd = [*base, "--out", str(tmp_path / out), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        assert ("compiled WordPiece" in res.stderr) == (out == "auto")
    assert tree_bytes(tmp_path / "auto") == tree_bytes(tmp_path / "hf")
