"""Object storage behind a Location: `s3://`, `gs://` or any other fsspec URL (docs/FORMAT.md, "Object storage").

A `Remote` is a dataset "directory" in a bucket: object names are the manifest's relative paths under the URL's
prefix. Only `spanbert_data.location` makes one (for a URL); local paths never go through fsspec, which is
imported only then. Credentials and endpoints come from where the storage's own SDK looks (AWS_* variables,
~/.aws, instance roles, `AWS_ENDPOINT_URL` for S3-compatible stores; GOOGLE_APPLICATION_CREDENTIALS or gcloud's
default login for GCS), and `--storage-options JSON` passes anything else to the fsspec filesystem.

Object stores have no rename, but a PUT is atomic: an object is either absent or complete. Every operation
here is retried with exponential backoff on network errors (inside each attempt the SDK may retry on its
own; `AWS_MAX_ATTEMPTS` sets that for S3); a missing object or a refused permission is not retried.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from spanbert_data.errors import DatasetError, RemoteError
from spanbert_data.files import json_object
from spanbert_data.layout import MANIFEST
from spanbert_data.progress import stderr

RETRIES = 6  # attempts per operation: waits of 0.5, 1, 2, 4 and 8 s between them (15.5 s in all)
BACKOFF = 0.5
MAX_BACKOFF = 8.0
CHUNK = 8 << 20  # bytes per read when streaming an object (one ranged GET each on S3 and GCS)

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}  # protocol -> pip extra of spanbert
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, InterruptedError)


def parse_storage_options(text: str | None) -> dict:
    """`--storage-options JSON` → a dict of keyword arguments for the fsspec filesystem."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--storage-options is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def reason(e: BaseException) -> str:
    """The first line of an exception, for a one-line message."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _permanent(e: BaseException) -> bool:
    return isinstance(e, PERMANENT + (RemoteError,)) or "Credentials" in type(e).__name__


class Remote:
    """A dataset prefix in object storage, e.g. s3://bucket/data/wiki (see the module docstring)."""

    def __init__(self, url: str, storage_options: dict | None = None, log: Callable[[str], None] = stderr,
                 retries: int = RETRIES, backoff: float = BACKOFF):  # fmt: skip
        try:
            import fsspec.core
        except ImportError:
            raise RemoteError(f"{url}: remote datasets need fsspec: pip install 'spanbert[s3]' or 'spanbert[gcs]'") \
                from None
        self.url = url.rstrip("/")
        self.protocol = self.url.split("://", 1)[0].lower()
        self.log, self.retries, self.backoff = log, retries, backoff
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except ImportError:
            extra = EXTRAS.get(self.protocol)
            how = f"pip install 'spanbert[{extra}]'" if extra else f"install the fsspec implementation of {self.protocol}://"
            raise RemoteError(f"{self.url}: reading {self.protocol}:// needs its fsspec filesystem: {how}") from None
        except (ValueError, TypeError) as e:
            raise RemoteError(f"{self.url}: cannot open ({reason(e)}); check the URL and --storage-options") from None
        self.root = self.root.rstrip("/")

    # ------------------------------------------------------------------------------------------ names
    def __str__(self) -> str:
        return self.url

    def __truediv__(self, rel: str) -> str:
        """The URL of an object (for messages): `remote / "manifest.json"`."""
        return f"{self.url}/{rel}"

    def path(self, rel: str) -> str:
        """The filesystem path of object `rel`, refusing names that leave the prefix (as location.resolve_inside)."""
        parts = rel.split("/") if isinstance(rel, str) else []
        if ".." in parts:
            raise DatasetError(f"{self / MANIFEST}: shard path {rel!r} leaves the dataset directory; refusing it")
        if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".") for p in parts):
            raise DatasetError(f"{self / MANIFEST}: invalid shard path {rel!r} (must be relative, inside the dataset)")
        return posixpath.join(self.root, rel)

    # ------------------------------------------------------------------------------------------ retries
    def retrying(self, fn: Callable, what: str, stop: threading.Event | None = None):
        """fn() with retries and exponential backoff on network errors; RemoteError naming `what` when they run
        out. A missing object (FileNotFoundError) or a refused permission passes through at once; `stop` set
        ends the waiting with InterruptedError."""
        for attempt in range(self.retries):
            try:
                return fn()
            except BaseException as e:
                if not isinstance(e, Exception) or _permanent(e):
                    raise
                if attempt == self.retries - 1:
                    raise RemoteError(f"{what}: failed {self.retries} times, last with {reason(e)}; check the "
                                      "network, the endpoint and your credentials") from None  # fmt: skip
                wait = min(MAX_BACKOFF, self.backoff * 2**attempt)
                self.log(f"warning: {what}: {reason(e)}; retry {attempt + 1} of {self.retries - 1} in {wait:.1f} s")
                if stop is None:
                    time.sleep(wait)
                elif stop.wait(wait):
                    raise InterruptedError("stopped") from None
        raise AssertionError("unreachable")

    def _call(self, fn: Callable, what: str, missing: str = "not found; check that the bucket and prefix exist",
              stop: threading.Event | None = None):  # fmt: skip
        """`retrying`, with every failure that retrying cannot help turned into one line naming the URL."""
        try:
            return self.retrying(fn, what, stop)
        except RemoteError:
            raise
        except FileNotFoundError:
            raise RemoteError(f"{what}: {missing}") from None
        except PermissionError as e:
            raise RemoteError(f"{what}: permission denied ({reason(e)}); check your credentials") from None
        except Exception as e:
            if "Credentials" in type(e).__name__:
                raise RemoteError(f"{what}: {reason(e)}; set the storage's credentials (README, "
                                  "\"Data in object storage\")") from None  # fmt: skip
            raise

    # ------------------------------------------------------------------------------------------ reading
    def size(self, rel: str) -> int | None:
        """The size of object `rel`, or None when it does not exist."""
        path = self.path(rel)

        def info():
            try:
                return int(self.fs.info(path)["size"])
            except FileNotFoundError:
                return None

        return self._call(info, self / rel)

    def read_bytes(self, rel: str) -> bytes | None:
        """The whole (small) object `rel`, or None when it does not exist."""
        path = self.path(rel)

        def cat():
            try:
                return self.fs.cat_file(path)
            except FileNotFoundError:
                return None

        return self._call(cat, self / rel)

    def read_json(self, rel: str) -> dict | None:
        """Object `rel` parsed as a JSON object; None when missing or not a JSON object."""
        return json_object(self.read_bytes(rel))

    def list(self, prefix: str = "") -> list[str]:
        """The names of every object under `prefix` (relative to the dataset's prefix), sorted."""
        top = self.path(prefix) if prefix else self.root

        def find():
            self.fs.invalidate_cache()  # a listing cached earlier may miss objects written since
            try:
                return self.fs.find(top)
            except FileNotFoundError:
                return []

        found = self._call(find, self / prefix if prefix else self.url)
        return sorted(posixpath.relpath(p, self.root) for p in found)

    def open(self, rel: str) -> BinaryIO:
        """Object `rel` for reading (ranged GETs as it is read); a missing object raises RemoteError naming it."""
        path = self.path(rel)
        return self._call(lambda: self.fs.open(path, "rb", block_size=CHUNK, cache_type="none"), self / rel, "missing")

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes start..end-1 of object `rel` (one ranged GET); a missing object raises RemoteError naming it."""
        path = self.path(rel)
        return self._call(lambda: self.fs.cat_file(path, start=start, end=end), self / rel, "missing")

    def is_empty(self) -> bool:
        """True when nothing exists under the prefix (a new dataset may be written there)."""

        def listing():
            try:
                found = self.fs.ls(self.root, detail=False)  # one level is enough to tell
            except FileNotFoundError:
                return True
            finally:
                self.fs.invalidate_cache()
            return not found

        return self._call(listing, self.url)

    def stream(self, rel: str, size: int | None, sink: Callable[[bytes], None] | None = None,
               stop: threading.Event | None = None) -> tuple[int, str]:  # fmt: skip
        """Read object `rel` once, start to end, in CHUNK reads; hand each piece to `sink`. Returns (bytes, sha256).
        Not retried here: the callers retry the whole object."""
        h = hashlib.sha256()
        n = 0
        with self.fs.open(self.path(rel), "rb", block_size=CHUNK, cache_type="none") as f:
            while piece := f.read(CHUNK):
                if stop is not None and stop.is_set():
                    raise InterruptedError("stopped")
                h.update(piece)
                n += len(piece)
                if sink is not None:
                    sink(piece)
                if size is not None and n > size:
                    break  # longer than the manifest says: no need to read the rest
        return n, h.hexdigest()

    def problem(self, rel: str, size: int | None, sha256: str) -> str | None:
        """Why object `rel` is not the one the manifest recorded (one line naming its URL), or None; streamed,
        nothing written to disk."""
        try:
            n, digest = self._call(lambda: self.stream(rel, size), self / rel, missing="missing")
        except RemoteError as e:
            if str(e) == f"{self / rel}: missing":
                return str(e)
            raise  # credentials, permissions, the network: not about this object, one line for all
        if size is not None and n != size:
            return f"{self / rel}: {n if n <= size else 'more than ' + str(size)} bytes, manifest says {size} " \
                   "(truncated or replaced)"  # fmt: skip
        if digest != sha256:
            return f"{self / rel}: content hash differs from the manifest (corrupt, or replaced by another object)"
        return None

    def download(self, rel: str, dest: Path, size: int | None, sha256: str, stop: threading.Event | None = None,
                 hash_retries: int = 2) -> None:  # fmt: skip
        """Copy object `rel` to the local file `dest` (created or truncated), verifying its size and SHA-256 while
        it streams; network errors are retried with backoff, a hash mismatch once more (a transfer may garble
        bytes), then DatasetError names the URL. The caller renames `dest` into place."""
        for attempt in range(hash_retries):
            with open(dest, "wb") as out:
                n, digest = self._call(lambda: self._stream_to(rel, size, out, stop), self / rel,
                                       "the object is missing; restore it or rebuild the dataset", stop)
            if size is not None and n != size:
                problem = f"{n if n <= size else 'more than ' + str(size)} bytes, manifest says {size} (truncated " \
                          "or replaced)"  # fmt: skip
            elif digest != sha256:
                problem = "content hash differs from the manifest (corrupt, or replaced by another object)"
            else:
                return
            if attempt + 1 < hash_retries:
                self.log(f"warning: {self / rel}: {problem}; downloading it once more")
        raise RemoteError(f"{self / rel}: {problem}; restore the object or rebuild the dataset "
                          f"(`spanbert-data verify {self.url}` lists every bad object)")  # fmt: skip

    def _stream_to(self, rel: str, size: int | None, out, stop) -> tuple[int, str]:
        out.seek(0)
        out.truncate()
        return self.stream(rel, size, out.write, stop)

    # ------------------------------------------------------------------------------------------ writing
    def put_file(self, rel: str, local: Path) -> None:
        """Upload a local file as object `rel` (one atomic PUT, or a multipart upload that appears only when
        complete), then check that the object has the file's size."""
        size = local.stat().st_size
        path = self.path(rel)

        def put():
            self.fs.put_file(str(local), path)
            self.fs.invalidate_cache(path)
            got = int(self.fs.info(path)["size"])
            if got != size:
                raise OSError(f"uploaded object has {got} bytes, the file {size}")

        self._call(put, self / rel)

    def put_bytes(self, rel: str, data: bytes) -> None:
        """Write `data` as object `rel` (one atomic PUT), then check that the object has its size."""
        path = self.path(rel)

        def pipe():
            self.fs.pipe_file(path, data)
            self.fs.invalidate_cache(path)
            got = int(self.fs.info(path)["size"])
            if got != len(data):
                raise OSError(f"uploaded object has {got} bytes, the data {len(data)}")

        self._call(pipe, self / rel)

