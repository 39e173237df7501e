"""spanbert_data.tokenizer: loading, training, encoding and the per-vocabulary tables (SPEC §1, §2)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models

import spanbert_data.tokenizer as tokmod
from spanbert_data.errors import TokenizerError
from spanbert_data.tokenizer import load_tokenizer, set_tokenizer_threads
from spanbert_data.vocab import train_wordpiece

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests" / "assets"
JSON_PATH = ASSETS / "bert-uncased-tokenizer.json"
VOCAB_PATH = ASSETS / "bert-uncased-vocab.txt"

# Awkward lines: accents, CJK, emoji, control characters, tabs, non-breaking spaces, literal specials.
TRICKY = [
    "",
    "   ",
    "Héllo Wörld, naïve café — “quotes” and ‘apostrophes’ (parentheses) [brackets] {braces}.",
    "東京は日本の首都です。 中文字符 한국어 Ελληνικά Русский עברית العربية",
    "emoji 🙂👍🏽 and math ∑∫√ ℝ ℕ and symbols © ® ™ € £ ¥",
    "control\x07chars\x1b and\ttabs and\u00a0nbsp and zero\u200bwidth",
    "[MASK] [CLS] [SEP] [PAD] [UNK] [mask] x[MASK]y",
    "supercalifragilisticexpialidocious " * 3 + "a" * 150,
    "ＦＵＬＬＷＩＤＴＨ text, İstanbul, straße, ǅ digraph",
]


def real_lines():
    """Real prose from the repository's own documents, one paragraph line each."""
    lines = []
    for name in ("docs/FORMAT.md", "README.md"):
        path = ROOT / name
        if path.exists():
            lines += path.read_text(encoding="utf-8").split("\n")
    assert len(lines) > 50
    return lines + TRICKY


def reference_ids(tok: Tokenizer, lines):
    """Plain tokenizers output, one encode per line, as flat ids and lengths."""
    tok.no_truncation()
    tok.no_padding()
    tok.encode_special_tokens = True
    encs = [tok.encode(line, add_special_tokens=False) for line in lines]
    return np.array([i for e in encs for i in e.ids], np.int32), np.array([len(e.ids) for e in encs], np.int64)


@pytest.fixture(scope="module")
def from_json():
    return load_tokenizer(JSON_PATH)


@pytest.fixture(scope="module")
def trained():
    text = real_lines() * 3 + ["The Quick Brown Fox jumps over the lazy dog."] * 20
    return train_wordpiece(text, vocab_size=400, min_frequency=2)


@pytest.mark.parametrize("path", [JSON_PATH, VOCAB_PATH])
def test_ids_match_tokenizers_on_real_text(path):
    tok = load_tokenizer(path)
    lines = real_lines()
    flat, lens = tok.encode_lines(lines)
    want_flat, want_lens = reference_ids(Tokenizer.from_file(str(JSON_PATH)), lines)
    assert flat.dtype == np.int32 and lens.dtype == np.int64
    np.testing.assert_array_equal(lens, want_lens)
    np.testing.assert_array_equal(flat, want_flat)
    assert lens.sum() > 1000


@pytest.mark.parametrize("path", [JSON_PATH, VOCAB_PATH])
def test_bert_uncased_tables(path):
    tok = load_tokenizer(path)
    assert tok.vocab_size == 30522 and tok.id_dtype == np.uint16
    assert tok.special_ids == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    strings = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    np.testing.assert_array_equal(tok.word_start, [not s.startswith("##") for s in strings])
    assert np.flatnonzero(tok.is_special).tolist() == [0, 100, 101, 102, 103]
    # the vocab.txt has no upper-case tokens, so it is read as uncased (lower-case + strip accents)
    a, _ = tok.encode_lines(["HELLO Café"])
    b, _ = tok.encode_lines(["hello cafe"])
    np.testing.assert_array_equal(a, b)


