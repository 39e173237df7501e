"""A corpus in a bucket (issue 21), against a real S3 server on 127.0.0.1 (moto, tests/faults/s3_server.py): the CLI
runs as a user runs it, with the AWS variables set and `--corpus s3://...` given; nothing of ours is mocked.

- Parquet (several row-group units), JSON Lines (byte-range units) and a gzip file (read by the driver) in a bucket
  build the bytes of the same files on disk, also given as two glob patterns and read by two workers, and with the
  default options (a vocabulary trained on the corpus);
- a truncated object among good ones is skipped, named and counted; a corpus with no readable object, a URL with
  nothing under it and missing credentials are one line each.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("moto.server")  # the `test` extra installs moto[server] and s3fs
pytest.importorskip("s3fs")

from tests.faults.helpers import (  # noqa: E402
    DATA_CLI,
    EXAMPLE,
    VOCAB,
    assert_clean_error,
    dataset_bytes,
    run,
    shard_bytes,
)
from tests.faults.s3_server import BUCKET  # noqa: E402

# Small units: the Parquet file is cut into row-group units, the JSON Lines file into byte ranges.
OPTIONS = ["--tokenizer", VOCAB, "--max-seq-len", "128", "--unit-mb", "0.08", "--rows-per-shard", "400"]
ARTICLES = [json.loads(line)["text"] for line in EXAMPLE.read_text().splitlines()[:30]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, s3) -> Path:
    """Three containers of real articles on disk, and the same files under s3://spanbert/corpus/."""
    root = tmp_path_factory.mktemp("corpus") / "c"
    root.mkdir()
    pq.write_table(pa.table({"text": ARTICLES[:14], "id": range(14)}), root / "a.parquet", row_group_size=2)
    (root / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ARTICLES[14:24]))
    (root / "c.jsonl.gz").write_bytes(gzip.compress(
        "".join(json.dumps({"text": t}) + "\n" for t in ARTICLES[24:]).encode(), mtime=0))  # fmt: skip
    for path in sorted(root.iterdir()):
        s3.fs.pipe_file(f"{BUCKET}/corpus/{path.name}", path.read_bytes())
    return root


def build(corpus: list, out: Path, env: dict, *extra) -> dict:
    done = run([*DATA_CLI, "build", *(a for c in corpus for a in ("--corpus", c)), "--out", out, *OPTIONS, *extra],
               env=env)  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads((out / "manifest.json").read_text())


def test_a_corpus_in_a_bucket_builds_the_bytes_of_the_same_files_on_disk(s3, corpus, tmp_path):
    local = build([corpus], tmp_path / "local", s3.env)
    kinds = {source[0] for source in json.loads((tmp_path / "local" / "build.json").read_text())["sources"]}
    assert {"table", "range", "stream"} <= kinds and local["corpus"]["documents"] == len(ARTICLES)
    build([s3.url("corpus")], tmp_path / "remote", s3.env)
    assert dataset_bytes(tmp_path / "remote") == dataset_bytes(tmp_path / "local")
    # Two globs (two --corpus options, read in the order given: the same documents in the same order) and two
    # workers, each reading its units itself: other units, the same shards.
    build([s3.url("corpus/a.*"), s3.url("corpus/*.jsonl*")], tmp_path / "globs", s3.env, "--workers", "2")
    assert shard_bytes(dataset_bytes(tmp_path / "globs")) == shard_bytes(dataset_bytes(tmp_path / "local"))


def test_the_default_command_on_a_bucket_builds_the_bytes_of_the_local_files(s3, corpus, tmp_path):
    """As a user types it, no option but --corpus and --out: the vocabulary trained on the corpus, every core, the
    default units and row length; the bucket's objects give the dataset of the same files on disk."""
    for name, where in (("local", corpus), ("remote", s3.url("corpus"))):
        done = run([*DATA_CLI, "build", "--corpus", where, "--out", tmp_path / name], env=s3.env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert dataset_bytes(tmp_path / "remote") == dataset_bytes(tmp_path / "local")


def test_a_truncated_object_among_good_ones_is_skipped_named_and_counted(s3, corpus, tmp_path):
    good = (corpus / "a.parquet").read_bytes()
    s3.fs.pipe_file(f"{BUCKET}/cut/a.parquet", good)
    s3.fs.pipe_file(f"{BUCKET}/cut/b.parquet", good[: len(good) // 2])  # an upload cut short
    manifest = build([s3.url("cut")], tmp_path / "out", s3.env)
    assert manifest["corpus"]["skipped"] == {"truncated": 1} and manifest["corpus"]["documents"] == 14
    done = run([*DATA_CLI, "build", "--corpus", s3.url("cut/b.parquet"), "--out", tmp_path / "o2", *OPTIONS],
               env=s3.env)  # fmt: skip
    line = assert_clean_error(done, s3.url("cut/b.parquet"), "truncated: 1")
    assert "no readable text" in line


def test_an_empty_prefix_and_missing_credentials_are_one_line(s3, corpus, tmp_path):
    done = run([*DATA_CLI, "build", "--corpus", s3.url("nothing"), "--out", tmp_path / "o1", *OPTIONS], env=s3.env)
    assert_clean_error(done, s3.url("nothing"), "no objects there")
    env = {k: v for k, v in s3.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    done = run([*DATA_CLI, "build", "--corpus", s3.url("corpus"), "--out", tmp_path / "o2", *OPTIONS], env=env)
    assert_clean_error(done, s3.url("corpus"), "credentials")
