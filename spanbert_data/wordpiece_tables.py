"""What a BERT normaliser + pre-tokenizer does to each code point, probed from `tokenizers` itself.

The fast encoder (wordpiece.py) must give exactly the ids of the installed `tokenizers`. Its Unicode
notions come from three Rust sources of different Unicode versions (std's `char::is_whitespace` and
`to_lowercase`, the `unicode_categories` crate for control/punctuation/Mn, `unicode-normalization-
alignments` for NFD), so no Python table reproduces them. Instead every code point is sent once through
the tokenizer's own normaliser (`normalize_str`), and every character that can come out of it through
its own pre-tokenizer; the answers become one code per code point (two-level table, 256-entry blocks):

    code >= 0        the character becomes this one code point, part of a word
    REMOVED          nothing (clean_text drops controls, U+FFFD, unassigned; strip_accents drops Mn)
    SPACE            ends the current word
    ISOLATE          a one-character word of itself (punctuation, CJK ideographs)
    ROUTE            the line goes to `tokenizers` (see below: rare characters only)
    <= -SEQ_BASE     anything else: a sequence of (code point, class) in `pool`

Why per code point is exact: BertNormalizer works character by character (filter, map, per-char
lowercase, per-char decomposition) except for NFD's canonical reordering of adjacent combining marks
(nonzero combining class). Marks that strip_accents removes cannot change the result; a mark that
survives it could, so a character whose normalised form keeps a nonzero-class mark is ROUTE. The
BERT pre-tokenizer classifies single characters (whitespace split, punctuation isolated).

Code points that Python's Unicode database does not know (unassigned there; private use outside the
BMP) are not probed but ROUTE as well. Probing the other ~150,000 takes a fraction of a second; the
tables are still cached per process and on disk (keyed by the tokenizers version, Python's Unicode
version and the normaliser/pre-tokenizer settings).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers

TABLE_VERSION = 3
WORD, SPACE_CLASS, PUNCT = 0, 1, 2  # pre-tokenizer classes of a normalised character
REMOVED, SPACE, ISOLATE, ROUTE = -1, -2, -3, -4
SEQ_BASE = 16
N_CODEPOINTS = 0x110000

_MEMO: dict[str, CharTables] = {}


@dataclass(frozen=True)
class CharTables:
    """The per-code-point codes of one normaliser + pre-tokenizer (see the module docstring)."""

    block_index: np.ndarray  # int32 (N_CODEPOINTS >> 8,): block of each 256-code-point range
    blocks: np.ndarray  # int32 (n_blocks * 256,): the codes
    pool: np.ndarray  # int32: sequences, [length, (cp << 2 | class) ...]
    ascii: np.ndarray  # int32 (128,): codes of the ASCII range (the hot path)
    tokens_per_byte: float  # upper bound of tokens per input byte (for output buffers)
    routed: int  # how many code points send their line to `tokenizers`

    def code(self, cp: int) -> int:
        return int(self.blocks[self.block_index[cp >> 8] * 256 + (cp & 255)])


def unsupported_reason(spec: dict) -> str | None:
    """Why the fast encoder cannot reproduce a tokenizer.json (parsed), or None when it can."""
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece":
        return f"model {model.get('type')!r} is not WordPiece"
    reason = pipeline_reason(spec)
    if reason is not None:
        return reason
    plain = [t["content"] for t in spec.get("added_tokens") or [] if not t.get("special")]
    if plain:
        return f"{len(plain)} added non-special token(s) such as {plain[0]!r}"
    if model.get("unk_token") not in (model.get("vocab") or {}):
        return f"the unknown token {model.get('unk_token')!r} is not in the vocabulary"
    if not 0 <= int(model.get("max_input_chars_per_word", 100)) <= 1 << 16:
        return "max_input_chars_per_word is above 65536"
    return None


def pipeline_reason(spec: dict) -> str | None:
    """Why the tables cannot reproduce a tokenizer.json's normaliser + pre-tokenizer, or None when they can."""
    norm = spec.get("normalizer")
    if norm is not None and norm.get("type") != "BertNormalizer":
        return f"normalizer {norm.get('type')!r} is not BertNormalizer"
    pre = spec.get("pre_tokenizer")
    if pre is None or pre.get("type") != "BertPreTokenizer":
        return f"pre-tokenizer {None if pre is None else pre.get('type')!r} is not BertPreTokenizer"
    return None