def test_truncation_and_padding_switched_off(from_json):
    # the asset file truncates and pads to 128; block building must see every token, unpadded
    flat, lens = from_json.encode_lines(["word " * 300, "short"])
    assert lens.tolist() == [300, 1] and flat.size == 301
    assert json.loads(from_json.to_json())["truncation"] is None


def test_literal_special_text_is_ordinary_text(from_json, trained):
    for tok in (from_json, trained):
        flat, _ = tok.encode_lines(["[MASK] [CLS] [SEP] [PAD] x[MASK]y"])
        forbidden = [tok.special_ids[k] for k in ("pad", "cls", "sep", "mask")]
        assert not np.isin(flat, forbidden).any()
        assert tok.decode(flat).replace(" ", "").lower() == "[mask][cls][sep][pad]x[mask]y"


def test_special_id_from_text_becomes_unk():
    # Without normaliser and pre-tokenizer "[MASK]" is one WordPiece word matching the [MASK] entry (a Unigram
    # vocabulary holding "<mask>" as a piece does the same): encode_special_tokens alone does not stop it, the
    # guard in encode_lines turns it into [UNK], or refuses it where the tokenizer has no unknown token.
    raw = Tokenizer.from_file(str(JSON_PATH))
    raw.pre_tokenizer = None
    raw.normalizer = None
    tok = tokmod.SubwordTokenizer(raw, "odd.json")
    assert raw.encode("[MASK]", add_special_tokens=False).ids == [103]
    assert tok.encode_lines(["[MASK]"])[0].tolist() == [100]
    ids, _, starts = tok.encode_with_words(["[MASK] x"])
    assert ids.tolist() == [100] and starts.tolist() == [True]
    no_unk = tokmod.SubwordTokenizer(raw, "odd.json", roles={**tok.special_ids, "unk": None})
    with pytest.raises(TokenizerError, match=r"odd.json.*\[MASK\].*no unknown token"):
        no_unk.encode_lines(["[MASK]"])


def test_trained_vocab_is_cased_bert_wordpiece(trained):
    assert trained.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert np.flatnonzero(trained.is_special).tolist() == [0, 1, 2, 3, 4]
    assert 300 < trained.vocab_size <= 400
    strings = [trained.id_to_token(i) for i in range(trained.vocab_size)]
    np.testing.assert_array_equal(trained.word_start, [not s.startswith("##") for s in strings])
    assert any(s.startswith("##") for s in strings) and any(s != s.lower() for s in strings)
    upper, _ = trained.encode_lines(["The"])
    lower, _ = trained.encode_lines(["the"])
    assert not np.array_equal(upper, lower)
    flat, _ = trained.encode_lines(["The Quick Brown Fox"])
    assert trained.decode(flat) == "The Quick Brown Fox"
    spec = json.loads(trained.to_json())
    assert spec["normalizer"]["lowercase"] is False and spec["pre_tokenizer"]["type"] == "BertPreTokenizer"
    assert spec["model"]["type"] == "WordPiece" and spec["model"]["continuing_subword_prefix"] == "##"


def test_save_load_round_trip(trained, tmp_path):
    path = tmp_path / "tokenizer.json"
    trained.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left behind
    again = load_tokenizer(path)
    assert again.sha256 == trained.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    lines = real_lines()
    for a, b in zip(trained.encode_lines(lines), again.encode_lines(lines), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.word_start, trained.word_start)


@pytest.mark.parametrize("path", [JSON_PATH, VOCAB_PATH])
def test_loaded_files_save_and_reload_identically(path, tmp_path):
    tok = load_tokenizer(path)
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.sha256 == tok.sha256 and again.to_json() == tok.to_json()


def test_trained_vocab_as_vocab_txt_is_cased(trained, tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(trained.id_to_token(i) for i in range(trained.vocab_size)) + "\n", encoding="utf-8")
    again = load_tokenizer(path)
    lines = real_lines()
    for a, b in zip(trained.encode_lines(lines), again.encode_lines(lines), strict=True):
        np.testing.assert_array_equal(a, b)


