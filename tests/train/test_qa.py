"""The extractive-QA probe: SQuAD metrics, sliding windows, span decoding and an end-to-end fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spanbert_train.qa.squad import (
    SquadExample,
    WindowConfig,
    best_span,
    exact_match,
    f1_score,
    load_squad,
    make_features,
    normalize_answer,
    plain_tokenizer,
    predict_answers,
    squad_metrics,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SQUAD = ASSETS / "squad_tiny"
TOKENIZER = ASSETS / "bert-uncased-tokenizer.json"


@pytest.fixture(scope="module")
def tok():
    return plain_tokenizer(TOKENIZER)


# --------------------------------------------------------------------------------------------- metrics


def test_normalize_answer_worked_examples():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("the theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("  U.S.A.\t") == "usa"
    assert normalize_answer("") == ""


def test_exact_match_and_f1_worked_examples():
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("Paris France", "paris") == 0.0
    # pred "cat sat" vs gold "cat sat on mat": precision 1, recall 1/2 -> F1 2/3
    assert f1_score("the cat sat", "cat sat on mat") == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: overlap min(2, 3) = 2 of 3 on each side
    assert f1_score("x y y", "y y y") == pytest.approx(2 / 3)
    assert f1_score("red", "blue") == 0.0
    # v2 rule: an empty side scores 1 only if both are empty (after normalisation)
    assert f1_score("", "") == 1.0
    assert f1_score("the", "") == 1.0
    assert f1_score("", "x") == 0.0
    assert exact_match("", "x") == 0.0


def test_squad_metrics_max_over_golds_and_no_answer():
    examples = [
        SquadExample("a", "q", "c", (("Blue whale", 0), ("the blue whale", 0)), False),
        SquadExample("b", "q", "c", (("in 1642", 0),), False),
        SquadExample("c", "q", "c", (), True),
        SquadExample("d", "q", "c", (), True),
        SquadExample("e", "q", "c", (("x", 0),), False),
    ]
    preds = {"a": "blue whale", "b": "1642", "c": "", "d": "something"}  # "e" missing -> 0
    m = squad_metrics(preds, examples)
    # EM: a=1, b=0, c=1, d=0, e=0; F1: a=1, b=2/3 (p=1, r=1/2), c=1, d=0, e=0
    assert m["total"] == 5
    assert m["exact"] == pytest.approx(100 * 2 / 5)
    assert m["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 5)
    assert m["has_ans_total"] == 3 and m["no_ans_total"] == 2
    assert m["no_ans_exact"] == pytest.approx(50.0)
    assert m["has_ans_f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


# --------------------------------------------------------------------------------------------- windows


def _window_char_range(offsets: np.ndarray) -> tuple[int, int]:
    ctx = offsets[offsets[:, 0] >= 0]
    return int(ctx[0, 0]), int(ctx[-1, 1])


@pytest.mark.parametrize("cfg", [WindowConfig(48, 8, 16), WindowConfig(40, 5, 8), WindowConfig(384, 128, 64)])
def test_windows_map_answers_to_exact_characters(tok, cfg):
    examples = load_squad(SQUAD / "train.json")
    feats = make_features(examples, tok, cfg)
    assert feats.skipped_answers == 0
    assert feats.input_ids.shape == (len(feats), cfg.max_seq_len)
    crossing = 0
    for w in range(len(feats)):
        ex = examples[feats.example_index[w]]
        text, a = ex.answers[0]
        b = a + len(text)
        lo, hi = _window_char_range(feats.offsets[w])
        inside = lo <= a and b <= hi
        crossing += (lo < b and a < hi) and not inside
        s, e = feats.start_positions[w], feats.end_positions[w]
        if inside:  # the label must cut out exactly the gold characters
            assert 0 < s <= e
            assert ex.context[feats.offsets[w, s, 0] : feats.offsets[w, e, 1]] == text
        else:  # a window holding none or only part of the answer points at [CLS]
            assert s == e == 0
    # every example has a window holding its whole answer (stride < window), and the small windows really
    # cut through some answers so the exclusion above was exercised
    labelled = set(feats.example_index[feats.start_positions > 0].tolist())
    assert labelled == set(range(len(examples)))
    if cfg.max_seq_len < 100:
        assert len(feats) > 3 * len(examples) and crossing > 0


def test_windows_cover_context_with_the_configured_stride(tok):
    cfg = WindowConfig(max_seq_len=40, doc_stride=7, max_query_len=6)
    examples = load_squad(SQUAD / "train.json")
    feats = make_features(examples, tok, cfg)
    for ei, ex in enumerate(examples):
        wins = np.flatnonzero(feats.example_index == ei)
        c_tokens = tok.encode(ex.context, add_special_tokens=False)
        q_len = min(len(tok.encode(ex.question, add_special_tokens=False).ids), cfg.max_query_len)
        starts = []
        for w in wins:
            ids = feats.input_ids[w]
            n = int(feats.attention_mask[w].sum())
            assert ids[0] == tok.token_to_id("[CLS]") and ids[q_len + 1] == ids[n - 1] == tok.token_to_id("[SEP]")
            types = feats.token_type_ids[w]
            assert (types[: q_len + 2] == 0).all() and (types[q_len + 2 : n] == 1).all()
            assert (ids[n:] == tok.token_to_id("[PAD]")).all()
            ctx = np.flatnonzero(feats.offsets[w, :, 0] >= 0)
            first = c_tokens.offsets.index(tuple(feats.offsets[w, ctx[0]]))
            assert list(ids[ctx]) == c_tokens.ids[first : first + len(ctx)]
            starts.append(first)
            end = first + len(ctx)
        assert starts[0] == 0 and end == len(c_tokens.ids)  # first window at the start, last at the end
        assert all(b - a == cfg.doc_stride for a, b in zip(starts, starts[1:], strict=False))


def test_offsets_keep_original_characters_with_accents_and_odd_spacing(tok):
    ctx = "Le  Café\tZürich,  naïve   cuisine: crème brûlée (since 1921)."
    answers = ["Café\tZürich", "crème brûlée", "1921"]
    examples = [SquadExample(str(i), "where?", ctx, ((a, ctx.index(a)),), False) for i, a in enumerate(answers)]
    feats = make_features(examples, tok, WindowConfig(24, 4, 4))
    for w in np.flatnonzero(feats.start_positions > 0):
        s, e = feats.start_positions[w], feats.end_positions[w]
        assert ctx[feats.offsets[w, s, 0] : feats.offsets[w, e, 1]] == answers[feats.example_index[w]]


def test_window_config_errors_name_the_option(tok):
    with pytest.raises(ValueError, match="max_query_len"):
        make_features([], tok, WindowConfig(max_seq_len=20, doc_stride=4, max_query_len=18))
    with pytest.raises(ValueError, match="doc_stride"):
        WindowConfig(doc_stride=0).validate()


def test_load_squad_rejects_non_squad_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="x.json"):
        load_squad(bad)


# --------------------------------------------------------------------------------------------- decoding


def _naive_best_span(start, end, is_ctx, n_best, max_len):
    top_s = set(np.argsort(-start, kind="stable")[:n_best].tolist())
    top_e = set(np.argsort(-end, kind="stable")[:n_best].tolist())
    pairs = [
        (start[s] + end[e], s, e)
        for s in top_s
        for e in top_e
        if is_ctx[s] and is_ctx[e] and s <= e < s + max_len
    ]
    return max(pairs) if pairs else None


def test_best_span_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        T = int(rng.integers(4, 40))
        start, end = rng.normal(size=T), rng.normal(size=T)
        offsets = np.full((T, 2), -1, np.int32)
        c0 = int(rng.integers(1, T - 1))
        offsets[c0 : T - 1] = np.arange(c0, T - 1)[:, None]
        n_best, max_len = int(rng.integers(1, 8)), int(rng.integers(1, 6))
        got = best_span(start, end, offsets, n_best, max_len)
        want = _naive_best_span(start, end, offsets[:, 0] >= 0, n_best, max_len)
        if want is None:
            assert got is None
        else:
            assert got[1:] == (want[1], want[2]) and got[0] == pytest.approx(want[0])


def test_predict_answers_round_trips_gold_labels_and_null(tok):
    examples = load_squad(SQUAD / "train.json")
    feats = make_features(examples, tok, WindowConfig(48, 8, 16))
    n, T = feats.input_ids.shape
    start, end = np.zeros((n, T)), np.zeros((n, T))
    has = feats.start_positions > 0
    start[has, feats.start_positions[has]] = 10.0
    end[has, feats.end_positions[has]] = 10.0
    preds = predict_answers(examples, feats, start, end)
    assert preds == {ex.qid: ex.answers[0][0] for ex in examples}
    assert squad_metrics(preds, examples)["exact"] == 100.0
    # v2: a [CLS] score above the best span's gives "", below it keeps the span
    start[:, 0] = end[:, 0] = 10.5
    assert set(predict_answers(examples, feats, start, end, version_2=True).values()) == {""}
    start[:, 0] = end[:, 0] = 9.5
    assert predict_answers(examples, feats, start, end, version_2=True) == preds


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A freshly initialised tiny model exported as a Hugging Face directory (the input finetune-qa takes).

    Its tokenizer is a small cased WordPiece trained on the fixture's text, which keeps the embedding
    table (and so each CPU step) small.
    """
    import torch

    from spanbert_data.vocab import train_wordpiece
    from spanbert_train.export import export_model
    from spanbert_train.model import ModelConfig, SpanBertForPreTraining

    root = tmp_path_factory.mktemp("qa")
    examples = load_squad(SQUAD / "train.json") + load_squad(SQUAD / "dev.json")
    texts = [t for ex in examples for t in (ex.context, ex.question)]
    tokenizer = train_wordpiece(texts, vocab_size=800, min_frequency=1)
    tokenizer.save(root / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", hidden_size=64, num_heads=2, intermediate_size=128,
                                  max_position_embeddings=128).with_vocab(tokenizer.vocab_size)  # fmt: skip
    return export_model(SpanBertForPreTraining(cfg), root / "tokenizer.json", root / "model")


