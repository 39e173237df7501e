"""The example corpus built end to end: what the training rows hold, checked from the shards alone."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spanbert_data.build import build_dataset
from spanbert_data.config import BuildConfig
from spanbert_data.inspect import dataset_stats
from spanbert_data.packing import record_batch_columns
from spanbert_data.shards import read_arrow_file
from spanbert_data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "wiki" / "enwiki-sample.jsonl"
VOCAB = REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("wiki") / "data"
    build_dataset(BuildConfig(corpus=SAMPLE, out=out, tokenizer=VOCAB, seed=7, workers=1), log=lambda m: None)
    return out


def rows_of(out: Path):
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]["train"] + manifest["shards"]["valid"]:
        yield record_batch_columns(read_arrow_file(out / shard["path"]))


def test_rows_are_self_contained_and_targets_stay_in_their_example(dataset):
    tok = load_tokenizer(dataset / "tokenizer.json")
    sp = tok.special_ids
    checked = 0
    for cols in rows_of(dataset):
        ids = cols["input_ids"]
        for r in range(len(ids)):
            e_off, e_len = cols["example_lengths"]
            lengths = e_len[e_off[r] : e_off[r + 1]].astype(np.int64)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            example_of = np.full(ids.shape[1], -1)
            content = np.zeros(ids.shape[1], dtype=bool)
            for i, (s, n) in enumerate(zip(starts, lengths, strict=True)):
                assert ids[r, s] == sp["cls"] and ids[r, s + n - 1] == sp["sep"]
                example_of[s : s + n] = i
                content[s + 1 : s + n - 1] = True
            assert (ids[r, lengths.sum() :] == sp["pad"]).all()
            lo, hi = cols["mlm_positions"][0][r], cols["mlm_positions"][0][r + 1]
            mlm = cols["mlm_positions"][1][lo:hi].astype(np.int64)
            assert content[mlm].all(), "an MLM target on [CLS], [SEP] or padding"
            # exact budget per example: ceil(0.15 n) targets (SPEC §2)
            per_example = np.bincount(example_of[mlm], minlength=len(lengths))
            assert (per_example == np.ceil(0.15 * (lengths - 2) - 1e-9).astype(int)).all()
            lo, hi = cols["sbo_positions"][0][r], cols["sbo_positions"][0][r + 1]
            sbo = cols["sbo_positions"][1][lo:hi].astype(np.int64)
            left = cols["sbo_left"][1][lo:hi].astype(np.int64)
            right = cols["sbo_right"][1][lo:hi].astype(np.int64)
            k = cols["sbo_offsets"][1][lo:hi].astype(np.int64)
            assert np.isin(sbo, mlm).all()
            masked = np.zeros(ids.shape[1], dtype=bool)
            masked[mlm] = True
            for b in (left, right):  # boundaries: content of the same example, never masked (SPEC §3)
                assert content[b].all() and not masked[b].any()
                assert (example_of[b] == example_of[sbo]).all()
            assert ((k >= 0) & (k < 15)).all() and (sbo == left + 1 + k).all()
            assert (cols["sbo_labels"][1][lo:hi] == labels_at(cols, r, sbo)).all()
            checked += 1
    assert checked > 500


def labels_at(cols, r, slots):
    lo, hi = cols["mlm_positions"][0][r], cols["mlm_positions"][0][r + 1]
    pos = cols["mlm_positions"][1][lo:hi]
    return cols["mlm_labels"][1][lo:hi][np.searchsorted(pos, slots)]


def test_statistics_match_spec_within_sampling_error(dataset):
    stats = dataset_stats(dataset)
    # This corpus's long articles give few short examples to fill rows: the packer must reach the best possible.
    assert stats["padding_lower_bound"] <= stats["padding_fraction"] < stats["padding_lower_bound"] + 0.005
    # ceil() makes the masked fraction slightly above 15%; never below.
    assert 0.15 <= stats["masked_fraction"] < 0.152
    spans = sum(stats["span_length_hist"]["tokens"].values())
    split = stats["replacement_split"]
    for name, p in (("mask", 0.8), ("random", 0.1), ("keep", 0.1)):
        sigma = math.sqrt(p * (1 - p) / spans)
        # 'random' spans whose draws all equal the original read as 'keep': a tiny, one-sided bias.
        assert abs(split[name] - p) < 5 * sigma + 0.005, (name, split[name], spans)
    # SPEC §2: mean merged span ≈ 5 tokens at n=510, SBO targets ≈ 98% of MLM targets
    assert 4.0 < stats["mean_span_tokens"] < 6.0
    assert 0.95 < stats["sbo_targets_per_mlm_target"] < 1.0
    words = stats["span_length_hist"]["words"]
    assert int(words["1"]) > int(words["2"]) > int(words["3"])  # geometric: shorter spans are likelier


def test_inspect_cli_json_and_text(dataset):
    cli = [sys.executable, "-m", "spanbert_data.cli", "inspect", str(dataset)]
    js = subprocess.run([*cli, "--json"], capture_output=True, text=True, check=True)
    stats = json.loads(js.stdout)
    for key in ("rows", "examples", "tokens", "padding_fraction", "masked_fraction", "span_length_hist",
                "sbo_targets_per_mlm_target", "replacement_split"):  # fmt: skip
        assert key in stats
    assert set(stats["span_length_hist"]) == {"tokens", "words"}
    text = subprocess.run([*cli, "--examples", "2"], capture_output=True, text=True, check=True).stdout
    assert "«" in text and "--- row 0" in text
