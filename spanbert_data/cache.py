"""A bounded local cache of verified dataset objects, shared by every process that uses the same directory.

Shards of a dataset in object storage (a `Location` of a URL) are downloaded here, checked against the
manifest's SHA-256 while they stream, and only then renamed to their final name, so a file under its final
name is always a verified copy; the trainer then memory-maps it like a local shard. Objects are stored by
content hash, so the ranks of a machine (and any runs or datasets sharing shards) download each object once.

    DIR/objects/<sha256>                       verified objects
    DIR/tmp/<sha256>.<size>.<host>.<pid>.<n>   downloads in flight; each reserves its full size
    DIR/holds/<sha256>.<host>.<pid>            "this process needs that object": it is never evicted
    DIR/lock                                   flock for the bookkeeping (sizes, reservations, eviction)

The limit: a download starts only once objects + reservations + its size fit in `limit` bytes, after
evicting objects nobody holds, least recently used first; otherwise it waits until another holder lets
go. The bytes in the directory therefore never exceed the limit. Files of processes that died (their pid
is gone on this host) are cleaned up. The directory should be on a local disk (flock).
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from spanbert_data.errors import DatasetError
from spanbert_data.files import sha256_file
from spanbert_data.location import Location
from spanbert_data.progress import stderr

GB = 10**9
DOWNLOAD_THREADS = 4
WAIT_NOTE_S = 30.0  # say once that a download waits for space after this long


def default_cache_dir() -> Path:
    """$SPANBERT_CACHE, else $XDG_CACHE_HOME/spanbert, else ~/.cache/spanbert."""
    if os.environ.get("SPANBERT_CACHE"):
        return Path(os.environ["SPANBERT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spanbert"


@dataclass(frozen=True)
class CacheItem:
    """One object of a remote dataset: where it is (`location`, `rel`) and what it must be (size, sha256)."""

    location: Location
    rel: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return self.location / self.rel


class CacheClosed(Exception):
    """The cache was closed while a download waited or ran (the run is ending)."""


class ShardCache:
    """Download, verify and keep remote objects within `limit` bytes of `directory` (see the module docstring).

    `fetch(item)` takes a hold on the object and starts its download in a pool thread (non-blocking; returns a
    Future of the local path); `release(item)` lets go of it, which makes it evictable (it stays cached until
    the space is needed). A download that keeps failing, or whose bytes do not match the manifest, fails its
    Future with a DatasetError naming the object's URL; every later fetch of it raises the same error."""

    def __init__(self, directory: str | os.PathLike, limit: int, log: Callable[[str], None] | None = None,
                 threads: int = DOWNLOAD_THREADS, verify_cached: bool = True):  # fmt: skip
        self.dir = Path(directory)
        self.limit = int(limit)
        # A copy found in the cache (downloaded by an earlier run or another process) is hashed again before this
        # process first uses it, as a local shard would be: the disk under the cache can damage bytes too.
        self.verify_cached = verify_cached
        self._verified: set[str] = set()
        self.log = log or stderr
        for sub in ("objects", "tmp", "holds"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._host = socket.gethostname().replace(".", "_")
        self._me = f"{self._host}.{os.getpid()}"
        self._lockfile = open(self.dir / "lock", "a+")  # held for the cache's life
        self._tlock = threading.RLock()  # flock excludes processes; this excludes our own threads
        self._refs: dict[str, int] = {}
        self._futures: dict[str, Future] = {}
        self._seq = itertools.count()
        self._closed = threading.Event()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="spanbert-download")
        self.downloaded = 0  # objects this process downloaded (the rest were found in the cache)
        atexit.register(self.close)
        with self._locked():
            self._clean_dead()

    # ------------------------------------------------------------------------------------------ public
    def fetch(self, item: CacheItem) -> Future:
        """Hold `item` and make sure it is (being) downloaded; the Future gives its local path."""
        with self._tlock:
            if self._closed.is_set():
                raise CacheClosed("the cache is closed")
            refs = self._refs.get(item.sha256, 0)
            if refs == 0:
                with self._locked():
                    (self.dir / "holds" / f"{item.sha256}.{self._me}").touch()
            self._refs[item.sha256] = refs + 1
            fut = self._futures.get(item.sha256)
            if fut is None:
                fut = self._futures[item.sha256] = self._pool.submit(self._obtain, item)
            return fut

    def release(self, item: CacheItem) -> None:
        """Drop one hold on `item`; with none left, the object may be evicted when space is needed."""
        with self._tlock:
            refs = self._refs.get(item.sha256, 0) - 1
            if refs > 0:
                self._refs[item.sha256] = refs
                return
            self._refs.pop(item.sha256, None)
            fut = self._futures.get(item.sha256)
            if fut is not None and fut.done() and fut.exception() is None:
                self._futures.pop(item.sha256)  # a failure stays remembered
            with self._locked():
                (self.dir / "holds" / f"{item.sha256}.{self._me}").unlink(missing_ok=True)

    def usage(self) -> int:
        """Bytes of verified objects plus the reservations of downloads in flight (every process)."""
        used = sum(p.stat().st_size for p in _files(self.dir / "objects"))
        return used + sum(_reserved(p) for p in _files(self.dir / "tmp"))

    def cached_bytes(self, items) -> int:
        """Bytes of the given items already in the cache (they need no space and no download)."""
        return sum(i.size for i in {i.sha256: i for i in items}.values() if (self.dir / "objects" / i.sha256).is_file())

    def close(self) -> None:
        """Stop downloading, drop every hold of this process and its partial downloads (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._tlock:
            self._refs.clear()
            with self._locked():
                for path in _files(self.dir / "holds", f"*.{self._me}"):
                    path.unlink(missing_ok=True)
            self._lockfile.close()
        atexit.unregister(self.close)

    # ------------------------------------------------------------------------------------------ inside
    def _locked(self):
        return _FileLock(self._lockfile, self._tlock)

    def _obtain(self, item: CacheItem) -> Path:
        """In a pool thread: the verified local copy of `item`, downloading it once space allows."""
        final = self.dir / "objects" / item.sha256
        waited_since = time.monotonic()
        noted = False
        while True:
            if self._closed.is_set():
                raise CacheClosed("the cache is closed")
            with self._locked():
                found = final.is_file()
                tmp = None
                if found:
                    os.utime(final)  # least recently used goes first
                elif not self._in_flight(item.sha256) and self._make_room(item.size):
                    tmp = self.dir / "tmp" / f"{item.sha256}.{item.size}.{self._me}.{next(self._seq)}"
                    tmp.touch()  # the reservation: counted at its full size from now on
            if found:  # held by us (fetch took the hold), so never evicted while it is hashed here
                if self._check_cached(item, final):
                    return final
                continue
            if tmp is not None:
                break
            if not noted and time.monotonic() - waited_since > WAIT_NOTE_S:
                noted = True
                self.log(f"note: {item.name} waits for space in {self.dir} (limit {self.limit / GB:.2f} GB, "
                         f"{self.usage() / GB:.2f} GB held by running processes)")  # fmt: skip
            self._closed.wait(0.1)
        try:
            item.location.download(item.rel, tmp, item.size, item.sha256, stop=self._closed)
            with self._locked():  # a reader of the bookkeeping under the lock sees it as a reservation or an object
                os.replace(tmp, final)
            self.downloaded += 1
            self._verified.add(item.sha256)
            return final
        except InterruptedError:
            raise CacheClosed("the cache is closed") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _check_cached(self, item: CacheItem, path: Path) -> bool:
        """Whether the cached copy may be used: hashed once per process (verify_cached); a damaged copy is deleted
        (then downloaded again) with a warning naming it."""
        if not self.verify_cached or item.sha256 in self._verified:
            return True
        try:
            size = path.stat().st_size
            problem = None if size == item.size else f"{size} bytes, the manifest says {item.size}"
            problem = problem or (None if sha256_file(path) == item.sha256 else "content hash differs")
        except FileNotFoundError:
            return False  # evicted by another process between the check and the hash: fetch it again
        if problem is None:
            self._verified.add(item.sha256)
            return True
        self.log(f"warning: {path}, the cached copy of {item.name}, is damaged ({problem}); downloading it again")
        with self._locked():
            path.unlink(missing_ok=True)
        return False

    def _in_flight(self, sha: str) -> bool:
        """Another live download of this object (this or another process): wait for it instead of a second."""
        return any(self._alive(p.name.split(".", 2)[2]) for p in _files(self.dir / "tmp", f"{sha}.*"))

    def _make_room(self, size: int) -> bool:
        """Evict unheld objects, least recently used first, until `size` more bytes fit; False if they cannot."""
        if size > self.limit:
            return False
        used = self.usage()
        if used + size <= self.limit:
            return True
        self._clean_dead()
        used = self.usage()
        held = {p.name.split(".", 1)[0] for p in _files(self.dir / "holds")}
        unheld = [p for p in _files(self.dir / "objects") if p.name not in held]
        for path in sorted(unheld, key=lambda p: p.stat().st_mtime):
            if used + size <= self.limit:
                break
            used -= path.stat().st_size
            path.unlink(missing_ok=True)
        return used + size <= self.limit

    def _alive(self, owner: str) -> bool:
        """Whether the process `<host>.<pid>[.n]` is running (always True for another host's: not ours to judge)."""
        host, _, rest = owner.partition(".")
        if host != self._host:
            return True
        pid = int(rest.split(".")[0]) if rest.split(".")[0].isdigit() else -1
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OverflowError, ValueError):
            return True
        return True

    def _clean_dead(self) -> None:
        """Remove the holds and partial downloads of processes that died on this host (killed runs)."""
        for path in _files(self.dir / "holds"):
            if not self._alive(path.name.split(".", 1)[1]):
                path.unlink(missing_ok=True)
        for path in _files(self.dir / "tmp"):
            if not self._alive(path.name.split(".", 2)[2]):
                path.unlink(missing_ok=True)


