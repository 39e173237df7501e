"""`spanbert-train evaluate` and the trainer's periodic evaluation: a fixed, uniform subset of held-out rows,
the same numbers for any rank count and micro-batch (also under torchrun), MLM accuracy by span length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spanbert_train.cli import main
from spanbert_train.config import DataConfig, ModelSpec, OptimConfig, TrainConfig
from spanbert_train.data import Dataset
from spanbert_train.evaluate import (
    SPAN_WORD_BUCKETS,
    Sums,
    dataset_word_starts,
    eval_rows,
    evaluation_sums,
    span_words,
)
from spanbert_train.model import ModelConfig, SpanBertForPreTraining
from spanbert_train.shard import RowSource
from spanbert_train.train import train
from tests.train.dataset_fixture import make_dataset

REPO = Path(__file__).resolve().parents[2]
SMALL = {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
KEYS = ("loss_mlm", "loss_sbo", "acc_mlm", "acc_sbo")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), rows=16, mask_epochs=1, valid_rows=23)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A 4-step run that evaluates 17 of the 23 held-out rows at the end (eval_rows=17)."""
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = TrainConfig(
        out=str(out), max_steps=4, seed=5, eval_every=0, save_every=0, log_every=1, kernels="reference", eval_rows=17,
        data=DataConfig(path=str(data), global_batch_size=8, micro_batch=4),
        model=ModelSpec(preset="tiny", overrides=dict(SMALL)), optim=OptimConfig(lr=3e-3, warmup_steps=1),
    )  # fmt: skip
    rows = train(cfg)
    return out, [r for r in rows if r.get("split") == "valid"][-1]


def assert_same(a: dict, b: dict, rel: float = 1e-6) -> None:
    for key in KEYS:
        assert a[key] == pytest.approx(b[key], rel=rel), key
    for key in ("rows", "targets", "sbo_targets", "targets_by_span_words"):
        assert a[key] == b[key], key
    x, y = a["acc_mlm_by_span_words"], b["acc_mlm_by_span_words"]
    assert [k for k in x if x[k] is None] == [k for k in y if y[k] is None]
    assert {k: v for k, v in x.items() if v is not None} == pytest.approx({k: v for k, v in y.items() if v is not None},
                                                                          rel=rel)  # fmt: skip


