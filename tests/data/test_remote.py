"""The storage layer without a server: URL handling, refused names, and a whole build → verify → train round trip
through fsspec's in-process `memory://` filesystem (any fsspec protocol works, not only s3:// and gs://). The S3
behaviour, with a real server, is tests/faults/test_object_storage.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spanbert_data.build import build_dataset
from spanbert_data.config import BuildConfig
from spanbert_data.errors import DatasetError, RemoteError
from spanbert_data.location import Location, is_url
from spanbert_data.remote import Remote
from spanbert_data.shards import load_manifest, verify_dataset
from tests.faults.helpers import EXAMPLE, VOCAB, dataset_bytes


def test_only_urls_go_through_fsspec():
    assert is_url("s3://bucket/ds") and is_url("gs://b/x") and is_url("memory://x")
    assert not is_url("data/wiki") and not is_url("/abs/path") and not is_url(Path("s3:/x"))
    assert not is_url("file:///tmp/ds") and Location.of("file:///tmp/ds").local == Path("/tmp/ds")
    assert Location.of("data/wiki").local == Path("data/wiki")


def test_names_that_leave_the_prefix_are_refused():
    remote = Remote("memory://names/ds")
    assert remote.path("epoch-0/part-00000.arrow") == "/names/ds/epoch-0/part-00000.arrow"
    for bad in ("../x.arrow", "a/../../x.arrow"):
        with pytest.raises(DatasetError, match="leaves the dataset directory"):
            remote.path(bad)
    for bad in ("/abs.arrow", "a//b.arrow", "./a.arrow", "a\\b.arrow", ""):
        with pytest.raises(DatasetError, match="must be relative"):
            remote.path(bad)


def test_a_protocol_without_its_filesystem_names_what_to_install():
    with pytest.raises(RemoteError, match=r"abfs://c/ds: reading abfs:// needs its fsspec filesystem: install"):
        Remote("abfs://c/ds")
    with pytest.raises(RemoteError, match="cannot open"):
        Remote("nosuchprotocol://x/ds")


def test_build_verify_and_train_through_memory_filesystem(tmp_path, monkeypatch):
    monkeypatch.setenv("SPANBERT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b"".join(EXAMPLE.read_bytes().splitlines(keepends=True)[:6]))
    options = dict(corpus=corpus, tokenizer=VOCAB, max_seq_len=64, rows_per_shard=64, mask_epochs=2, unit_bytes=1 << 17,
                   workers=1)  # in-process: these tests are about the storage, not the workers
    local = build_dataset(BuildConfig(out=tmp_path / "local", **options), log=lambda m: None)
    remote = build_dataset(BuildConfig(out="memory://rt/ds", **options), log=lambda m: None)
    assert remote == local
    store = Remote("memory://rt/ds")
    objects = {p[len("/rt/ds/") :]: store.fs.cat_file(p) for p in store.fs.find("/rt/ds")}
    expected = dataset_bytes(tmp_path / "local")
    for rel in [r for r in objects if r.startswith("store/") and r.endswith(".json")]:
        marker = json.loads(objects[rel])
        marker.pop("seconds")
        objects[rel] = json.dumps(marker).encode()
    assert objects == expected
    assert verify_dataset("memory://rt/ds") == [] and load_manifest("memory://rt/ds") == local

    from spanbert_train.data import Dataset, TrainLoader

    ids = {}
    for root in (tmp_path / "local", "memory://rt/ds"):
        ds = Dataset(root)
        loader = TrainLoader(ds, 16, 8, rank=0, world=1, seed=1)
        step = next(iter(loader))
        loader.close()
        ds.close()
        ids[str(root)] = [b.input_ids for b in step.micro_batches]
    here, there = ids.values()
    assert len(here) == 2 and all((a == b).all() for a, b in zip(here, there, strict=True))

    store.fs.pipe_file("/rt/ds/epoch-1/part-00000.arrow", b"x" * len(objects["epoch-1/part-00000.arrow"]))
    assert verify_dataset("memory://rt/ds") == [
        "memory://rt/ds/epoch-1/part-00000.arrow: content hash differs from the manifest (corrupt, or replaced by "
        "another object)"
    ]


def test_a_named_work_dir_is_kept_as_a_complete_copy_and_never_emptied(tmp_path, monkeypatch):
    """The default staging directory is removed at the end; a --work-dir the user names is theirs: it ends as a
    complete local dataset, and one holding another build is refused, not emptied."""
    from spanbert_data.errors import BuildError

    monkeypatch.setenv("SPANBERT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b"".join(EXAMPLE.read_bytes().splitlines(keepends=True)[:3]))
    options = dict(corpus=corpus, tokenizer=VOCAB, max_seq_len=64, rows_per_shard=64, workers=1)
    build_dataset(BuildConfig(out=tmp_path / "local", **options), log=lambda m: None)
    build_dataset(BuildConfig(out="memory://wd/a", work_dir=tmp_path / "wd", **options), log=lambda m: None)
    assert dataset_bytes(tmp_path / "wd") == dataset_bytes(tmp_path / "local") and verify_dataset(tmp_path / "wd") == []
    before = dataset_bytes(tmp_path / "wd")
    with pytest.raises(BuildError, match="--work-dir holds another build"):
        build_dataset(BuildConfig(out="memory://wd/b", work_dir=tmp_path / "wd", **options, seed=7), log=lambda m: None)
    assert dataset_bytes(tmp_path / "wd") == before
    build_dataset(BuildConfig(out="memory://wd/c", **options), log=lambda m: None)
    assert not any((tmp_path / "cache" / "build").iterdir())  # the default staging directory is gone