def strips_accents(spec: dict) -> bool:
    norm = spec.get("normalizer")
    if norm is None:
        return False
    strip = norm.get("strip_accents")
    return bool(norm.get("lowercase", True) if strip is None else strip)


def char_tables(tokenizer: tokenizers.Tokenizer, spec: dict) -> CharTables:
    """The tables of this tokenizer's normaliser + pre-tokenizer: memoised, then disk cache, then probing."""
    key_src = {
        "v": TABLE_VERSION, "tokenizers": tokenizers.__version__, "unidata": unicodedata.unidata_version,
        "normalizer": spec.get("normalizer"), "pre_tokenizer": spec.get("pre_tokenizer"),
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:24]
    if key in _MEMO:
        return _MEMO[key]
    path = _cache_dir() / f"wordpiece-chars-{key}.npz"
    tables = _load(path)
    if tables is None:
        tables = _probe(tokenizer.normalizer, tokenizer.pre_tokenizer, strips_accents(spec))
        _save(path, tables)
    _MEMO[key] = tables
    return tables


def _cache_dir() -> Path:
    if os.environ.get("SPANBERT_CACHE_DIR"):
        return Path(os.environ["SPANBERT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spanbert"


_ARRAYS = ("block_index", "blocks", "pool", "ascii")


def _digest(t: CharTables) -> str:
    h = hashlib.sha256()
    for name in _ARRAYS:
        h.update(np.ascontiguousarray(getattr(t, name), dtype=np.int32).tobytes())
    h.update(repr((t.tokens_per_byte, t.routed)).encode())
    return h.hexdigest()


def _load(path: Path) -> CharTables | None:
    """The cached tables, or None when absent or not intact (then they are probed again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            t = CharTables(**{name: z[name] for name in _ARRAYS}, tokens_per_byte=float(z["tokens_per_byte"]),
                           routed=int(z["routed"]))  # fmt: skip
            digest = str(z["digest"])
    except Exception:  # noqa: BLE001 -- a damaged cache file of any kind only costs a new probe
        return None
    shapes = t.block_index.shape == (N_CODEPOINTS >> 8,) and t.blocks.size % 256 == 0 and t.ascii.shape == (128,)
    in_range = shapes and 0 <= t.block_index.min() and t.block_index.max() < t.blocks.size // 256
    intact = in_range and _digest(t) == digest
    return t if intact else None


def _save(path: Path, t: CharTables) -> None:
    """Best effort, atomic (temp file + rename): an unwritable cache only costs the probing again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{name: getattr(t, name) for name in _ARRAYS}, tokens_per_byte=t.tokens_per_byte,
                     routed=t.routed, digest=_digest(t))  # fmt: skip
        os.replace(tmp, path)
    except OSError:
        pass


def _probe(normalizer, pre_tokenizer, strip: bool) -> CharTables:
    # Code points unassigned in Python's Unicode database (or private use outside the BMP, or
    # surrogates) are not probed but ROUTE: the Rust crates may be of another Unicode version, and such
    # characters are too rare in text to be worth a second of probing.
    every = list(map(chr, range(N_CODEPOINTS)))
    every[0xD800:0xE000] = ["\ue000"] * 0x800  # stand-ins, so that category() sees one character each
    category = np.array(list(map(unicodedata.category, every)))
    probed = ~np.isin(category, ["Cn", "Co"])
    probed[0xE000:0xF900] = True  # the BMP private use area: probed (clean_text removes it)
    probed[0xD800:0xE000] = False
    cps = np.flatnonzero(probed)
    chars = [every[c] for c in cps.tolist()]
    outs = chars if normalizer is None else list(map(normalizer.normalize_str, chars))
    # The outputs as one UTF-32 array: out of probed code point k is flat[start[k] : start[k] + length[k]].
    length = np.fromiter(map(len, outs), dtype=np.int64, count=len(outs))
    flat = np.frombuffer("".join(outs).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    start = np.cumsum(length) - length
    present = np.zeros(N_CODEPOINTS, dtype=bool)
    present[flat] = True
    seen = np.flatnonzero(present)
    cls = np.full(N_CODEPOINTS, -1, dtype=np.int8)
    cls[seen] = _pre_token_classes(pre_tokenizer, seen)
    code = np.full(len(cps), REMOVED, dtype=np.int32)
    single = length == 1
    same = single.copy()
    same[single] = flat[start[single]] == cps[single]
    same_cls = cls[cps[same]]
    code[same] = np.where(same_cls == WORD, cps[same], np.where(same_cls == PUNCT, ISOLATE, SPACE))
    routed = np.zeros(len(cps), dtype=bool)
    if strip:  # canonical reordering could move a surviving mark: lines holding one go to tokenizers
        risky = np.zeros(N_CODEPOINTS, dtype=bool)
        risky[seen] = [bool(unicodedata.combining(chr(d))) or unicodedata.category(chr(d)) == "Cn" for d in seen]
        has = length > 0
        routed[has] = np.maximum.reduceat(risky[flat], start[has])
        code[routed] = ROUTE
    # Two vectorised common cases: one word character (case mapping, accent stripping) and a CJK
    # ideograph between two spaces (handle_chinese_chars).
    one = single & ~same & ~routed
    one[one] = cls[flat[start[one]]] == WORD
    code[one] = flat[start[one]]
    three = (length == 3) & ~routed
    s3 = start[three]
    three[three] = (cls[flat[s3]] == SPACE_CLASS) & (flat[s3 + 1] == cps[three]) & (cls[flat[s3 + 1]] == WORD) & (
        cls[flat[s3 + 2]] == SPACE_CLASS
    )
    code[three] = ISOLATE
    pool: list[int] = []
    ratio = 1.0
    for k in np.flatnonzero(~(same | routed | one | three) & (length > 0)).tolist():
        seq = [(d, int(cls[d])) for d in flat[start[k] : start[k] + length[k]].tolist()]
        core = [s for s in seq if s[1] != SPACE_CLASS]
        ratio = max(ratio, len(core) / len(chars[k].encode()))
        if not core:
            code[k] = SPACE
        elif len(seq) == 1 and seq[0][1] == WORD:  # (one punctuation character is a sequence)
            code[k] = seq[0][0]
        elif core == [(cps[k], WORD)] and seq[0][1] == seq[-1][1] == SPACE_CLASS:
            code[k] = ISOLATE  # a CJK ideograph between spaces
        else:
            code[k] = -(SEQ_BASE + len(pool))
            pool.append(len(seq))
            pool.extend(d << 2 | c for d, c in seq)
    codes = np.full(N_CODEPOINTS, ROUTE, dtype=np.int32)
    codes[cps] = code
    rows = codes.reshape(-1, 256)
    first: dict[bytes, int] = {}
    index = np.array([first.setdefault(row.tobytes(), len(first)) for row in rows], dtype=np.int32)
    blocks = rows[np.unique(index, return_index=True)[1]]
    return CharTables(
        block_index=index, blocks=blocks.reshape(-1).astype(np.int32),
        pool=np.asarray(pool + [0], dtype=np.int32), ascii=codes[:128].copy(), tokens_per_byte=ratio,
        routed=int((codes == ROUTE).sum()),
    )  # fmt: skip


def _pre_token_classes(pre_tokenizer, chars: np.ndarray) -> np.ndarray:
    """WORD / SPACE_CLASS / PUNCT of each code point, from one pre-tokenizer call on "a" c "a" c' "a" ..."""
    probe = np.full(2 * len(chars) + 1, ord("a"), dtype=np.uint32)
    probe[1::2] = chars
    text = probe.tobytes().decode("utf-32-le")
    covered = np.zeros(len(text) + 1, dtype=np.int32)
    alone = np.zeros(len(text), dtype=bool)
    step = 8192  # even: every chunk starts at an "a"; small: splitting costs the chunk length per split
    for lo in range(0, len(text), step):
        chunk = text[lo : lo + step]
        for piece, (a, b) in pre_tokenizer.pre_tokenize_str(chunk):
            if chunk[a:b] != piece:
                raise RuntimeError("tokenizers pre-tokenizer offsets are not character offsets; cannot probe it")
            covered[lo + a] += 1
            covered[lo + b] -= 1
            alone[lo + a] = b == a + 1
    covered = np.cumsum(covered)[:-1] > 0
    if not covered[0]:
        raise RuntimeError("the pre-tokenizer does not keep 'a' as a word character; cannot probe it")
    pos = np.arange(1, len(text), 2)
    return np.where(~covered[pos], SPACE_CLASS, np.where(alone[pos], PUNCT, WORD)).astype(np.int8)
