"""The build end to end: determinism across workers, resume, no-op re-runs, verify, refusals."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spanbert_data.build import build_dataset
from spanbert_data.config import BuildConfig
from spanbert_data.errors import BuildError, CorpusError, DatasetError
from spanbert_data.packing import record_batch_columns
from spanbert_data.shards import load_manifest, read_arrow_file, verify_dataset
from spanbert_data.tokenizer import load_tokenizer
from tests.faults.helpers import dataset_bytes as tree_bytes  # every file; store markers without timings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "wiki"
VOCAB = REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"


def small_corpus(tmp: Path, copies: int = 3) -> Path:
    """A few files of real text (the example corpus split up), so that there are several units."""
    corpus = tmp / "corpus"
    corpus.mkdir()
    for src in sorted(EXAMPLE.iterdir()):
        if src.name.lower().startswith("readme"):
            continue
        for i in range(copies):
            shutil.copy(src, corpus / f"{i}-{src.name}")
    return corpus


def config(corpus: Path, out: Path, **kw) -> BuildConfig:
    kw.setdefault("tokenizer", VOCAB)
    kw.setdefault("unit_bytes", 1 << 20)
    kw.setdefault("rows_per_shard", 400)
    return BuildConfig(corpus=corpus, out=out, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    corpus = small_corpus(tmp)
    out = tmp / "one"
    manifest = build_dataset(config(corpus, out, mask_epochs=2, workers=1), log=lambda m: None)
    return corpus, out, manifest


def test_manifest_and_shards_are_consistent(built):
    _, out, manifest = built
    assert load_manifest(out) == manifest
    assert verify_dataset(out) == []
    assert manifest["blocks"] == sum(p["blocks"] for p in manifest["store"])
    assert manifest["valid_blocks"] > 0
    assert {s["epoch"] for s in manifest["shards"]["train"]} == {0, 1}
    examples = [sum(s["examples"] for s in manifest["shards"]["train"] if s["epoch"] == e) for e in (0, 1)]
    assert examples[0] == examples[1] == manifest["blocks"] - manifest["valid_blocks"]
    tok = load_tokenizer(out / "tokenizer.json")
    assert len(manifest["unigram_counts"]) == tok.vocab_size
    assert sum(manifest["unigram_counts"]) == manifest["tokens"]


def test_every_block_lands_in_exactly_one_row_per_epoch(built):
    _, out, manifest = built
    for epoch in (0, 1):
        seen = []
        for shard in manifest["shards"]["train"]:
            if shard["epoch"] != epoch:
                continue
            cols = record_batch_columns(read_arrow_file(out / shard["path"]))
            seen.append(cols["block_ids"][1])
            assert (cols["example_lengths"][1].reshape(-1) <= manifest["max_seq_len"]).all()
        for shard in manifest["shards"]["valid"]:
            seen.append(record_batch_columns(read_arrow_file(out / shard["path"]))["block_ids"][1])
        seen = np.sort(np.concatenate(seen))
        assert np.array_equal(seen, np.arange(manifest["blocks"]))


def test_epochs_mask_differently(built):
    _, out, manifest = built
    by_epoch = {s["epoch"]: s for s in manifest["shards"]["train"] if s["path"].endswith("part-00000.arrow")}
    a = read_arrow_file(out / by_epoch[0]["path"]).column("input_ids")
    b = read_arrow_file(out / by_epoch[1]["path"]).column("input_ids")
    assert not a.equals(b)


def test_workers_do_not_change_the_bytes(built, tmp_path):
    corpus, out, _ = built
    other = tmp_path / "two"
    build_dataset(config(corpus, other, mask_epochs=2, workers=2), log=lambda m: None)
    assert tree_bytes(out) == tree_bytes(other)


def test_rerun_is_a_noop_and_resume_redoes_only_missing(built, tmp_path):
    corpus, out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    logs = []
    build_dataset(config(corpus, copy, mask_epochs=2), log=logs.append)
    assert any("already complete" in line for line in logs)
    # Simulate an interruption: the manifest, one store unit and one shard are gone.
    (copy / "manifest.json").unlink()
    sorted((copy / "store").glob("unit-*.json"))[1].unlink()
    shard = sorted((copy / "epoch-1").glob("*.arrow"))[0]
    shard.unlink()
    build_dataset(config(corpus, copy, mask_epochs=2), log=lambda m: None)
    assert tree_bytes(copy) == tree_bytes(out)


def test_killed_build_resumes_to_the_same_bytes(built, tmp_path):
    corpus, out, _ = built
    target = tmp_path / "killed"
    cmd = [sys.executable, "-m", "spanbert_data.cli", "build", "--corpus", str(corpus), "--out", str(target),
           "--tokenizer", str(VOCAB), "--mask-epochs", "2", "--rows-per-shard", "400", "--unit-mb", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((target / "store").glob("unit-*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (target / "manifest.json").exists()
    for leftover in target.rglob("*.tmp"):
        leftover.unlink()  # a killed writer may leave its temp file: never under a final name
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree_bytes(target) == tree_bytes(out)


def test_verify_finds_flipped_byte_and_truncation(built, tmp_path):
    _, out, manifest = built
    copy = tmp_path / "bad"
    shutil.copytree(out, copy)
    first, second = manifest["shards"]["train"][0]["path"], manifest["store"][0]["path"]
    data = bytearray((copy / first).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / first).write_bytes(bytes(data))
    with open(copy / second, "r+b") as f:
        f.truncate(100)
    problems = verify_dataset(copy)
    assert len(problems) == 2
    assert any(first in p and "hash" in p for p in problems)
    assert any(second in p and "truncated" in p for p in problems)
    cmd = [sys.executable, "-m", "spanbert_data.cli", "verify", str(copy)]
    cli = subprocess.run(cmd, capture_output=True, text=True)
    assert cli.returncode == 1 and first in cli.stderr and second in cli.stderr


def test_refuses_unrelated_out_dir_and_other_options(built, tmp_path):
    corpus, out, _ = built
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "thesis.tex").write_text("precious")
    with pytest.raises(BuildError, match="not empty"):
        build_dataset(config(corpus, junk), log=lambda m: None)
    assert (junk / "thesis.tex").read_text() == "precious"
    with pytest.raises(BuildError, match="other options"):
        build_dataset(config(corpus, out, mask_epochs=3), log=lambda m: None)


def test_nothing_readable_exits_2_with_one_line(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.bin").write_bytes(bytes(range(256)) * 64)
    (corpus / "empty.txt").write_text("")
    with pytest.raises(CorpusError):
        build_dataset(config(corpus, tmp_path / "o"), log=lambda m: None)
    cli = subprocess.run([sys.executable, "-m", "spanbert_data.cli", "build", "--corpus", str(corpus), "--out",
                          str(tmp_path / "o2"), "--tokenizer", str(VOCAB)], capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 2
    assert "Traceback" not in cli.stderr
    assert cli.stderr.strip().splitlines()[-1].startswith("error: ")


def test_manifest_paths_must_stay_inside(built, tmp_path):
    _, out, _ = built
    copy = tmp_path / "evil"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"]["train"][0]["path"] = "../../etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="leaves the dataset"):
        load_manifest(copy)
