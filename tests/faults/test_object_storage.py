"""Datasets in object storage (issue 15), against a real S3 server on 127.0.0.1 (moto's ThreadedMotoServer, started
here): the CLIs run as a user runs them, with the AWS variables set and the URL given; nothing of ours is mocked.

- a build to s3://bucket/ds equals a local build byte for byte; `verify` and `inspect` read it;
- training from s3:// gives the local losses; with a cache limit below two mask epochs the cache never exceeds it,
  and a server stopped while the run downloads (and restarted on the same port) is survived by retries;
- a corrupted or missing object is refused by name; a download that keeps failing stops with one line;
- a killed remote build resumes from the markers in the bucket (also from a fresh staging directory);
- a blend of a dataset in the bucket and a local one (issue 23) trains as the same blend of local files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

moto_server = pytest.importorskip("moto.server")  # the `test` extra installs moto[server] and s3fs
s3fs = pytest.importorskip("s3fs")

from spanbert_data.errors import DatasetError, RemoteError  # noqa: E402
from spanbert_data.remote import Remote  # noqa: E402
from tests.faults.helpers import (  # noqa: E402
    DATA_CLI,
    ENV,
    EXAMPLE,
    TINY_MODEL,
    TRAIN_CLI,
    assert_clean_error,
    dataset_bytes,
    metrics_rows,
    run,
    spawn,
    train_losses,
    wait_for,
)

BUCKET = "spanbert"
# The sizes only (rows of 64 slots for the tiny model, several units and shards, two mask epochs); the same for
# the local and the remote builds.
OPTIONS = ["--max-seq-len", "64", "--unit-mb", "0.1", "--rows-per-shard", "128", "--mask-epochs", "2"]
STEPS = 32  # 25 global batches of 48 rows per epoch: the runs enter the second epoch (the other mask epoch)
TRAIN = [*TINY_MODEL, "--global-batch-size", "48", "--micro-batch", "24", "--max-steps", STEPS, "--log-every", "1",
         "--eval-every", "0", "--save-every", "0", "--seed", "3"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3:
    """The moto server of this module, the environment that points the AWS SDK at it, and an s3fs client."""

    def __init__(self, tmp: Path):
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.port = _free_port()
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        self.env = {**ENV, **self.aws, "SPANBERT_CACHE": str(tmp / "cache")}
        self.fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=self.aws["AWS_ENDPOINT_URL"])
        self.fs.mkdir(BUCKET)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under s3://BUCKET/prefix by relative name, store markers without their timing (as
        helpers.dataset_bytes reads a local dataset)."""
        self.fs.invalidate_cache()
        found = {}
        for path in self.fs.find(f"{BUCKET}/{prefix}"):
            rel = path[len(f"{BUCKET}/{prefix}/") :]
            data = self.fs.cat_file(path)
            if rel.startswith("store/") and rel.endswith(".json"):
                marker = json.loads(data)
                marker.pop("seconds", None)
                data = json.dumps(marker).encode()
            found[rel] = data
        return found

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3(tmp_path_factory.mktemp("s3"))
    yield server
    server.server.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The first 10 articles of the bundled sample (0.4 MB): four input units, 22 shards per mask epoch."""
    path = tmp_path_factory.mktemp("corpus") / "wiki.jsonl"
    path.write_bytes(b"".join(EXAMPLE.read_bytes().splitlines(keepends=True)[:10]))
    return path


@pytest.fixture(scope="module")
def local(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "ds"
    done = run([*DATA_CLI, "build", "--corpus", corpus, "--out", out, *OPTIONS])
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def remote(s3, corpus) -> str:
    """The same build with `--out s3://spanbert/ds`: no other flag (the staging directory is the default one)."""
    done = run([*DATA_CLI, "build", "--corpus", corpus, "--out", s3.url("ds"), *OPTIONS], env=s3.env)
    assert done.returncode == 0, done.stderr
    assert not list((Path(s3.env["SPANBERT_CACHE"]) / "build").glob("*")), "the staging directory stays behind"
    return s3.url("ds")


@pytest.fixture(scope="module")
def local_losses(local, tmp_path_factory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("run") / "local"
    done = run([*TRAIN_CLI, "--data", local, "--out", out, *TRAIN])
    assert done.returncode == 0, done.stderr[-3000:]
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def test_build_to_s3_equals_the_local_build_byte_for_byte(s3, local, remote):
    assert s3.objects("ds") == dataset_bytes(local)
    verified = run([*DATA_CLI, "verify", remote], env=s3.env)
    assert verified.returncode == 0 and verified.stdout.startswith("ok:"), verified.stderr
    stats = [run([*DATA_CLI, "inspect", where, "--json"], env=s3.env) for where in (local, remote)]
    assert all(s.returncode == 0 for s in stats), stats[1].stderr
    assert json.loads(stats[0].stdout) == json.loads(stats[1].stdout)


def test_training_from_s3_gives_the_local_losses(s3, local, remote, local_losses, tmp_path):
    out = tmp_path / "run"
    # with periodic evaluation on the remote validation shards (it does not change the training losses)
    done = run([*TRAIN_CLI, "--data", remote, "--out", out, *TRAIN, "--eval-every", "16"], env=s3.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert train_losses(out) == local_losses
    assert [r["step"] for r in metrics_rows(out) if r.get("split") == "valid"] == [16, 32]
    evals = [run([*TRAIN_CLI, "evaluate", out, *data], env=s3.env) for data in ((), ("--data", local))]
    assert all(e.returncode == 0 for e in evals), evals[0].stderr[-3000:] + evals[1].stderr[-3000:]
    from_s3, from_disk = (json.loads(e.stdout) for e in evals)
    assert from_s3["data"] == remote and from_s3["rows"] > 0
    assert {k: v for k, v in from_s3.items() if k != "data"} == {k: v for k, v in from_disk.items() if k != "data"}
    cache = Path(s3.env["SPANBERT_CACHE"])
    assert not list((cache / "holds").iterdir()) and not list((cache / "tmp").iterdir())  # all let go of
    exported = run([*TRAIN_CLI, "export", out, "--out", tmp_path / "hf"], env=s3.env)  # the run's --data is a URL
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (local / "tokenizer.json").read_bytes()


def test_a_run_from_s3_stopped_mid_epoch_resumes_to_the_local_losses(s3, remote, local_losses, tmp_path):
    """SIGTERM once ten steps are logged (the run saves that step and exits 0), then the same command with --resume:
    the downloads restart from the checkpoint's position in the epoch, and the losses are the uninterrupted local
    run's."""
    out = tmp_path / "run"
    cmd = [*TRAIN_CLI, "--data", remote, "--out", out, *TRAIN, "--resume"]
    proc = spawn(cmd, env=s3.env)
    assert wait_for(lambda: len(train_losses(out)) >= 10 or proc.poll() is not None, 120, 0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    stopped_at = max(train_losses(out))
    assert stopped_at < STEPS, "the run finished before it was stopped"
    done = run(cmd, env=s3.env)
    assert done.returncode == 0 and "resumed from" in done.stderr, done.stderr[-3000:]
    assert train_losses(out) == local_losses


@pytest.fixture(scope="module")
def books(local, tmp_path_factory) -> Path:
    """A second, local dataset of six other articles with the first one's tokenizer (a blend needs one tokenizer)."""
    corpus = tmp_path_factory.mktemp("books-corpus") / "books.jsonl"
    corpus.write_bytes(b"".join(EXAMPLE.read_bytes().splitlines(keepends=True)[10:16]))
    out = tmp_path_factory.mktemp("books") / "ds"
    done = run([*DATA_CLI, "build", "--corpus", corpus, "--out", out, *OPTIONS, "--tokenizer",
                local / "tokenizer.json"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_a_blend_of_a_dataset_in_s3_and_a_local_one_trains_as_from_local_files(s3, local, remote, books, tmp_path):
    """Weights 1,3 over 16 steps: the bucket's dataset gives 12 rows per step, the local one 36 and crosses into its
    next epoch (another mask epoch), so the bucket's shards are fetched and let go of chunk by chunk (the chunks end
    where the local dataset's epochs do). Losses and rows per dataset equal those of the same blend read locally."""
    blend = ["--data-weights", "1,3", "--max-steps", "16"]
    ref = run([*TRAIN_CLI, "--data", local, "--data", books, "--out", tmp_path / "ref", *TRAIN, *blend])
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "run"
    done = run([*TRAIN_CLI, "--data", remote, "--data", books, "--out", out, *TRAIN, *blend], env=s3.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert train_losses(out) == train_losses(tmp_path / "ref") and len(train_losses(out)) == 16
    last = metrics_rows(out)[-1]["rows_by_dataset"]
    assert last == {remote: 16 * 12, str(books): 16 * 36}
    assert f"data: {remote} through the cache " in done.stderr  # the one remote dataset: the cache is its own
    cache = Path(s3.env["SPANBERT_CACHE"])
    assert not list((cache / "holds").iterdir()) and not list((cache / "tmp").iterdir())  # all let go of


def _cache_bytes(cache: Path) -> int:
    """Bytes on disk in the cache: verified objects and partial downloads, read under the cache's own lock (so
    that an eviction and the download it makes room for are not both counted)."""
    import fcntl

    total = 0
    with open(cache / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for path in (cache / "objects").glob("*"):
            total += path.stat().st_size
        for path in (cache / "tmp").glob("*"):
            total += path.stat().st_size
    return total


def test_server_stopped_mid_download_is_survived_and_the_cache_stays_within_its_limit(s3, remote, local_losses,
                                                                                        tmp_path):  # fmt: skip
    """--cache-limit below two mask epochs: shards are let go of after their last use and evicted for the next
    epoch's. The server is stopped once the run's first downloads are under way and restarted 1 s later on the
    same port (its objects live in this process); the SDK's own retries are off (AWS_MAX_ATTEMPTS=1), so ours
    are what carries the run through."""
    manifest = json.loads(s3.fs.cat_file(f"{BUCKET}/ds/manifest.json"))
    epoch = [sum(s["bytes"] for s in manifest["shards"]["train"] if s["epoch"] == k) for k in (0, 1)]
    valid = sum(s["bytes"] for s in manifest["shards"]["valid"])
    limit = max(epoch) + valid + min(epoch) // 4  # one epoch, and a quarter of the next
    cache = tmp_path / "cache"
    env = {**s3.env, "AWS_MAX_ATTEMPTS": "1"}
    out = tmp_path / "run"
    sizes: list[int] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            if (cache / "tmp").is_dir() and (cache / "lock").is_file():
                sizes.append(_cache_bytes(cache))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc = spawn([*TRAIN_CLI, "--data", remote, "--out", out, *TRAIN, "--cache-dir", cache, "--cache-limit",
                  f"{limit / 1e9:.9f}"], env=env, stderr=open(tmp_path / "stderr", "w"))  # fmt: skip
    try:
        started = wait_for(lambda: any((cache / "tmp").glob("*")) or any((cache / "objects").glob("*")), 120,
                           interval=0.001)  # fmt: skip
        assert started, "no download started"
        s3.server.stop()
        time.sleep(1.0)
    finally:
        s3.server.start()
    assert proc.wait(timeout=300) == 0, (tmp_path / "stderr").read_text()[-3000:]
    stop_sampling.set()
    sampler.join()
    err = (tmp_path / "stderr").read_text()
    assert "retry 1 of" in err, err[-3000:]  # our retries, with backoff, carried the run
    assert train_losses(out) == local_losses
    assert sizes and max(sizes) <= limit, (max(sizes), limit)
    assert sum(epoch) + valid > limit  # the dataset does not fit: shards really were evicted and fetched again
    assert _cache_bytes(cache) <= limit


def _copy(s3: S3, src: str, dst: str) -> None:
    for path in s3.fs.find(f"{BUCKET}/{src}"):
        s3.fs.copy(path, path.replace(f"{BUCKET}/{src}/", f"{BUCKET}/{dst}/", 1))


def test_corrupt_and_missing_objects_are_refused_by_name(s3, remote, tmp_path, monkeypatch):
    _copy(s3, "ds", "ds-bad")
    bad = f"{BUCKET}/ds-bad/epoch-0/part-00003.arrow"
    data = bytearray(s3.fs.cat_file(bad))
    data[len(data) // 2] ^= 0x40  # same size, one bit flipped
    s3.fs.pipe_file(bad, bytes(data))
    # A cold cache: objects are cached by content hash, and a verified copy of the good bytes is never replaced.
    env = {**s3.env, "SPANBERT_CACHE": str(tmp_path / "cache")}
    done = run([*TRAIN_CLI, "--data", s3.url("ds-bad"), "--out", tmp_path / "run", *TRAIN], env=env)
    assert_clean_error(done, f"s3://{bad}", "content hash differs")
    assert not (tmp_path / "run" / "checkpoints").exists()
    verified = run([*DATA_CLI, "verify", s3.url("ds-bad")], env=s3.env)
    assert verified.returncode == 1 and f"bad: s3://{bad}: content hash differs" in verified.stderr
    assert verified.stderr.count("bad: ") == 1

    # A damaged copy in the cache (the disk under it flipped a bit) is hashed before use, dropped and downloaded again.
    warm = tmp_path / "warm"
    _first_step(s3, "ds", warm, monkeypatch)
    entry = json.loads(s3.fs.cat_file(f"{BUCKET}/ds/manifest.json"))["shards"]["train"][0]
    cached = warm / "objects" / entry["sha256"]
    data = bytearray(cached.read_bytes())
    data[100] ^= 1
    cached.write_bytes(bytes(data))
    _first_step(s3, "ds", warm, monkeypatch)
    assert (warm / "objects" / entry["sha256"]).read_bytes() == s3.fs.cat_file(f"{BUCKET}/ds/{entry['path']}")

    s3.fs.rm(f"{BUCKET}/ds-bad/valid/part-00000.arrow")  # a validation shard: needed before the first step
    with pytest.raises(DatasetError, match="ds-bad/valid/part-00000.arrow: the object is missing"):
        _first_step(s3, "ds-bad", tmp_path / "cache2", monkeypatch)  # cache2: the run above cached a copy of it


def _first_step(s3: S3, prefix: str, cache: Path, monkeypatch, limit: int | None = None):
    """In this process: open the remote dataset as the trainer does and build its first step."""
    from spanbert_train.data import Dataset, TrainLoader
    from spanbert_train.remote_data import Storage

    for key, value in s3.aws.items():
        monkeypatch.setenv(key, value)
    ds = Dataset(s3.url(prefix), storage=Storage(cache_dir=cache, cache_limit=limit))
    loader = TrainLoader(ds, 48, 24, rank=0, world=1, seed=3)
    try:
        error = loader.peek_error()
        if error is not None:
            raise error
    finally:
        loader.close()
        ds.close()


def test_a_download_that_keeps_failing_names_the_object(s3, remote, tmp_path, monkeypatch):
    """The server stays down: after its retries (shortened here) the download fails with one line naming the URL."""
    for key, value in s3.aws.items():
        monkeypatch.setenv(key, value)
    warnings: list[str] = []
    # Storage options reach the filesystem: here they turn the SDK's own retries off.
    no_sdk_retries = {"config_kwargs": {"retries": {"max_attempts": 1}}}
    store = Remote(remote, no_sdk_retries, log=warnings.append, retries=3, backoff=0.05)
    manifest = json.loads(store.read_bytes("manifest.json"))
    entry = manifest["shards"]["train"][0]
    s3.server.stop()
    try:
        with pytest.raises(RemoteError) as e:
            store.download(entry["path"], tmp_path / "x", entry["bytes"], entry["sha256"])
    finally:
        s3.server.start()
    message = str(e.value)
    assert message.startswith(f"{remote}/{entry['path']}: failed 3 times") and "\n" not in message
    assert len(warnings) == 2 and all("retry" in w for w in warnings)


def test_cache_limit_below_one_epoch_and_foreign_prefixes_are_refused(s3, remote, corpus, tmp_path, monkeypatch):
    with pytest.raises(DatasetError) as e:
        _first_step(s3, "ds", tmp_path / "cache", monkeypatch, limit=100_000)
    assert str(e.value).startswith("--cache-limit 0.0001 GB is less than the ")
    assert f"GB that one mask epoch of {remote} (" in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "objects").iterdir())  # refused before any download
    s3.fs.pipe_file(f"{BUCKET}/foreign/notes.txt", b"someone else's")
    done = run([*DATA_CLI, "build", "--corpus", corpus, "--out", s3.url("foreign"), *OPTIONS], env=s3.env)
    assert_clean_error(done, s3.url("foreign"), "holds objects but no spanbert build")
    assert s3.objects("foreign") == {"notes.txt": b"someone else's"}
    done = run([*DATA_CLI, "build", "--corpus", corpus, "--out", s3.url("x"), "--scheduler", "tcp://127.0.0.1:1"],
               env=s3.env)  # fmt: skip
    assert_clean_error(done, "--work-dir")
    done = run([*DATA_CLI, "build", "--corpus", corpus, "--out", "s3://no-such-bucket/ds", *OPTIONS], env=s3.env)
    assert_clean_error(done, "s3://no-such-bucket/ds/build.json", "check that the bucket and prefix exist")
    done = run([*DATA_CLI, "verify", "s3://no-such-bucket/ds"], env=s3.env)
    assert_clean_error(done, "s3://no-such-bucket/ds/manifest.json", "missing")


def _assert_bucket_consistent(s3: S3, prefix: str) -> None:
    """What a killed build leaves: no manifest, and every marker's objects whole (the size it records)."""
    objects = s3.objects(prefix)
    assert "manifest.json" not in objects
    for rel, data in objects.items():
        if not rel.endswith(".json") or rel in ("build.json", "tokenizer.json"):
            continue
        marker = json.loads(data)
        for part in marker.get("parts", [marker]):
            assert len(objects.get(part["path"], b"")) == part["bytes"], f"{rel} vouches for a missing object"


def test_killed_remote_build_resumes_from_the_bucket(s3, corpus, local, tmp_path):
    """SIGKILL at random moments once the bucket holds some markers; the staging directory is kept after one kill
    and deleted after the other (a re-run on another machine). The finished bucket equals the local build."""
    url = s3.url("killed")
    env = {**s3.env, "SPANBERT_CACHE": str(tmp_path / "cache")}
    cmd = [*DATA_CLI, "build", "--corpus", corpus, "--out", url, *OPTIONS]
    rng = random.Random(15)
    kills = attempts = 0
    while kills < 2:
        attempts += 1
        assert attempts <= 6, "the build kept finishing before it was killed"
        target = len(s3.fs.find(f"{BUCKET}/killed", refresh=True)) + 6
        proc = spawn(cmd, env=env, start_new_session=True)
        wait_for(lambda n=target: len(s3.fs.find(f"{BUCKET}/killed", refresh=True)) > n, 120, 0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        os.killpg(proc.pid, signal.SIGKILL)
        if proc.wait() != -signal.SIGKILL:  # it finished first: start the chain again
            assert proc.returncode == 0
            s3.fs.rm(f"{BUCKET}/killed", recursive=True)
            continue
        kills += 1
        _assert_bucket_consistent(s3, "killed")
        if kills == 2:
            shutil.rmtree(tmp_path / "cache" / "build")  # another machine: only the bucket remembers
    done = run(cmd, env=env)
    assert done.returncode == 0, done.stderr
    assert s3.objects("killed") == dataset_bytes(local)
    again = run(cmd, env=env)
    assert again.returncode == 0 and "build already complete" in again.stderr


@pytest.mark.slow
def test_two_ranks_share_one_cache_and_train_as_from_local_files(s3, local, remote, tmp_path):
    """torchrun with 2 ranks (gloo): both ranks use the same cache directory (each object downloaded once, under
    the cache's lock) and the losses are those of the same job on the local copy."""
    def torchrun(data, out) -> list:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                "spanbert_train", "--data", data, "--out", out, *TRAIN, "--micro-batch", "12"]  # fmt: skip

    env = {**s3.env, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "SPANBERT_CACHE": str(tmp_path / "cache")}
    done = run(torchrun(local, tmp_path / "local"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    done = run(torchrun(remote, tmp_path / "remote"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert train_losses(tmp_path / "remote") == train_losses(tmp_path / "local")
    cache = tmp_path / "cache"
    assert not list((cache / "holds").iterdir()) and not list((cache / "tmp").iterdir())