def test_encode_lines_chunks_and_empty_input(from_json, monkeypatch):
    lines = real_lines()
    whole = from_json.encode_lines(lines)
    monkeypatch.setattr(tokmod, "_ENCODE_CHUNK_LINES", 7)
    for a, b in zip(whole, from_json.encode_lines(lines), strict=True):
        np.testing.assert_array_equal(a, b)
    flat, lens = from_json.encode_lines([])
    assert flat.shape == (0,) and lens.shape == (0,) and flat.dtype == np.int32 and lens.dtype == np.int64
    with pytest.raises(TypeError):
        from_json.encode_lines("one string")


def test_decode_and_id_to_token(from_json):
    flat, _ = from_json.encode_lines(["Hello, world!"])
    assert from_json.decode(flat) == "hello, world!"
    assert from_json.decode(np.array([101, *flat, 102]), skip_special_tokens=True) == "hello, world!"
    assert from_json.id_to_token(103) == "[MASK]"
    with pytest.raises(IndexError):
        from_json.id_to_token(30522)


def _bpe_json():
    return Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])).to_str()


def _word_level_json():
    return Tokenizer(models.WordLevel(vocab={"a": 0, "[UNK]": 1}, unk_token="[UNK]")).to_str()


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no such file"),
        (b"", "empty file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (b"\xff\xfe\xfa bad utf8", "binary"),
        (b'{"version": "1.0", ', "invalid JSON"),
        (b'{"hello": 1}', "model"),
        (_word_level_json().encode(), "model is 'WordLevel'; pass a WordPiece, BPE or Unigram"),
        (_bpe_json().encode(), r"no CLS \(\[CLS\] or <s>\), SEP .*, MASK .*, PAD .* token; add them"),
        (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", r"\[MASK\]"),
        (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nhello\n", "twice"),
        (b"The quick brown fox.\nIt jumped over the dog.\n", "not a BERT vocab.txt"),
    ],
)
def test_bad_files_raise_tokenizer_error(tmp_path, content, match):
    path = tmp_path / "tok.file"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TokenizerError, match=match) as err:
        load_tokenizer(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_tokenizer_json_missing_special_is_refused(tmp_path):
    spec = json.loads(JSON_PATH.read_text(encoding="utf-8"))
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "[SEP]"]
    del spec["model"]["vocab"]["[SEP]"]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(spec["model"]["vocab"])}
    spec["post_processor"] = None
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"no SEP \(\[SEP\] or </s>\) token; add it"):
        load_tokenizer(path)
    with pytest.raises(TokenizerError, match=r"no SEP .*tokenizer.json"):
        load_tokenizer(tmp_path)  # a folder holding that tokenizer.json
    path.unlink()
    with pytest.raises(TokenizerError, match="a folder without tokenizer.json"):
        load_tokenizer(tmp_path)


def test_train_wordpiece_validates_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(["a b"], vocab_size=5)
    with pytest.raises(ValueError, match="min_frequency"):
        train_wordpiece(["a b"], vocab_size=100, min_frequency=0)


def test_set_tokenizer_threads(from_json):
    with pytest.raises(ValueError):
        set_tokenizer_threads(0)
    from_json.encode_lines(["x"])
    with pytest.raises(RuntimeError, match="before the process first"):
        set_tokenizer_threads(2)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads through /proc")
def test_set_tokenizer_threads_sizes_the_rayon_pool():
    code = (
        "import os; from spanbert_data.tokenizer import load_tokenizer, set_tokenizer_threads\n"
        "set_tokenizer_threads(3)\n"
        f"tok = load_tokenizer({str(JSON_PATH)!r}, encoder='hf')\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "tok.encode_lines(['some words here'] * 5000)\n"
        "print(len(os.listdir('/proc/self/task')) - before)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
