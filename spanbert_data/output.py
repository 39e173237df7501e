"""Where a build writes: its `--out` directory, or a local staging directory mirrored to a bucket.

The build (build.py) always runs in a local directory, `output.work`, and tells its output what happens:
`put(rel)` for a file of its own (build.json, tokenizer.json, manifest.json, in that order), `publish(data,
marker)` for a task's files and then their marker, and at a re-run `resume_unit` / `resume_shard` for what is
already done. A local `--out` (`BuildOutput`) is the work directory itself: the files are in place once written,
and a re-run trusts the markers there.

A URL `--out` (`Mirror`) is built in a staging directory (`--work-dir`, default: a folder of the cache directory
keyed by the URL) and uploaded as it goes: data objects first, then their marker, `build.json` before anything
else and `manifest.json` strictly last, each upload checked for its size. A PUT is atomic in object stores, so the
bucket holds only whole objects, and the contract is the local one: an object counts only once its marker exists
(and vouches for its size), and the dataset is complete once `manifest.json` exists.

On a re-run the bucket is the truth. A pass-1 unit is done when its marker object exists and every store part
has the recorded size; pass 2 needs the token store on local disk, so missing parts are downloaded into the
staging directory (SHA-256 checked). A pass-2 shard is done when its marker object exists and its data object has
the recorded size. Work the staging directory finished but the bucket lacks (a run killed between the two) is
uploaded, not redone. In the default staging directory, finished shards are deleted once uploaded, so it holds
the token store and the shards in flight, and it is removed when the build is complete; a `--work-dir` the user
names is never emptied or removed (it ends as a complete local copy).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from spanbert_data.cache import default_cache_dir
from spanbert_data.config import BuildConfig
from spanbert_data.errors import BuildError, DatasetError
from spanbert_data.files import atomic_path, atomic_write_bytes, json_object, read_json
from spanbert_data.layout import BUILD_FILE, FORMAT_NAME, MANIFEST, TOKENIZER_FILE
from spanbert_data.location import Location, is_url
from spanbert_data.remote import reason

UPLOAD_THREADS = 4


def open_output(cfg: BuildConfig, storage_options: dict | None, log: Callable[[str], None]) -> BuildOutput:
    """The output of a build with these options: its `--out` directory, or a Mirror for a URL."""
    if is_url(cfg.out):
        return Mirror.open(cfg.out, cfg.work_dir, cfg.scheduler, storage_options, log)
    return BuildOutput(Path(cfg.out))


class BuildOutput:
    """A local `--out`: the build's work directory is the dataset directory (see the module docstring)."""

    def __init__(self, work: Path, target: Location | None = None):
        self.work = work  # where the build writes
        self.target = target or Location.of(work)  # where the dataset ends up

    def __str__(self) -> str:
        return str(self.target)

    def __truediv__(self, rel: str) -> str:
        """How messages name the dataset's file `rel`."""
        return self.target / rel

    # ------------------------------------------------------------------------------------------ start
    def claim(self) -> dict | None:
        """Create the work directory, or accept it if it holds our earlier build (return its build.json); refuse a
        directory holding anything else."""
        return claim_dir(self.work)

    def reconcile(self, previous: dict | None, plan: dict) -> dict | None:
        """The earlier build to resume (its build.json), once the work directory agrees with the target."""
        return previous

    def finished(self) -> dict | None:
        """The manifest when the build is complete, else None."""
        return self.target.read_json(MANIFEST)

    # ------------------------------------------------------------------------------------------ writing
    def put(self, rel: str) -> None:
        """The work file `rel` (build.json, tokenizer.json, manifest.json) is complete: publish it now."""

    def publish(self, data: list[str], marker: str, drop: bool = False) -> None:
        """A task's data files, then their marker, are complete; `drop`: the work directory need not keep them."""

    def drain(self) -> None:
        """Wait until everything published has reached the target."""

    def finish(self) -> None:
        """The build is complete."""

    def close(self) -> None:
        """Stop (the build ended, complete or not)."""

    # ------------------------------------------------------------------------------------------ resume
    def resume_unit(self, unit, complete: Callable[[dict | None], bool]) -> dict | None:
        """The marker of a finished pass-1 unit (its store parts on local disk), or None to redo the unit;
        `complete(marker)` says whether the work directory holds the unit's parts."""
        marker = read_json(self.work / unit.marker)
        return marker if complete(marker) else None

    def resume_shard(self, plan) -> dict | None:
        """The marker of a finished pass-2 shard, or None to rebuild the shard."""
        marker = read_json(self.work / plan.marker)
        path = self.work / plan.path
        if marker and path.is_file() and path.stat().st_size == marker.get("bytes"):
            return marker
        return None


def claim_dir(out: Path) -> dict | None:
    """Create `out`, or accept it if it holds our earlier build; refuse a directory holding anything else."""
    build_file = out / BUILD_FILE
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: exists and is not a directory; choose another --out")
    if build_file.is_file():
        previous = read_json(build_file)
        if previous is None or previous.get("format") != FORMAT_NAME:
            raise BuildError(f"{build_file}: not a spanbert build file; choose another --out")
        remove_stale_temps(out)
        return previous
    leftovers = list(out.iterdir()) if out.is_dir() else []
    if any(not _is_claim_temp(p) for p in leftovers):
        raise BuildError(f"{out}: directory is not empty and holds no spanbert build; choose an empty or new --out")
    for path in leftovers:  # only the temp file of a build.json whose writer was killed
        path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _is_claim_temp(path: Path) -> bool:
    return path.name.startswith(f".{BUILD_FILE}.") and path.name.endswith(".tmp") and path.is_file()