def test_eval_rows_is_a_fixed_uniform_subset():
    assert np.array_equal(eval_rows(10), np.arange(10)) and np.array_equal(eval_rows(10, 99), np.arange(10))
    rows = eval_rows(10_000, 500)
    assert np.array_equal(rows, eval_rows(10_000, 500))  # the same for every run and launch
    assert len(np.unique(rows)) == 500 and np.all(np.diff(rows) > 0)
    # Uniform over the split, not its head (rows are stored longest examples first): each tenth holds ~50.
    per_tenth = np.bincount(rows * 10 // 10_000, minlength=10)
    assert per_tenth.min() > 25 and per_tenth.max() < 80, per_tenth


def test_span_words_counts_the_words_a_merged_span_touches():
    word_start = np.array([True, True, False, True, False, False])  # ids 2, 4, 5 are "##" pieces
    offsets = np.array([0, 5, 8])
    positions = np.array([3, 4, 5, 9, 10, 1, 2, 7])  # row 0: runs 3-5 and 9-10; row 1: 1-2 and 7
    labels = np.array([1, 2, 3, 4, 1, 3, 3, 5])
    # run 3-5: starts at id1 (word), id2 (##), id3 (word) -> 2 words; run 9-10: ##, word -> 2 (begins mid-word);
    # row 1: 1-2: two word starts -> 2; 7: a lone ## piece -> 1.
    assert span_words(offsets, positions, word_start[labels]).tolist() == [2, 2, 2, 2, 2, 2, 2, 1]
    # Adjacent slots in different rows are different spans.
    assert span_words(np.array([0, 1, 2]), np.array([5, 6]), np.array([True, True])).tolist() == [1, 1]


def test_result_does_not_depend_on_ranks_or_micro_batch(data):
    torch.manual_seed(0)
    model = SpanBertForPreTraining(ModelConfig.from_preset("tiny", **SMALL).with_vocab(300)).eval()
    ds = Dataset(data)

    def result(world, micro, max_rows=0):
        parts = [evaluation_sums(model, ds, max_rows=max_rows, micro_batch=micro, rank=r, world=world)
                 for r in range(world)]  # fmt: skip
        return Sums(np.sum([p.values for p in parts], axis=0)).result()

    alone = result(1, 23)
    assert alone["rows"] == 23 and alone["targets"] == sum(alone["targets_by_span_words"].values())
    for world, micro in ((1, 1), (3, 4), (30, 2)):  # 30 ranks: some get no row at all
        assert_same(result(world, micro), alone)
    subset = result(1, 5, max_rows=11)
    assert subset["rows"] == 11
    assert_same(result(4, 2, max_rows=11), subset)


def test_span_word_buckets_agree_with_inspect(tmp_path):
    """On real WordPiece shards: targets per span length in words = inspect's span histogram × span lengths."""
    from spanbert_data.build import build_dataset
    from spanbert_data.config import BuildConfig
    from spanbert_data.inspect import _spans
    from spanbert_data.tokenizer import load_tokenizer

    corpus = tmp_path / "corpus.txt"
    lines = (REPO / "examples" / "wiki" / "enwiki-sample.jsonl").read_text().splitlines()[:6]
    corpus.write_text("\n\n".join(json.loads(line)["text"] for line in lines) + "\n")
    tokenizer = REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"
    build_dataset(BuildConfig(corpus=corpus, out=tmp_path / "ds", max_seq_len=128, valid_fraction=0.3,
                              tokenizer=tokenizer, workers=1), log=lambda msg: None)  # fmt: skip
    ds = Dataset(tmp_path / "ds")
    table = dataset_word_starts(ds)
    assert np.array_equal(table, load_tokenizer(tokenizer).word_start)
    cols = RowSource(ds.valid).gather(np.arange(sum(s.rows for s in ds.valid)))
    words = span_words(*cols["mlm_positions"], table[cols["mlm_labels"][1]])
    starts, lengths = _spans(*cols["mlm_positions"])
    is_start = table[cols["mlm_labels"][1].astype(np.int64)]
    expected = np.add.reduceat(is_start.astype(np.int64), starts) + ~is_start[starts]
    assert np.array_equal(words[starts], expected) and np.array_equal(np.repeat(expected, lengths), words)
    assert words.max() >= 5  # real geometric spans of several words


def test_training_evaluation_equals_the_command_also_under_torchrun(run, data, capsys, tmp_path):
    out, logged = run
    assert logged["rows"] == 17 and "acc_mlm_by_span_words" in logged
    assert len(logged["acc_mlm_by_span_words"]) == SPAN_WORD_BUCKETS
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(out), "--max-rows", "17", "--micro-batch", "3"])
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0
    single = json.loads(printed)
    assert single["step"] == 4 and single["data"] == str(data)
    assert_same(single, logged)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
         "spanbert_train", "evaluate", str(out), "--data", str(data), "--micro-batch", "2", "--max-rows", "17"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1, done.stdout  # rank 0 prints, once
    two = json.loads(printed[0])
    assert two["world_size"] == 2
    assert_same(two, logged)


def test_whole_split_and_train_split(run, capsys):
    out, _ = run
    with pytest.raises(SystemExit):
        main(["evaluate", str(out)])
    whole = json.loads(capsys.readouterr().out)
    assert whole["rows"] == 23 and whole["split"] == "valid"
    with pytest.raises(SystemExit):
        main(["evaluate", str(out / "checkpoints" / "step-00000004"), "--split", "train"])
    assert json.loads(capsys.readouterr().out)["rows"] == 16


def test_user_errors_are_one_line(run, capsys, tmp_path):
    out, _ = run
    cases = [
        (["evaluate", str(tmp_path)], "neither a checkpoint"),
        (["evaluate", str(out), "--data", str(tmp_path)], "no dataset there"),
    ]
    other = make_dataset(tmp_path / "other", rows=8, mask_epochs=1, valid_rows=0, vocab_size=310)
    cases.append((["evaluate", str(out), "--data", str(other)], "another tokenizer"))
    for argv, fragment in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and fragment in err and "Traceback" not in err, err
