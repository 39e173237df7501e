"""The build on a real Dask cluster (`dask scheduler` and `dask worker` processes on 127.0.0.1):
the same bytes as the local build for 1, 2 and 3 workers; a worker SIGKILLed mid-build and a driver
SIGKILLed mid-build change nothing, also for a Parquet file cut into row-group units (whose shards are those of
the JSON Lines build of the same documents); a worker that cannot see the output directory is one error line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.faults.helpers import (
    DATA_CLI,
    ENV,
    EXAMPLE,
    assert_clean_error,
    dataset_bytes,
    run,
    shard_bytes,
    spawn,
    split_corpus,
    wait_for,
)

distributed = pytest.importorskip("distributed")

# Small units and shards: many tasks, so that a kill lands in the middle of the build.
OPTIONS = ["--unit-mb", "0.25", "--rows-per-shard", "128", "--max-seq-len", "128", "--vocab-size", "3000"]


class Cluster:
    """A scheduler and workers started with Dask's own command-line tools, torn down with SIGKILL."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        file = tmp / "scheduler.json"
        self.procs.append(spawn([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                 "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", file]))
        assert wait_for(lambda: file.is_file() and file.stat().st_size > 0, 60), "the scheduler did not start"
        time.sleep(0.2)
        self.address = json.loads(file.read_text())["address"]
        self.workers: list[subprocess.Popen] = []

    def add_worker(self, prefix: tuple = ()) -> subprocess.Popen:
        """One single-threaded worker without a nanny (so a SIGKILLed worker stays dead)."""
        proc = spawn([*prefix, sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--no-nanny",
                      "--nthreads", "1", "--local-directory", self.tmp / f"w{len(self.workers)}"])  # fmt: skip
        self.procs.append(proc)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int) -> None:
        with distributed.Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=60)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The sample three times over (~8 MB, ~30 units): enough tasks that a kill lands mid-build."""
    tmp = tmp_path_factory.mktemp("dask")
    tripled = tmp / "tripled.jsonl"
    tripled.write_bytes(EXAMPLE.read_bytes() * 3)
    corpus = split_corpus(tripled, tmp / "corpus", pieces=3)
    local = tmp / "local"
    done = run([*DATA_CLI, "build", "--corpus", corpus, "--out", local, *OPTIONS])
    assert done.returncode == 0, done.stderr[-3000:]
    return corpus, dataset_bytes(local)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def build_cmd(corpus: Path, out: Path, *extra) -> list:
    return [*DATA_CLI, "build", "--corpus", corpus, "--out", out, *OPTIONS, *extra]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_dask_cluster_writes_the_local_bytes(corpus, cluster, workers, tmp_path):
    source, expected = corpus
    for _ in range(workers):
        cluster.add_worker()
    cluster.wait_for_workers(workers)
    out = tmp_path / "out"
    done = run(build_cmd(source, out, "--scheduler", cluster.address))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{workers} worker threads" in done.stderr and "dashboard http" in done.stderr
    assert dataset_bytes(out) == expected
    assert run([*DATA_CLI, "verify", out]).returncode == 0


def test_local_cluster_writes_the_local_bytes(corpus, tmp_path):
    source, expected = corpus
    out = tmp_path / "out"
    done = run(build_cmd(source, out, "--scheduler", "local", "--workers", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert dataset_bytes(out) == expected


def _markers(out: Path) -> int:
    return len(list((out / "store").glob("unit-*.json"))) if (out / "store").is_dir() else 0


def _build_killing_a_worker(cluster: Cluster, source: Path, out: Path) -> None:
    """A build on two workers, one SIGKILLed once two units are done; it must finish."""
    victim = cluster.add_worker()
    cluster.add_worker()
    cluster.wait_for_workers(2)
    driver = spawn(build_cmd(source, out, "--scheduler", cluster.address), stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: _markers(out) >= 2 or driver.poll() is not None, 240)
    assert driver.poll() is None, "the build ended before the worker could be killed"
    victim.send_signal(signal.SIGKILL)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err[-3000:]


def test_a_worker_killed_mid_build_changes_nothing(corpus, cluster, tmp_path):
    source, expected = corpus
    _build_killing_a_worker(cluster, source, tmp_path / "out")
    assert dataset_bytes(tmp_path / "out") == expected


def test_the_driver_killed_mid_build_resumes_to_the_same_bytes(corpus, cluster, tmp_path):
    source, expected = corpus
    cluster.add_worker()
    cluster.add_worker()
    cluster.wait_for_workers(2)
    out = tmp_path / "out"
    driver = spawn(build_cmd(source, out, "--scheduler", cluster.address))
    assert wait_for(lambda: _markers(out) >= 2 or driver.poll() is not None, 240)
    assert driver.poll() is None, "the build ended before the driver could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done = run(build_cmd(source, out, "--scheduler", cluster.address))
    assert done.returncode == 0, done.stderr[-3000:]
    assert dataset_bytes(out) == expected


def test_a_parquet_file_with_a_worker_killed_builds_the_json_lines_shards(corpus, cluster, tmp_path):
    """One Parquet file of the same documents, row groups of 8 documents: about 30 units, each read by the worker
    that runs it; one worker is killed once some are done."""
    source, expected = corpus
    texts = [json.loads(line)["text"] for path in sorted(source.iterdir()) for line in path.read_text().splitlines()]
    parquet = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": texts}), parquet, row_group_size=8)
    out = tmp_path / "out"
    _build_killing_a_worker(cluster, parquet, out)
    (plan,) = json.loads((out / "build.json").read_text())["sources"]
    assert plan[0] == "table" and len(plan[-1]) - 1 >= 4  # row-group units
    assert shard_bytes(dataset_bytes(out)) == shard_bytes(expected)


def _hiding_prefix(hidden: Path) -> tuple | None:
    """A command prefix that runs a process in its own mount namespace with `hidden` covered by an empty
    tmpfs: a machine that does not mount the shared filesystem. None where namespaces are not allowed."""
    for unshare in (("unshare", "-m"), ("unshare", "-r", "-m")):
        probe = subprocess.run([*unshare, "sh", "-c", f"mount -t tmpfs none {hidden} && test ! -e {hidden}/probe"],
                               capture_output=True, env=ENV)  # fmt: skip
        if probe.returncode == 0:
            return (*unshare, "sh", "-c", f'mount -t tmpfs none {hidden} && exec "$@"', "sh")
    return None


def test_a_worker_that_cannot_see_the_output_is_one_error_line(corpus, cluster, tmp_path):
    source, _ = corpus
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "probe").touch()
    prefix = _hiding_prefix(shared)
    if prefix is None or shutil.which("unshare") is None:
        pytest.skip("mount namespaces are not available here (unshare -m)")
    cluster.add_worker(prefix)
    cluster.wait_for_workers(1)
    out = shared / "out"
    started = time.monotonic()
    done = run(build_cmd(source, out, "--scheduler", cluster.address), timeout=180)
    assert_clean_error(done, "cannot see", str(out / "build.json"), "shared")
    assert time.monotonic() - started < 120
    assert os.path.isdir(out)  # the driver's own files are untouched and the command can be re-run elsewhere
