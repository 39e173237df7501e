"""Tokenizers: load any `tokenizers` tokenizer.json (WordPiece, BPE, Unigram), a `transformers` folder or a BERT
`vocab.txt` (SPEC §1; training one is vocab.py, bpe_vocab.py).

Everything downstream of this module works on integer ids only. What it derives from the tokenizer -- the
special-token roles (specials.py), the word rule (words.py, SPEC §2) and `is_special` -- lets the blocker and
the masker stay string-free.

Threads: HF `tokenizers` encodes batches on a Rayon thread pool that is created once per process, at
the first parallel call, with `RAYON_NUM_THREADS` threads (all cores when unset). Call
`set_tokenizer_threads(n)` before the first `encode_lines` to choose n; later changes have no effect.
After a fork, `tokenizers` runs single-threaded in the child if the parent already used the pool,
so worker processes should be spawned, or should be the first to tokenize.

Encoders: `encode_lines` runs the compiled WordPiece encoder of wordpiece.py (same ids as `tokenizers`,
several times faster) whenever the tokenizer is BERT-style, else `tokenizers` itself; see ENCODERS.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from operator import attrgetter
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from spanbert_data.config import ENCODERS
from spanbert_data.errors import TokenizerError
from spanbert_data.files import atomic_write_bytes
from spanbert_data.specials import folder_config, missing_message, missing_roles, special_roles
from spanbert_data.wordpiece import FastWordPiece
from spanbert_data.wordpiece_tables import unsupported_reason
from spanbert_data.words import CONTINUATION, word_ids_starts, word_rule

# The five BERT specials (SPEC §1), keyed by the names the manifest uses (docs/FORMAT.md).
SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
MAX_WORD_CHARS = 100  # the WordPiece model's max_input_chars_per_word: longer words encode as [UNK]
MODELS = ("WordPiece", "BPE", "Unigram")

# Lines per internal `encode_batch_fast` call: large enough to keep every Rayon thread busy, small
# enough that the Encoding objects of one call (about 100 bytes per token) stay in the tens of MB.
_ENCODE_CHUNK_LINES = 8192
_FAST_CHUNK_LINES = 1 << 16  # the compiled encoder's batch: a few MB of text, all threads busy

_get_ids = attrgetter("ids")
_pool_started = False  # set by the first encode; RAYON_NUM_THREADS is read only then
_threads: int | None = None  # set_tokenizer_threads(); None: all cores


def set_tokenizer_threads(n: int) -> None:
    """Use n threads for batch encoding in this process (sets `RAYON_NUM_THREADS`, and the number of
    Numba threads the compiled encoder uses).

    Must run before the first batch encode of the process: Rayon reads the variable once, when it
    builds its global pool. Raises RuntimeError if this module has already encoded.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"tokenizer threads must be an integer >= 1, got {n!r}")
    if _pool_started:
        raise RuntimeError(
            "set_tokenizer_threads() must be called before the process first encodes with a tokenizer"
        )
    global _threads
    os.environ["RAYON_NUM_THREADS"] = str(n)
    _threads = n


