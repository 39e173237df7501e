"""Words (SPEC §2): which tokens start one, for every tokenizer family. The one home of the rule.

A word is what the tokenizer's own pre-tokenizer makes of a line: the tokens with one word id in a
`tokenizers` encoding. Masking takes whole words, blocks cut over-long lines at word starts, evaluation and
`inspect` count span lengths in words; all of them get their word starts from here. They are found from the
token ids (and for byte-level BPE the raw bytes), not from `tokenizers`' word ids, which need its encode with
offsets and a Python pass over every token's word id; how depends on the family (`WordRule.kind`):

- "wordpiece": a token starts a word unless its string begins with the continuation prefix `##` (the
  WordPiece model spells every piece after a word's first so). A table over the vocabulary.
- "metaspace": the pre-tokenizer turns spaces into `▁` and cuts before each, so a token starts a word when its
  string begins with `▁`, and so does a line's first token (`prepend_scheme` "never" leaves it bare).
- "byte-level": GPT-2's pattern over the raw bytes (bytelevel.py): a token starts a word when its byte offset,
  the sum of the byte lengths of the tokens before it, is where a piece of the pattern starts.
- "word-ids": any other pre-tokenizer: `tokenizers`' own word ids (the slower encode with offsets), said in
  one line (`WordRule.note`).
- "line": no pre-tokenizer splits the line (none at all, or Metaspace with split=false): a line is one word,
  which whole-word spans cannot use; `build` refuses it unless `--scheme subword`.

Only WordPiece's rule is a function of the token id alone, so only there are word starts recomputed from the
ids after pass 1; the other families store them per token (docs/FORMAT.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from spanbert_data import bytelevel

CONTINUATION = "##"  # WordPiece's prefix of a token that continues a word (BERT's, and our trained vocabularies')
KINDS = ("wordpiece", "metaspace", "byte-level", "word-ids", "line")


def word_start_table(vocab: Mapping[str, int] | Sequence[str], prefix: str = CONTINUATION,
                     size: int | None = None, starts: bool = False) -> np.ndarray:  # fmt: skip
    """bool[size] over token ids: does the token start a word (SPEC §2). WordPiece (the default): unless its string
    begins with the continuation `prefix`; with `starts=True` (Metaspace): when it begins with `prefix` (`▁`).
    `vocab`: token -> id, or the tokens in id order; `size` (default: the vocabulary's) leaves ids at or above it
    out."""
    items = vocab.items() if isinstance(vocab, Mapping) else ((t, i) for i, t in enumerate(vocab))
    table = np.full(len(vocab) if size is None else size, not starts, dtype=bool)
    table[[i for t, i in items if t.startswith(prefix) and i < len(table)]] = starts
    return table


def _name(pre: dict | None) -> str:
    if pre is None:
        return "none"
    if pre.get("type") == "Sequence":
        return "Sequence[" + ", ".join(_name(p) for p in pre.get("pretokenizers") or []) + "]"
    return str(pre.get("type"))


def _is_gpt2_byte_level(pre: dict | None) -> tuple[bool, bool]:
    """(is it GPT-2's byte-level pre-tokenizer, its add_prefix_space): ByteLevel with its regex, or a Split of
    exactly GPT-2's pattern (Isolated) followed by ByteLevel without its regex."""
    if pre is None:
        return False, False
    if pre.get("type") == "ByteLevel":
        return bool(pre.get("use_regex", True)), bool(pre.get("add_prefix_space"))
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if len(parts) == 2 and [p.get("type") for p in parts] == ["Split", "ByteLevel"]:
            split, level = parts
            pattern = (split.get("pattern") or {}).get("Regex")
            plain = split.get("behavior") == "Isolated" and not split.get("invert") and not level.get("use_regex", 1)
            return pattern == bytelevel.GPT2_PATTERN and plain, bool(level.get("add_prefix_space"))
    return False, False


@dataclass(frozen=True)
class WordRule:
    """How one tokenizer's word starts are found (module docstring); `note` says which rule, and why, in a line."""

    kind: str
    note: str
    table: np.ndarray | None = None  # wordpiece, metaspace: bool[vocab]
    byte_lengths: np.ndarray | None = None  # byte-level: bytes per token id
    prefix_space: bool = False  # byte-level: the pre-tokenizer's add_prefix_space

    @property
    def per_token(self) -> bool:
        """True when a token's id alone decides (WordPiece): nothing needs storing beside the ids."""
        return self.kind == "wordpiece"

    def starts(self, lines: list[str], ids: np.ndarray, lens: np.ndarray,
               hf_starts: Callable[[list[str]], tuple[np.ndarray, np.ndarray, np.ndarray]],
               threads: int | None = None) -> np.ndarray:  # fmt: skip
        """bool per token of `ids` (the tokens of `lines`, `lens` per line): does it start a word. `hf_starts`
        encodes lines with `tokenizers` and returns (ids, lens, word starts) from its word ids: lines whose
        bytes the byte-level rule cannot account for go there (their ids must agree)."""
        line_first = np.zeros(len(ids), dtype=bool)
        line_first[(np.cumsum(lens) - lens)[lens > 0]] = True
        if self.kind == "byte-level":
            out, left = bytelevel.token_word_starts(lines, ids, lens, self.byte_lengths, self.prefix_space, threads)
            if len(left):
                _splice(out, lens, left, hf_starts([lines[i] for i in left.tolist()]), ids)
            return out | line_first
        if self.kind in ("wordpiece", "metaspace"):
            return self.table[ids] | line_first
        if self.kind == "line":
            return line_first
        raise ValueError(f"word rule {self.kind!r} needs tokenizers' word ids: encode with them")


def _splice(out: np.ndarray, lens: np.ndarray, left: np.ndarray, hf: tuple, ids: np.ndarray) -> None:
    """Put the word starts `tokenizers` gave for lines `left` into `out` (flat, per token of all lines)."""
    hf_ids, hf_lens, hf_starts = hf
    mine = np.zeros(len(lens), dtype=bool)
    mine[left] = True
    at = np.repeat(mine, lens)
    if not np.array_equal(hf_lens, lens[left]) or not np.array_equal(hf_ids, ids[at]):
        raise RuntimeError("tokenizers gave other ids for the same lines")  # pragma: no cover - an invariant
    out[at] = hf_starts


def word_ids_starts(encodings) -> np.ndarray:
    """bool per token of `tokenizers` encodings (their ids back to back): a token whose word id differs from the
    previous token's in the same encoding, and every encoding's first token, starts a word."""
    lens = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
    words = np.fromiter((-1 if w is None else w for e in encodings for w in e.word_ids), dtype=np.int64,
                        count=int(lens.sum()))  # fmt: skip
    out = np.ones(len(words), dtype=bool)
    out[1:] = words[1:] != words[:-1]
    out[(np.cumsum(lens) - lens)[lens > 0]] = True
    return out


def word_rule(spec: dict, vocab: Mapping[str, int], size: int) -> WordRule:
    """The rule for a tokenizer.json (parsed) and its vocabulary (with added tokens) of `size` ids."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer")
    plain_added = [t["content"] for t in spec.get("added_tokens") or [] if not t.get("special")]
    if model.get("type") == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or CONTINUATION
        return WordRule("wordpiece", f"words: WordPiece pieces (a word starts at a token without {prefix!r})",
                        word_start_table(vocab, prefix, size))  # fmt: skip
    if pre is None or (pre.get("type") == "Metaspace" and pre.get("split") is False):
        return WordRule("line", f"words: none within a line (pre-tokenizer {_name(pre)} keeps each line whole)")
    slow = f"words: tokenizers' word ids (encode with offsets, slower), because the pre-tokenizer {_name(pre)}"
    if plain_added:
        return WordRule("word-ids", f"words: tokenizers' word ids (encode with offsets, slower), because of "
                                    f"{len(plain_added)} added non-special token(s) such as {plain_added[0]!r}")
    if pre.get("type") == "Metaspace":
        replacement = pre.get("replacement", "\u2581")
        if replacement not in vocab:
            return WordRule("word-ids", f"{slow} uses {replacement!r}, which is not a token")
        return WordRule("metaspace", f"words: Metaspace pieces (a word starts at a token beginning with "
                                     f"{replacement!r}, and at a line's start)",
                        word_start_table(vocab, replacement, size, starts=True))  # fmt: skip
    gpt2, prefix_space = _is_gpt2_byte_level(pre)
    if gpt2 and model.get("type") == "BPE" and spec.get("normalizer") is None:
        lengths = bytelevel.token_byte_lengths(dict(vocab), size)
        return WordRule("byte-level", "words: GPT-2 byte-level pieces, found in the raw bytes", None, lengths,
                        prefix_space)  # fmt: skip
    why = "has a normalizer" if gpt2 and spec.get("normalizer") is not None else "is not one the fast rules cover"
    return WordRule("word-ids", f"{slow} {why}")


def target_word_starts(columns: dict, table: np.ndarray | None) -> np.ndarray:
    """bool per MLM target of shard columns (record_batch_columns or a gathered batch): does its original token
    start a word. The shard's own `mlm_word_starts` where it has one (every family but WordPiece), else the
    WordPiece `table` at the labels."""
    if "mlm_word_starts" in columns:
        return columns["mlm_word_starts"][1].astype(bool)
    if table is None:
        raise ValueError("the shard holds no mlm_word_starts and no word-start table was given")
    return table[columns["mlm_labels"][1].astype(np.int64)]