def remove_stale_temps(out: Path) -> None:
    """Delete the hidden temp files (`.NAME.*.tmp`, see files.atomic_path) a killed run left in its folders."""
    for folder in (out, *(p for p in out.iterdir() if p.is_dir())):
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


class Mirror(BuildOutput):
    """A URL `--out`: a staging directory uploaded to the bucket as the build goes (see the module docstring)."""

    def __init__(self, target: Location, work: Path, log: Callable[[str], None], owned: bool = True):
        super().__init__(work, target)
        self.log = log
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
        target = Location.of(out, storage_options, log)
        work = Path(work_dir) if work_dir else default_work_dir(target.url)
        mirror = cls(target, work, log, owned=work_dir is None)
        previous = target.read_bytes(BUILD_FILE)
        if previous is not None:
            mirror.previous = json_object(previous)
            if mirror.previous is None or mirror.previous.get("format") != FORMAT_NAME:
                raise BuildError(f"{target / BUILD_FILE}: not a spanbert build file; choose another --out")
        elif not target.is_empty():
            raise BuildError(f"{target.url}: holds objects but no spanbert build; choose an empty or new --out")
        log(f"building into {target.url} through the staging directory {work}")
        return mirror

    # ------------------------------------------------------------------------------------------ start
    def reconcile(self, previous: dict | None, plan: dict) -> dict | None:
        """Make the staging directory agree with the bucket; return the bucket's build.json (the truth).

        A staging directory of another build (other options or corpus, or another tokenizer than the bucket's) is
        emptied. When the bucket knows the tokenizer and staging lacks it, it is downloaded (hash checked), so a
        resumed build never trains the vocabulary again."""
        remote_tok = (self.previous or {}).get("tokenizer_sha256")
        if previous is not None:
            same = (previous.get("options"), previous.get("sources")) == (plan["options"], plan["sources"])
            if not same or (remote_tok and previous.get("tokenizer_sha256") not in (None, remote_tok)):
                if not self.owned:
                    raise BuildError(f"{self.work / BUILD_FILE}: --work-dir holds another build (other options, "
                                     "corpus or tokenizer); choose another --work-dir")  # fmt: skip
                self.log(f"{self.work}: staging directory of another build; emptying it")
                shutil.rmtree(self.work)
                claim_dir(self.work)
        target = self.work / TOKENIZER_FILE
        if remote_tok and not target.is_file():
            data = self.target.read_bytes(TOKENIZER_FILE)
            if data is not None and hashlib.sha256(data).hexdigest() == remote_tok:
                atomic_write_bytes(target, data)
        return self.previous

    # ------------------------------------------------------------------------------------------ uploads
    def put(self, rel: str) -> None:
        """Upload one staging file now (build.json, tokenizer.json, manifest.json: in the order called)."""
        self.target.put_file(rel, self.work / rel)

    def publish(self, data: list[str], marker: str, drop: bool = False) -> None:
        """Upload data files, then their marker, in a background thread; `drop` deletes them locally afterwards."""
        self._raise_failed()
        self._pending.append(self._pool.submit(self._publish, data, marker, drop and self.owned))

    def _publish(self, data: list[str], marker: str, drop: bool) -> None:
        for rel in data:
            self.target.put_file(rel, self.work / rel)
        self.target.put_file(marker, self.work / marker)
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

    def finish(self) -> None:
        """The build is complete in the bucket: remove the staging directory (the default one only)."""
        self.close()
        if self.owned:
            shutil.rmtree(self.work, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ resume
    def resume_unit(self, unit, complete: Callable[[dict | None], bool]) -> dict | None:
        """The bucket's marker of a finished unit (its store parts then fetched to staging), or one that staging
        finished and the bucket lacks (uploaded now), or None to redo the unit."""
        marker = self.target.read_json(unit.marker)
        if _vouches(marker, unit) and all(self.target.size(p["path"]) == p["bytes"] for p in marker["parts"]):
            for part in marker["parts"]:
                self._fetch_part(part)
            if read_json(self.work / unit.marker) != marker:
                atomic_write_bytes(self.work / unit.marker, self.target.read_bytes(unit.marker))
            return marker
        local = super().resume_unit(unit, complete)
        if local is not None:  # finished here, never uploaded (a run killed in between)
            self.publish([p["path"] for p in local["parts"]], unit.marker)
        return local

    def resume_shard(self, plan) -> dict | None:
        """The marker of a finished pass-2 shard (its objects in the bucket), or None to rebuild the shard."""
        marker = self.target.read_json(plan.marker)
        if marker is not None and marker.get("path") == plan.path \
                and self.target.size(plan.path) == marker.get("bytes"):
            if self.owned:
                (self.work / plan.path).unlink(missing_ok=True)
            return marker
        local = super().resume_shard(plan)
        if local is not None:
            self.publish([plan.path], plan.marker, drop=True)
        return local

    def _fetch_part(self, part: dict) -> None:
        """A store part from the bucket into staging, unless staging has it at the recorded size."""
        path = self.work / part["path"]
        if path.is_file() and path.stat().st_size == part["bytes"]:
            return
        try:
            with atomic_path(path) as tmp:
                self.target.download(part["path"], tmp, part["bytes"], part["sha256"])
        except DatasetError:
            raise
        except OSError as e:
            raise DatasetError(f"{path}: cannot write the store part ({reason(e)})") from None


def _vouches(marker: dict | None, unit) -> bool:
    return (marker is not None and marker.get("unit") == unit.key and marker.get("sources") == list(unit.files)
            and isinstance(marker.get("parts"), list))  # fmt: skip


def default_work_dir(url: str) -> Path:
    """The staging directory of a build to `url`: `<cache dir>/build/<hash of the URL>`."""
    return default_cache_dir() / "build" / hashlib.sha256(url.encode()).hexdigest()[:16]
