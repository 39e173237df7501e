"""The storage seam (spanbert_data/location.py): a local directory and an fsspec URL answer every operation alike.

The URL side runs on fsspec's in-process `memory://` filesystem (the S3 behaviour, with a real server, is
tests/faults/test_object_storage.py)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

from spanbert_data.errors import DatasetError
from spanbert_data.location import Location

_names = itertools.count()


@pytest.fixture(params=["local", "memory"])
def where(request, tmp_path) -> Location:
    if request.param == "local":
        return Location.of(tmp_path / "ds")
    return Location.of(f"memory://loc-{next(_names)}/ds")


def test_the_same_files_read_back_the_same_way(where, tmp_path):
    assert where.is_empty() and where.list() == [] and not where.exists("a.bin")
    assert where.read_bytes("a.bin") is None and where.size("a.bin") is None and where.read_json("m.json") is None
    where.put_bytes("a.bin", b"0123456789")
    source = tmp_path / "source.json"
    source.write_bytes(b'{"k": 1}')
    where.put_file("sub/m.json", source)
    where.put_bytes("sub/bad.json", b"[1, 2]")
    assert not where.is_empty()
    assert where.list() == ["a.bin", "sub/bad.json", "sub/m.json"]
    assert where.list("sub") == ["sub/bad.json", "sub/m.json"]
    assert where.exists("a.bin") and where.size("a.bin") == 10 and where.read_bytes("a.bin") == b"0123456789"
    assert where.read_range("a.bin", 3, 7) == b"3456"
    with where.open("a.bin") as f:
        assert f.read() == b"0123456789"
    assert where.read_json("sub/m.json") == {"k": 1} and where.read_json("sub/bad.json") is None  # not an object
    where.put_bytes("a.bin", b"replaced")  # a put replaces the file whole
    assert where.read_bytes("a.bin") == b"replaced"


def test_a_file_is_checked_and_downloaded_against_its_manifest_entry(where, tmp_path):
    data = b"shard bytes" * 100
    where.put_bytes("epoch-0/part.arrow", data)
    sha = hashlib.sha256(data).hexdigest()
    assert where.problem("epoch-0/part.arrow", len(data), sha) is None
    assert "content hash differs" in where.problem("epoch-0/part.arrow", len(data), "0" * 64)
    short = where.problem("epoch-0/part.arrow", len(data) + 1, sha)
    assert f"{len(data)} bytes, manifest says {len(data) + 1}" in short
    assert where.problem("epoch-0/missing.arrow", 1, sha).endswith("missing")
    where.download("epoch-0/part.arrow", tmp_path / "copy", len(data), sha)
    assert (tmp_path / "copy").read_bytes() == data
    with pytest.raises(DatasetError, match="part.arrow"):
        where.download("epoch-0/part.arrow", tmp_path / "copy2", len(data), "0" * 64)


def test_names_leaving_the_dataset_are_refused_and_local_data_stays_in_place(where):
    for bad in ("../x.arrow", "a/../../x.arrow"):
        with pytest.raises(DatasetError, match="leaves the dataset directory"):
            where.check(bad)
    if where.local is None:
        assert where.local_path("a.bin") is None and str(where).startswith("memory://")
        return
    where.put_bytes("a.bin", b"x")
    assert where.local_path("a.bin") == (where.local / "a.bin").resolve()  # memory-mapped where it is
    assert where.local_path() == where.local and where / "a.bin" == str(where.local / "a.bin")


def test_of_takes_a_location_a_path_or_a_url():
    here = Location.of("data/wiki")
    assert Location.of(here) is here and here.local == Path("data/wiki") and here.remote is None
    assert Location.of("file:///tmp/ds").local == Path("/tmp/ds")
    there = Location.of("memory://of/ds/")
    assert there.local is None and there.url == "memory://of/ds" and there / "manifest.json" == "memory://of/ds/manifest.json"
