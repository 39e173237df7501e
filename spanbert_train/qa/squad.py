"""SQuAD v1.1 / v2.0 for the extractive-QA probe: loading, sliding windows, span decoding, EM/F1.

Everything here is model-free (NumPy + HF `tokenizers`) so that it can be tested on its own:

- `load_squad` reads the official JSON layout (`{"data": [{"paragraphs": [{"context", "qas"}]}]}`).
- `make_features` cuts each (question, context) pair into windows `[CLS] question [SEP] context-part [SEP]`
  the way BERT's SQuAD recipe does (max length 384, stride 128, question ≤ 64 tokens), and keeps for every
  context token its character span in the ORIGINAL context (from the tokenizer's offsets), so a predicted
  span maps back to exact original characters.
- `predict_answers` picks the best legal span per question over all its windows (n-best over the top-20
  start and end logits, answer ≤ 30 tokens) and, for v2, compares it with the null score.
- `squad_metrics` scores predictions with the official normalisation.
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from spanbert_data.tokenizer import load_tokenizer


@dataclass(frozen=True)
class SquadExample:
    """One question about one context; `answers` is a list of (text, character start)."""

    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    is_impossible: bool


def load_squad(path: str | Path) -> list[SquadExample]:
    """Read a SQuAD v1.1 or v2.0 JSON file into examples (v2 unanswerable questions have no answers)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        articles = data["data"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a SQuAD JSON file ({exc}); expected {{'data': [{{'paragraphs': …}}]}}") from exc
    examples = []
    for article in articles:
        for para in article["paragraphs"]:
            context = para["context"]
            for qa in para["qas"]:
                impossible = bool(qa.get("is_impossible", False))
                answers = () if impossible else tuple((a["text"], int(a["answer_start"])) for a in qa["answers"])
                examples.append(SquadExample(str(qa["id"]), qa["question"], context, answers, impossible))
    if not examples:
        raise ValueError(f"{path}: holds no questions")
    return examples


# ----------------------------------------------------------------------------------------------------------------
# Metrics: the official SQuAD evaluation (v1.1 script, with v2.0's rule for empty answers).

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace (official order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when both normalise to the same string."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 of the normalised strings; an empty side scores 1 only if both are empty (v2 rule)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], examples: list[SquadExample]) -> dict[str, float]:
    """EM and F1 in percent, max over the gold answers; an unanswerable question's gold answer is "".

    Also reports the split into answerable (`has_ans_*`) and unanswerable (`no_ans_*`) questions.
    A question with no prediction scores 0.
    """
    rows = []
    for ex in examples:
        golds = [text for text, _ in ex.answers] or [""]
        pred = predictions.get(ex.qid)
        em = 0.0 if pred is None else max(exact_match(pred, g) for g in golds)
        f1 = 0.0 if pred is None else max(f1_score(pred, g) for g in golds)
        rows.append((ex.is_impossible or not ex.answers, em, f1))
    out: dict[str, float] = {"total": len(rows)}
    for name, keep in (("", lambda r: True), ("has_ans_", lambda r: not r[0]), ("no_ans_", lambda r: r[0])):
        sel = [r for r in rows if keep(r)]
        if sel:
            out[f"{name}exact"] = 100.0 * sum(r[1] for r in sel) / len(sel)
            out[f"{name}f1"] = 100.0 * sum(r[2] for r in sel) / len(sel)
            out[f"{name}total"] = len(sel)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Sliding windows.


@dataclass(frozen=True)
class WindowConfig:
    """How questions and contexts are cut into fixed-length windows (BERT's SQuAD defaults)."""

    max_seq_len: int = 384  # window length in tokens, [CLS] q [SEP] c [SEP]
    doc_stride: int = 128  # step between the starts of consecutive context windows, in tokens
    max_query_len: int = 64  # longer questions are cut to their first max_query_len tokens

    def validate(self) -> None:
        for name in ("max_seq_len", "doc_stride", "max_query_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_seq_len - self.max_query_len - 3 < 1:
            raise ValueError(
                f"max_seq_len ({self.max_seq_len}) leaves no room for the context after a question of up to "
                f"max_query_len ({self.max_query_len}) tokens and 3 special tokens; raise it or lower max_query_len"
            )


@dataclass
class Features:
    """All windows of a set of examples as padded arrays (n = number of windows, T = max_seq_len).

    `offsets[i, t]` is the [start, end) character span in the original context of token t of window i,
    or (-1, -1) for tokens that are not context (special tokens, the question, padding).
    `start_positions`/`end_positions` are the answer's token indices in the window, 0 ([CLS]) when the
    window does not hold the whole answer or the question has none (training targets).
    """

    input_ids: np.ndarray  # (n, T) int64
    token_type_ids: np.ndarray  # (n, T) int64: 0 for [CLS] q [SEP], 1 for context [SEP]
    attention_mask: np.ndarray  # (n, T) int64: 1 for real tokens, 0 for padding
    offsets: np.ndarray  # (n, T, 2) int32
    example_index: np.ndarray  # (n,) int64: which example each window belongs to
    start_positions: np.ndarray  # (n,) int64
    end_positions: np.ndarray  # (n,) int64
    skipped_answers: int = 0  # gold answers whose text does not match the context at answer_start

    def __len__(self) -> int:
        return len(self.example_index)


def plain_tokenizer(path: str | Path) -> Tokenizer:
    """A WordPiece `tokenizer.json` or BERT `vocab.txt` as a `tokenizers.Tokenizer` without truncation or padding.

    Loading goes through `spanbert_data.tokenizer.load_tokenizer`, which validates the file and switches
    truncation/padding off (we cut the windows ourselves).
    """
    return Tokenizer.from_str(load_tokenizer(path).to_json())


def _special_id(tok: Tokenizer, token: str) -> int:
    idx = tok.token_to_id(token)
    if idx is None:
        raise ValueError(f"the tokenizer has no {token} token; the QA windows need [CLS], [SEP] and [PAD]")
    return idx


def _answer_char_span(ex: SquadExample) -> tuple[int, int] | None:
    """Character span of the first gold answer, or None if the text is not at answer_start in the context."""
    text, start = ex.answers[0]
    if ex.context[start : start + len(text)] != text:
        return None
    return start, start + len(text)


def make_features(examples: list[SquadExample], tokenizer: Tokenizer, cfg: WindowConfig) -> Features:
    """Tokenise every example once and cut its context into overlapping windows (see module doc)."""
    cfg.validate()
    cls_id, sep_id, pad_id = (_special_id(tokenizer, t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    # Many questions share one paragraph: tokenise each distinct context once.
    contexts = list(dict.fromkeys(ex.context for ex in examples))
    ctx_enc = dict(zip(contexts, tokenizer.encode_batch(contexts, add_special_tokens=False), strict=True))
    q_enc = tokenizer.encode_batch([ex.question for ex in examples], add_special_tokens=False)

    T = cfg.max_seq_len
    rows_ids, rows_types, rows_offsets, rows_ex, rows_start, rows_end, rows_len = [], [], [], [], [], [], []
    skipped = 0
    for ei, ex in enumerate(examples):
        q_ids = q_enc[ei].ids[: cfg.max_query_len]
        enc = ctx_enc[ex.context]
        c_ids = np.asarray(enc.ids, dtype=np.int64)
        c_off = np.asarray(enc.offsets, dtype=np.int32).reshape(-1, 2)
        # Answer token span within the whole context: first token ending after the answer's first char,
        # last token starting before its end.
        tok_span = None
        if ex.answers:
            char_span = _answer_char_span(ex)
            if char_span is None:
                skipped += 1
            elif len(c_ids):
                a, b = char_span
                lo = int(np.searchsorted(c_off[:, 1], a, side="right"))
                hi = int(np.searchsorted(c_off[:, 0], b, side="left")) - 1
                if lo <= hi:
                    tok_span = (lo, hi)
        room = T - len(q_ids) - 3
        n_ctx = len(c_ids)
        win_start = 0
        while True:
            win_len = min(room, n_ctx - win_start)
            head = [cls_id, *q_ids, sep_id]
            ids = head + c_ids[win_start : win_start + win_len].tolist() + [sep_id]
            offs = np.full((T, 2), -1, dtype=np.int32)
            offs[len(head) : len(head) + win_len] = c_off[win_start : win_start + win_len]
            start = end = 0
            if tok_span is not None and win_start <= tok_span[0] and tok_span[1] < win_start + win_len:
                start, end = tok_span[0] - win_start + len(head), tok_span[1] - win_start + len(head)
            rows_len.append(len(ids))
            rows_ids.append(ids + [pad_id] * (T - len(ids)))
            rows_types.append([0] * len(head) + [1] * (win_len + 1) + [0] * (T - len(ids)))
            rows_offsets.append(offs)
            rows_ex.append(ei)
            rows_start.append(start)
            rows_end.append(end)
            if win_start + win_len >= n_ctx:
                break
            win_start += min(win_len, cfg.doc_stride)

    input_ids = np.asarray(rows_ids, dtype=np.int64).reshape(-1, T)
    return Features(
        input_ids=input_ids,
        token_type_ids=np.asarray(rows_types, dtype=np.int64).reshape(-1, T),
        attention_mask=(np.arange(T)[None, :] < np.asarray(rows_len, dtype=np.int64)[:, None]).astype(np.int64),
        offsets=np.stack(rows_offsets) if rows_offsets else np.zeros((0, T, 2), np.int32),
        example_index=np.asarray(rows_ex, dtype=np.int64),
        start_positions=np.asarray(rows_start, dtype=np.int64),
        end_positions=np.asarray(rows_end, dtype=np.int64),
        skipped_answers=skipped,
    )


# ----------------------------------------------------------------------------------------------------------------
# Decoding.


def best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray, n_best: int = 20, max_answer_len: int = 30
) -> tuple[float, int, int] | None:
    """Best legal (score, start, end) in one window: both ends context tokens, start ≤ end, ≤ max_answer_len tokens.

    Candidates are the n_best highest start and end logits (BERT's recipe); score = start + end logit.
    Returns None when no candidate pair is legal.
    """
    is_ctx = offsets[:, 0] >= 0
    starts = np.argsort(-start_logits, kind="stable")[:n_best]
    ends = np.argsort(-end_logits, kind="stable")[:n_best]
    best = None
    for s in starts:
        if not is_ctx[s]:
            continue
        for e in ends:
            if not is_ctx[e] or e < s or e - s + 1 > max_answer_len:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, int(s), int(e))
    return best


def predict_answers(
    examples: list[SquadExample],
    features: Features,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_len: int = 30,
    version_2: bool = False,
    null_threshold: float = 0.0,
) -> dict[str, str]:
    """Answer text per question id, cut from the original context with the windows' character offsets.

    v2: the null score is the lowest [CLS] start+end score over the question's windows; the answer is ""
    when null_score - best_span_score > null_threshold (and always "" when no window has a legal span).
    """
    best: dict[int, tuple[float, int, int, int]] = {}  # example -> (score, window, start, end)
    null: dict[int, float] = {}
    for w in range(len(features)):
        ei = int(features.example_index[w])
        null[ei] = min(null.get(ei, np.inf), float(start_logits[w, 0] + end_logits[w, 0]))
        cand = best_span(start_logits[w], end_logits[w], features.offsets[w], n_best, max_answer_len)
        if cand is not None and (ei not in best or cand[0] > best[ei][0]):
            best[ei] = (cand[0], w, cand[1], cand[2])
    out = {}
    for ei, ex in enumerate(examples):
        if ei not in best:
            out[ex.qid] = ""
            continue
        score, w, s, e = best[ei]
        if version_2 and null[ei] - score > null_threshold:
            out[ex.qid] = ""
            continue
        out[ex.qid] = ex.context[features.offsets[w, s, 0] : features.offsets[w, e, 1]]
    return out
