"""A dataset's Arrow IPC files and its manifest: writing and memory-mapping shards, loading and verifying
`manifest.json` (docs/FORMAT.md). Files are written atomically (files.atomic_path)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from spanbert_data.errors import DatasetError
from spanbert_data.files import atomic_path, sha256_file
from spanbert_data.layout import FORMAT_NAME, MANIFEST, READABLE_VERSIONS
from spanbert_data.location import Location


def write_arrow_file(path: str | os.PathLike, batch: pa.RecordBatch) -> dict:
    """Write one record batch as an Arrow IPC *file* atomically; return {"bytes", "sha256"} of what was written."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
    return {"bytes": size, "sha256": digest}


def read_arrow_file(path: str | os.PathLike) -> pa.RecordBatch:
    """Memory-map an Arrow IPC file written by `write_arrow_file` and return its single record batch (zero-copy)."""
    path = Path(path)
    try:
        source = pa.memory_map(str(path), "r")
        reader = pa.ipc.open_file(source)
        if reader.num_record_batches != 1:
            raise DatasetError(f"{path}: expected 1 record batch, found {reader.num_record_batches}")
        return reader.get_batch(0)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing; rebuild the dataset or restore the file") from None
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise DatasetError(f"{path}: not a readable Arrow file ({e}); run `spanbert-data verify` and rebuild") from None


def load_manifest(root) -> dict:
    """Read and validate `manifest.json` of a dataset (a directory, a URL or a Location): format, version, paths."""
    root = Location.of(root)
    text = root.read_bytes(MANIFEST)
    if text is None:
        if root.remote is not None:
            raise DatasetError(f"{root / MANIFEST}: missing — no dataset there, or its build is incomplete; "
                               "run (or re-run) `spanbert-data build` with that --out")  # fmt: skip
        if not root.local.is_dir():
            raise DatasetError(f"{root}: no such dataset directory; build one with `spanbert-data build`")
        raise DatasetError(f"{root / MANIFEST}: missing — the build is incomplete; re-run `spanbert-data build` to "
                           "finish it")  # fmt: skip
    manifest = _parse_manifest(text, root / MANIFEST)
    for entry in manifest_files(manifest):
        root.check(entry["path"])
    return manifest


def _parse_manifest(text: bytes, path) -> dict:
    try:
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); rebuild the dataset") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path}: not a spanbert dataset manifest")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise DatasetError(
            f"{path}: format_version {version!r} is not supported (this spanbert reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); rebuild the dataset with this version"
        )
    return manifest


def manifest_files(manifest: dict) -> list[dict]:
    """Every file entry (store parts and shards) that the manifest vouches for, with path, bytes and sha256."""
    entries = list(manifest.get("store", []))
    for split in ("train", "valid"):
        entries.extend(manifest.get("shards", {}).get(split, []))
    return entries


def verify_dataset(root, threads: int = 8) -> list[str]:
    """Re-hash every file the manifest lists; return one problem line per bad file (empty when all are good).

    Nothing is written: local files are hashed one after the other, objects in a bucket are streamed through the
    hash `threads` at a time."""
    root = Location.of(root)
    manifest = load_manifest(root)
    tok = manifest["tokenizer"]
    checks = [*manifest_files(manifest), {"path": tok["file"], "sha256": tok["sha256"], "bytes": None}]
    with ThreadPoolExecutor(threads if root.remote is not None else 1) as pool:
        found = pool.map(lambda e: root.problem(e["path"], e.get("bytes"), e["sha256"]), checks)
        return [p for p in found if p is not None]