def _first_words_baseline(examples: list[SquadExample], n: int = 3) -> dict[str, str]:
    return {ex.qid: " ".join(ex.context.split()[:n]) for ex in examples}


def test_finetune_learns_the_training_questions(tiny_model_dir, tmp_path):
    from spanbert_train.qa.finetune import QAConfig, finetune_qa

    cfg = QAConfig(epochs=15, lr=2e-3, batch_size=8, max_seq_len=96, doc_stride=48, max_query_len=24, dropout=0.0,
                   warmup_fraction=0.0)  # fmt: skip
    train = SQUAD / "train.json"
    metrics = finetune_qa(tiny_model_dir, train, train, tmp_path, cfg, log=lambda m: None)
    examples = load_squad(train)
    baseline = squad_metrics(_first_words_baseline(examples), examples)
    assert metrics["f1"] > baseline["f1"] + 25, (metrics, baseline)
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert set(preds) == {ex.qid for ex in examples}
    # every prediction is an exact substring of its context (cut with the tokenizer's offsets)
    assert all(preds[ex.qid] in ex.context for ex in examples)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["f1"] == pytest.approx(metrics["f1"]) and saved["config"]["max_seq_len"] == 96


def test_finetune_cli_squad_v2(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from spanbert_train.qa.finetune import finetune_qa_command

    args = ["--model", str(tiny_model_dir), "--train", str(SQUAD / "train.json"), "--dev", str(SQUAD / "dev.json"),
            "--out", str(tmp_path), "--epochs", "1", "--batch-size", "4", "--max-seq-len", "64", "--doc-stride", "32",
            "--max-query-len", "16", "--version-2-with-negative", "--seed", "3"]  # fmt: skip
    result = CliRunner().invoke(finetune_qa_command, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["total"] == 6 and metrics["no_ans_total"] == 2 and metrics["has_ans_total"] == 4
    assert metrics["config"]["version_2"] is True
    preds = json.loads((tmp_path / "predictions.json").read_text())
    dev = load_squad(SQUAD / "dev.json")
    assert set(preds) == {ex.qid for ex in dev} and all(p in ex.context for ex in dev for p in [preds[ex.qid]])
    bad = CliRunner().invoke(finetune_qa_command, [*args[:-2], "--max-seq-len", "512"])
    assert bad.exit_code != 0 and "max_position_embeddings" in bad.output
