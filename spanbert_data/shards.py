"""A dataset's Arrow IPC files and its manifest: writing and memory-mapping shards, loading and verifying
`manifest.json` (docs/FORMAT.md). Files are written atomically (files.atomic_path)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa

from spanbert_data.errors import DatasetError
from spanbert_data.files import atomic_path, sha256_file
from spanbert_data.layout import FORMAT_NAME, MANIFEST, READABLE_VERSIONS


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


def resolve_inside(root: str | os.PathLike, rel: str) -> Path:
    """Join a manifest path to the dataset root, refusing absolute paths and paths that leave the root."""
    root = Path(root).resolve()
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\\" in rel:
        raise DatasetError(f"{root / MANIFEST}: invalid shard path {rel!r} (must be relative, inside the dataset)")
    full = (root / rel).resolve()
    if full != root and root not in full.parents:
        raise DatasetError(f"{root / MANIFEST}: shard path {rel!r} leaves the dataset directory; refusing it")
    return full


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path) -> bool:
    """True for an fsspec URL (s3://, gs://, ...) other than file://; local paths never go through fsspec."""
    return isinstance(path, str) and bool(_URL.match(path)) and not path.lower().startswith("file://")


def location(path, storage_options: dict | None = None):
    """Where a dataset lives: a `spanbert_data.remote.Remote` for a URL (fsspec is imported only then), else a
    local Path (a file:// URL is a local path)."""
    if type(path).__name__ == "Remote":
        return path
    if is_url(path):
        from spanbert_data.remote import Remote

        return Remote(path, storage_options)
    if isinstance(path, str) and path.lower().startswith("file://"):
        path = path[len("file://") :]
    return Path(path)


def load_manifest(root) -> dict:
    """Read and validate `manifest.json` of a dataset directory or URL (format, version, paths)."""
    root = location(root)
    if not isinstance(root, Path):  # object storage
        text = root.read_bytes(MANIFEST)
        if text is None:
            raise DatasetError(f"{root / MANIFEST}: missing — no dataset there, or its build is incomplete; "
                               "run (or re-run) `spanbert-data build` with that --out")  # fmt: skip
        manifest = _parse_manifest(text, root / MANIFEST)
        for entry in manifest_files(manifest):
            root.path(entry["path"])
        return manifest
    path = root / MANIFEST
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory; build one with `spanbert-data build`")
    if not path.is_file():
        raise DatasetError(f"{path}: missing — the build is incomplete; re-run `spanbert-data build` to finish it")
    manifest = _parse_manifest(path.read_bytes(), path)
    for entry in manifest_files(manifest):
        resolve_inside(root, entry["path"])
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

    A dataset in object storage is verified by streaming every object through the hash (`threads` at a time);
    nothing is written to disk."""
    root = location(root)
    manifest = load_manifest(root)
    problems = []
    tok = manifest["tokenizer"]
    checks = [*manifest_files(manifest), {"path": tok["file"], "sha256": tok["sha256"], "bytes": None}]
    if not isinstance(root, Path):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            found = pool.map(lambda e: root.problem(e["path"], e.get("bytes"), e["sha256"]), checks)
            return [p for p in found if p is not None]
    for entry in checks:
        path = resolve_inside(root, entry["path"])
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if entry.get("bytes") is not None and size != entry["bytes"]:
            problems.append(f"{path}: {size} bytes, manifest says {entry['bytes']} (truncated or replaced)")
            continue
        if sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: content hash differs from the manifest (corrupt)")
    return problems