def _encoder_threads() -> int | None:
    """Threads of the compiled encoder: as set_tokenizer_threads() chose, else RAYON_NUM_THREADS, else all cores."""
    if _threads is not None:
        return _threads
    try:
        return max(1, int(os.environ["RAYON_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None


class SubwordTokenizer:
    """A `tokenizers.Tokenizer` with a WordPiece, BPE or Unigram model, made safe and fast for corpus building.

    Truncation and padding are switched off (files in the wild have them on), and literal special-token
    text in the corpus (the string "[MASK]") is tokenized as ordinary text, never as a special id, so
    block content never holds PAD/CLS/SEP/MASK.

    `special_ids`: role -> id (specials.py; `roles` gives them outright, as a dataset's manifest does, `named`
    adds the tokens a transformers folder names). `words`: the word rule (words.py). `encoder` (one of
    ENCODERS) picks who computes the ids; `encoder_note` says, in one line, which one runs and why (the build
    logs it once, with `words.note`).
    """

    def __init__(self, tokenizer: Tokenizer, source: str = "<tokenizer>", encoder: str = "auto",
                 roles: Mapping[str, int | None] | None = None, named: Mapping[str, str] | None = None):  # fmt: skip
        self.source = source
        kind = type(tokenizer.model).__name__
        if kind not in MODELS:
            raise TokenizerError(f"{source}: the tokenizer model is {kind}; pass a WordPiece, BPE or Unigram "
                                 "tokenizer.json (or a transformers folder holding one)")  # fmt: skip
        tokenizer.no_truncation()
        tokenizer.no_padding()
        tokenizer.encode_special_tokens = True  # not serialised by tokenizers, so set on every load
        self._tok = tokenizer
        # encode_batch_fast skips the offsets, and is the faster for WordPiece; for BPE and Unigram models
        # tokenizers 0.23 encodes 5-15% faster with its offsets (bench/subword_pass1.py). Same ids either way.
        fast = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self._encode = fast if kind == "WordPiece" else tokenizer.encode_batch

        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size: int = len(vocab)
        if not vocab:
            raise TokenizerError(f"{source}: the vocabulary is empty; pass a trained tokenizer")
        if max(vocab.values()) != self.vocab_size - 1:
            raise TokenizerError(f"{source}: token ids are not 0..{self.vocab_size - 1}; repair the vocabulary")
        spec = json.loads(tokenizer.to_str())
        self.special_ids: dict[str, int | None] = dict(roles) if roles is not None else special_roles(
            spec, vocab, named)  # fmt: skip
        missing = missing_roles(self.special_ids)
        if missing:
            raise TokenizerError(missing_message(source, missing))
        self.words = word_rule(spec, vocab, self.vocab_size)
        # The per-token table where the token alone decides (WordPiece), else None: then word starts are
        # per position (encode_with_words) and stored with the tokens.
        self.word_start = self.words.table if self.words.per_token else None
        self.is_special = np.zeros(self.vocab_size, dtype=bool)
        self.is_special[[i for i in self.special_ids.values() if i is not None]] = True
        self.is_special[[i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special]] = True
        # Ids that must never come out of corpus text: every special except UNK, which a model legitimately
        # emits for what it cannot spell.
        self._forbidden = self.is_special.copy()
        if self.special_ids.get("unk") is not None:
            self._forbidden[self.special_ids["unk"]] = False

        self.id_dtype = np.dtype(np.uint16 if self.vocab_size <= 65536 else np.int32)
        text = self.to_json()
        self.sha256: str = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self._fast = None  # the compiled encoder, built at the first encode
        self.encoder, self.encoder_note = self._choose_encoder(encoder, json.loads(text))

    def set_encoder(self, encoder: str) -> None:
        """Switch to another of ENCODERS (a TokenizerError if "fast" cannot reproduce this tokenizer)."""
        self.encoder, self.encoder_note = self._choose_encoder(encoder, json.loads(self.to_json()))

    def _choose_encoder(self, encoder: str, spec: dict) -> tuple[str, str]:
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        if encoder == "hf":
            return "hf", "encoder: tokenizers (--encoder hf)"
        reason = unsupported_reason(spec)
        if reason is None:
            return "fast", "encoder: compiled WordPiece (same ids as tokenizers)"
        if encoder == "fast":
            raise TokenizerError(
                f"{self.source}: the compiled encoder cannot reproduce this tokenizer ({reason}); "
                "use --encoder auto or --encoder hf"
            )
        return "hf", f"encoder: tokenizers, because the compiled encoder does not apply: {reason}"

    def encode_lines(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize lines without special tokens: (flat ids int32, per-line token counts int64).

        The ids are those of `tokenizers` (`encode_special_tokens=True`, no truncation) whichever
        encoder runs; the compiled one hands back the rare lines it cannot match exactly (see
        wordpiece_tables.ROUTE) and those are encoded by `tokenizers`. A special id that the model makes
        out of literal text (a Unigram vocabulary holds `<mask>` as a piece) becomes UNK (`_guard`).
        """
        flat, lens = self._encode_any(lines)
        return self._guard(flat), lens

    def encode_with_words(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`encode_lines` plus, per token, whether it starts a word (SPEC §2, the rule of words.py)."""
        if self.words.kind == "word-ids":
            flat, lens, starts = self._encode_hf_words(lines)
        else:
            flat, lens = self._encode_any(lines)
            starts = self.words.starts(lines, flat, lens, self._encode_hf_words, _encoder_threads())
        return self._guard(flat), lens, starts

    def _encode_any(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        global _pool_started
        _pool_started = True
        if isinstance(lines, str):
            raise TypeError("encode_lines() takes a list of lines, not one string")
        return self._encode_fast(lines) if self.encoder == "fast" else self._encode_hf(lines)

    def _guard(self, flat: np.ndarray) -> np.ndarray:
        bad = self._forbidden[flat]
        if not bad.any():  # one gather, ~1% of the encode
            return flat
        unk = self.special_ids.get("unk")
        if unk is None:
            token = self.id_to_token(int(flat[bad][0]))
            raise TokenizerError(f"{self.source}: corpus text was tokenized into the special token {token} and the "
                                 "tokenizer has no unknown token to put instead; remove that text from the corpus")
        flat = flat.copy()
        flat[bad] = unk
        return flat

    def _encode_fast(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._fast is None:
            self._fast = FastWordPiece(self._tok)
        if len(lines) > _FAST_CHUNK_LINES:  # bounded buffers for any input size
            step = _FAST_CHUNK_LINES
            parts = [self._encode_fast(lines[i : i + step]) for i in range(0, len(lines), step)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        try:
            flat, lens, left = self._fast.encode(lines, threads=_encoder_threads())
        except UnicodeEncodeError:  # a lone surrogate: tokenizers gives its own answer (an error)
            return self._encode_hf(lines)
        if len(left) == 0:
            return flat, lens
        hf_flat, hf_lens = self._encode_hf([lines[i] for i in left.tolist()])
        lens = lens.copy()
        lens[left] = hf_lens
        from_hf = np.zeros(len(lines), dtype=bool)
        from_hf[left] = True
        from_hf = np.repeat(from_hf, lens)  # per output token: does it come from tokenizers?
        merged = np.empty(len(from_hf), dtype=np.int32)
        merged[~from_hf] = flat
        merged[from_hf] = hf_flat
        return merged, lens

    def _encode_hf(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`tokenizers` on its Rayon pool. The Encoding -> NumPy step streams each encoding's id list into
        one preallocated array (np.fromiter over a chain): the lists die as soon as they are consumed,
        which measured faster than building per-line arrays and concatenating (bench/tokenizer_throughput.py).
        """
        flat_parts, len_parts = [], []
        for i in range(0, len(lines), _ENCODE_CHUNK_LINES):
            encodings = self._encode(lines[i : i + _ENCODE_CHUNK_LINES], add_special_tokens=False)
            lens = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
            total = int(lens.sum())
            flat_parts.append(np.fromiter(itertools.chain.from_iterable(map(_get_ids, encodings)), np.int32, total))
            len_parts.append(lens)
        if not flat_parts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        flat = flat_parts[0] if len(flat_parts) == 1 else np.concatenate(flat_parts)
        return flat, np.concatenate(len_parts)

    def _encode_hf_words(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`tokenizers` with offsets (`encode_batch`): ids, tokens per line, and word starts from its word ids."""
        flat_parts, len_parts, start_parts = [], [], []
        for i in range(0, len(lines), _ENCODE_CHUNK_LINES):
            encodings = self._tok.encode_batch(lines[i : i + _ENCODE_CHUNK_LINES], add_special_tokens=False)
            lens = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
            flat_parts.append(np.fromiter(itertools.chain.from_iterable(map(_get_ids, encodings)), np.int32,
                                          int(lens.sum())))  # fmt: skip
            len_parts.append(lens)
            start_parts.append(word_ids_starts(encodings))
        if not flat_parts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, bool)
        return np.concatenate(flat_parts), np.concatenate(len_parts), np.concatenate(start_parts)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (list or NumPy array)."""
        return self._tok.decode(np.asarray(ids, dtype=np.int64).tolist(), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        """The vocabulary string of id i."""
        tok = self._tok.id_to_token(int(i))
        if tok is None:
            raise IndexError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return tok

    def to_json(self) -> str:
        """The tokenizer as HF `tokenizer.json` text (truncation and padding off); `sha256` hashes it."""
        return self._tok.to_str()

    def save(self, path) -> None:
        """Write `to_json()` to path atomically (temp file in the same directory, then os.replace).

        A failed write (disk full, file size limit) raises `errors.DiskWriteError` naming the file."""
        atomic_write_bytes(path, self.to_json().encode("utf-8"))


def bert_pipeline(tok: Tokenizer, lowercase: bool) -> None:
    """BERT's normaliser, pre-tokenizer and decoder (SPEC §1); accents are stripped only when lower-casing."""
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION)


def bert_post_processor(tok: Tokenizer) -> None:
    """`[CLS] A [SEP]` templates, so the saved file behaves like a BERT tokenizer elsewhere too (`transformers`)."""
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )


def bert_tokenizer(vocab: dict[str, int], lowercase: bool) -> Tokenizer:
    """A BERT WordPiece `tokenizers.Tokenizer` around a vocabulary (SPEC §1): `bert_pipeline`, `##` WordPiece, the
    specials as special added tokens, `bert_post_processor`. Both a loaded vocab.txt and a trained vocabulary."""
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix=CONTINUATION,
                                     max_input_chars_per_word=MAX_WORD_CHARS))  # fmt: skip
    bert_pipeline(tok, lowercase)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS.values()])
    bert_post_processor(tok)
    return tok


def _is_lowercase_vocab(tokens: Iterable[str]) -> bool:
    """True when no token changes under lower-casing (bracketed markers like [CLS] aside): BERT uncased."""
    return all(t == t.lower() for t in tokens if not (t.startswith("[") and t.endswith("]")))


def _from_vocab_txt(text: str, source: str) -> Tokenizer:
    """A BERT tokenizer from vocab.txt text: one token per line, id = line number."""
    tokens = text.split("\n")  # not splitlines(): tokens may be characters like U+2028
    if tokens and tokens[-1] == "":
        tokens.pop()
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        tok = tok.rstrip("\r")
        # Only ASCII blanks are refused: they reveal prose passed by mistake, while exotic Unicode
        # entries do occur in real vocabularies.
        if tok == "" or " " in tok or "\t" in tok:
            raise TokenizerError(
                f"{source}: line {i + 1} is {'empty' if tok == '' else 'not a single token'}, so this is not a "
                "BERT vocab.txt (one token per line); pass a tokenizer.json or a vocab.txt"
            )
        if tok in vocab:
            raise TokenizerError(f"{source}: token {tok!r} appears twice (lines {vocab[tok] + 1} and {i + 1})")
        vocab[tok] = i
    missing = [t for t in SPECIAL_TOKENS.values() if t not in vocab]
    if missing:
        raise TokenizerError(f"{source}: missing BERT special token(s) {', '.join(missing)}; add them to the vocab")
    return bert_tokenizer(vocab, lowercase=_is_lowercase_vocab(vocab))


def load_tokenizer(path, encoder: str = "auto", roles: Mapping[str, int | None] | None = None) -> SubwordTokenizer:
    """Load a HF `tokenizer.json`, a `transformers` tokenizer folder or a BERT `vocab.txt`; the kind is detected
    from the content.

    A folder must hold tokenizer.json; its tokenizer_config.json / special_tokens_map.json name the special
    tokens (specials.py). `roles` (a dataset manifest's special_ids) gives the role ids outright.
    A vocab.txt is cased unless none of its tokens has an upper-case form (bracketed markers such as
    [CLS] aside): then it gets BERT-uncased normalisation (lower-case and strip accents).
    Any unusable file raises TokenizerError naming the file and what to do.
    """
    source = str(path)
    p = Path(path)
    named = None
    if p.is_dir():
        try:
            named = folder_config(p)
        except ValueError as e:
            raise TokenizerError(str(e)) from None
        if not (p / "tokenizer.json").is_file():
            raise TokenizerError(f"{source}: a folder without tokenizer.json; pass a tokenizer.json, a vocab.txt or "
                                 "a transformers tokenizer folder that holds a tokenizer.json")  # fmt: skip
        p = p / "tokenizer.json"
        source = str(p)
    if not p.is_file():
        raise TokenizerError(f"{source}: no such file; pass --tokenizer a tokenizer.json, a vocab.txt or a folder")
    data = p.read_bytes()
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TokenizerError(f"{source}: binary file, not a tokenizer; pass a tokenizer.json or a vocab.txt") from None
    if not text.strip():
        raise TokenizerError(f"{source}: empty file; pass a tokenizer.json or a vocab.txt")
    if text.lstrip().startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{source}: invalid JSON ({e}); pass a valid tokenizer.json") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise TokenizerError(f"{source}: JSON without a tokenizer 'model'; pass a HF tokenizer.json")
        if spec["model"].get("type") not in MODELS:
            raise TokenizerError(
                f"{source}: tokenizer model is {spec['model'].get('type')!r}; pass a WordPiece, BPE or Unigram "
                "tokenizer.json"
            )
        try:
            tok = Tokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception with the serde message
            raise TokenizerError(f"{source}: not a loadable tokenizer.json ({e})") from None
    else:
        tok = _from_vocab_txt(text, source)
    return SubwordTokenizer(tok, source, encoder, roles=roles, named=named)
