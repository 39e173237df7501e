"""`spanbert-data build --out s3://…`: the normal build in a local staging directory, mirrored to the bucket.

The build runs exactly as a local one in `--work-dir` (default: a folder of the cache directory keyed by
the URL), and the driver uploads each file as its task completes: data objects first, then their marker,
`build.json` before anything else and `manifest.json` strictly last, each upload checked for its size. A
PUT is atomic in object stores, so the bucket holds only whole objects, and the contract is the local one:
an object counts only once its marker exists (and vouches for its size), and the dataset is complete once
`manifest.json` exists.

On a re-run the bucket is the truth. A pass-1 unit is done when its marker object exists and every store
part has the recorded size; pass 2 needs the token store on local disk, so missing parts are downloaded
into the staging directory (SHA-256 checked). A pass-2 shard is done when its marker object exists and its
data object has the recorded size. Work the staging directory finished but the bucket lacks (a run killed
between the two) is uploaded, not redone. In the default staging directory, finished shards are deleted once
uploaded, so it holds the token store and the shards in flight, and it is removed when the build is complete; a
`--work-dir` the user names is never emptied or removed (it ends as a complete local copy).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from spanbert_data.cache import default_cache_dir
from spanbert_data.errors import BuildError, DatasetError
from spanbert_data.files import atomic_path, atomic_write_bytes, json_object, read_json
from spanbert_data.layout import BUILD_FILE, FORMAT_NAME, MANIFEST, TOKENIZER_FILE
from spanbert_data.remote import Remote, reason

UPLOAD_THREADS = 4


class Mirror:
    """The bucket side of a build to a remote --out (see the module docstring)."""

    def __init__(self, remote: Remote, work: Path, log: Callable[[str], None], owned: bool = True):
        self.remote, self.work, self.log = remote, work, log
        # The default staging directory is ours: uploaded shards are deleted from it and it is removed at the end.
        # A --work-dir the user named is never emptied or removed (at the end it holds a complete local copy).
        self.owned = owned
        self.previous: dict | None = None  # the bucket's build.json
        self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="spanbert-upload")
        self._pending: list[Future] = []

    @classmethod
    def open(cls, out: str, work_dir: Path | None, scheduler: str | None, storage_options: dict | None,
             log: Callable[[str], None]) -> Mirror:  # fmt: skip
        """Claim the URL (refusing a prefix that holds anything but our build) and choose the staging directory."""
        if scheduler and scheduler != "local" and work_dir is None:
            raise BuildError(
                f"--out {out} with --scheduler {scheduler}: give --work-dir on a filesystem every worker mounts at the "
                "same path (the workers write the work files there; this process uploads them)"
            )
        remote = Remote(out, storage_options, log)
        work = Path(work_dir) if work_dir else default_work_dir(remote.url)
        mirror = cls(remote, work, log, owned=work_dir is None)
        previous = remote.read_bytes(BUILD_FILE)
        if previous is not None:
            mirror.previous = json_object(previous)
            if mirror.previous is None or mirror.previous.get("format") != FORMAT_NAME:
                raise BuildError(f"{remote / BUILD_FILE}: not a spanbert build file; choose another --out")
        elif not remote.is_empty():
            raise BuildError(f"{remote.url}: holds objects but no spanbert build; choose an empty or new --out")
        log(f"building into {remote.url} through the staging directory {work}")
        return mirror

    # ------------------------------------------------------------------------------------------ start
    def reconcile(self, local_previous: dict | None, plan: dict, claim: Callable[[Path], dict | None]) -> dict | None:
        """Make the staging directory agree with the bucket; return the bucket's build.json (the truth).

        A staging directory of another build (other options or corpus, or another tokenizer than the bucket's) is
        emptied. When the bucket knows the tokenizer and staging lacks it, it is downloaded (hash checked), so a
        resumed build never trains the vocabulary again."""
        remote_tok = (self.previous or {}).get("tokenizer_sha256")
        if local_previous is not None:
            same = (local_previous.get("options"), local_previous.get("sources")) == (plan["options"], plan["sources"])
            if not same or (remote_tok and local_previous.get("tokenizer_sha256") not in (None, remote_tok)):
                if not self.owned:
                    raise BuildError(f"{self.work / BUILD_FILE}: --work-dir holds another build (other options, "
                                     "corpus or tokenizer); choose another --work-dir")  # fmt: skip
                self.log(f"{self.work}: staging directory of another build; emptying it")
                shutil.rmtree(self.work)
                claim(self.work)
        target = self.work / TOKENIZER_FILE
        if remote_tok and not target.is_file():
            data = self.remote.read_bytes(TOKENIZER_FILE)
            if data is not None and hashlib.sha256(data).hexdigest() == remote_tok:
                atomic_write_bytes(target, data)
        return self.previous

    def finished(self) -> dict | None:
        """The bucket's manifest when the remote build is complete, else None."""
        return self.remote.read_json(MANIFEST)

    # ------------------------------------------------------------------------------------------ uploads
    def put(self, rel: str) -> None:
        """Upload one staging file now (build.json, tokenizer.json, manifest.json: in the order called)."""
        self.remote.put_file(self.work / rel, rel)

    def publish(self, data: list[str], marker: str, drop: bool = False) -> None:
        """Upload data files, then their marker, in a background thread; `drop` deletes them locally afterwards."""
        self._raise_failed()
        self._pending.append(self._pool.submit(self._publish, data, marker, drop and self.owned))

    def _publish(self, data: list[str], marker: str, drop: bool) -> None:
        for rel in data:
            self.remote.put_file(self.work / rel, rel)
        self.remote.put_file(self.work / marker, marker)
        if drop:
            for rel in (*data, marker):
                (self.work / rel).unlink(missing_ok=True)

    def _raise_failed(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for fut in done:
            fut.result()  # RemoteError names the object

    def drain(self) -> None:
        """Wait for every upload; the first failure is raised (one line naming the object)."""
        pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------------------------------ resume
    def resume_unit(self, unit, local_marker: dict | None, complete: Callable[[dict | None], bool]) -> dict | None:
        """The marker of a finished pass-1 unit (its store parts then on local disk), or None to redo the unit."""
        marker = self.remote.read_json(unit.marker)
        if _vouches(marker, unit) and all(self.remote.size(p["path"]) == p["bytes"] for p in marker["parts"]):
            for part in marker["parts"]:
                self._fetch_part(part)
            if local_marker != marker:
                atomic_write_bytes(self.work / unit.marker, self.remote.read_bytes(unit.marker))
            return marker
        if complete(local_marker):  # finished here, never uploaded (a run killed in between)
            self.publish([p["path"] for p in local_marker["parts"]], unit.marker)
            return local_marker
        return None

    def resume_shard(self, plan) -> dict | None:
        """The marker of a finished pass-2 shard (its objects in the bucket), or None to rebuild the shard."""
        marker = self.remote.read_json(plan.marker)
        if marker is not None and marker.get("path") == plan.path \
                and self.remote.size(plan.path) == marker.get("bytes"):
            if self.owned:
                (self.work / plan.path).unlink(missing_ok=True)
            return marker
        local = read_json(self.work / plan.marker)
        path = self.work / plan.path
        if local is not None and path.is_file() and path.stat().st_size == local.get("bytes"):
            self.publish([plan.path], plan.marker, drop=True)
            return local
        return None

    def _fetch_part(self, part: dict) -> None:
        """A store part from the bucket into staging, unless staging has it at the recorded size."""
        path = self.work / part["path"]
        if path.is_file() and path.stat().st_size == part["bytes"]:
            return
        try:
            with atomic_path(path) as tmp:
                self.remote.download(part["path"], tmp, part["bytes"], part["sha256"])
        except DatasetError:
            raise
        except OSError as e:
            raise DatasetError(f"{path}: cannot write the store part ({reason(e)})") from None

    def finish(self) -> None:
        """The build is complete in the bucket: remove the staging directory (the default one only)."""
        self.close()
        if self.owned:
            shutil.rmtree(self.work, ignore_errors=True)


def _vouches(marker: dict | None, unit) -> bool:
    return (marker is not None and marker.get("unit") == unit.key and marker.get("sources") == list(unit.files)
            and isinstance(marker.get("parts"), list))  # fmt: skip


def default_work_dir(url: str) -> Path:
    """The staging directory of a build to `url`: `<cache dir>/build/<hash of the URL>`."""
    return default_cache_dir() / "build" / hashlib.sha256(url.encode()).hexdigest()[:16]