class _FileLock:
    """Both locks at once: the thread lock, then flock on the cache's lock file."""

    def __init__(self, file, tlock):
        self.file, self.tlock = file, tlock

    def __enter__(self):
        self.tlock.acquire()
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.tlock.release()


def _files(folder: Path, pattern: str = "*") -> list[Path]:
    try:
        return [p for p in folder.glob(pattern) if p.is_file()]
    except OSError:
        return []


def _reserved(tmp: Path) -> int:
    """The size a download reserved (its name's second field); a torn name reserves what it holds."""
    try:
        return int(tmp.name.split(".")[1])
    except (IndexError, ValueError):
        return tmp.stat().st_size


def free_bytes(directory: Path) -> int:
    """Free bytes on the filesystem of `directory` (or of its nearest existing parent)."""
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def choose_limit(directory: Path, usage: int, need: int, want: int, limit: int | None, what: str,
                 log: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """The cache limit for a reader that needs `need` bytes cached at once (`what` says of what) and would like
    `want` (room to download ahead). `limit`: the user's --cache-limit in bytes, or None for `want`. Either way
    it is capped by the disk: free space plus what the cache already holds (`usage`, evictable). Raises
    DatasetError, with both sizes, when the limit or the disk cannot hold `need`."""
    if limit is not None and limit < need:
        raise DatasetError(
            f"--cache-limit {limit / GB:.3g} GB is less than the {need / GB:.3g} GB that {what} needs in the cache "
            "at once; raise --cache-limit"
        )
    room = free_bytes(directory) + usage
    chosen = min(limit if limit is not None else want, room)
    if chosen < need:
        raise DatasetError(
            f"{directory}: {room / GB:.3g} GB free (counting what the cache holds), but {what} needs {need / GB:.3g} "
            "GB in the cache at once; free some space or choose another --cache-dir"
        )
    if limit is not None and chosen < limit and log is not None:
        log(f"note: cache limit lowered from {limit / GB:.3g} to {chosen / GB:.3g} GB, the free space of {directory}")
    return chosen
