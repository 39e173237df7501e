"""`--workers` defaults to the usable cores (spanbert_data/cores.py): CPU affinity and cgroup CPU quota.

The default path of the README's first command: `spanbert-data build` with no `--workers` runs one worker
per core the process may use, says so at the start, and writes the bytes of `--workers 1`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from spanbert_data.cores import cgroup_cpu_quota, usable_cores
from tests.faults.helpers import DATA_CLI, dataset_bytes, run, spawn, split_corpus, wait_for

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "wiki" / "enwiki-sample.jsonl"
AFFINITY = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------------------------------ cgroup quotas
def test_cgroup_v2_quota_is_the_smallest_on_the_path_and_rounds_down(tmp_path):
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/kubepods/pod1/job\n")
    root = tmp_path / "cg"
    write(root / "kubepods" / "cpu.max", "max 100000\n")
    write(root / "kubepods" / "pod1" / "cpu.max", "250000 100000\n")  # 2.5 cores for the pod
    write(root / "kubepods" / "pod1" / "job" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root, proc) == 2.5
    assert usable_cores(root, proc) == min(2, len(AFFINITY) or os.cpu_count())
    write(root / "kubepods" / "pod1" / "job" / "cpu.max", "50000 100000\n")  # half a core: still one worker
    assert cgroup_cpu_quota(root, proc) == 0.5 and usable_cores(root, proc) == 1


def test_cgroup_v2_inside_a_container_namespace_and_hybrid_layout(tmp_path):
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/\n")  # a cgroup namespace: the process's cgroup is the mount point itself
    write(tmp_path / "cg" / "cpu.max", "300000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", proc) == 3.0
    write(proc, "1:cpu,cpuacct:/\n0::/\n")  # v1 with the unified hierarchy beside it
    write(tmp_path / "hy" / "unified" / "cpu.max", "100000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "hy", proc) == 1.0


def test_cgroup_v1_quota(tmp_path):
    proc = tmp_path / "proc-cgroup"
    write(proc, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    folder = tmp_path / "cg" / "cpu,cpuacct" / "docker" / "abc"
    write(folder / "cpu.cfs_quota_us", "-1\n")
    write(folder / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", proc) is None  # -1: no quota
    write(folder / "cpu.cfs_quota_us", "150000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", proc) == 1.5 and usable_cores(tmp_path / "cg", proc) == 1


def test_no_cgroup_information_means_no_limit(tmp_path):
    assert cgroup_cpu_quota(tmp_path, tmp_path / "absent") is None
    write(tmp_path / "proc-cgroup", "0::/x\n")
    write(tmp_path / "cg" / "x" / "cpu.max", "garbage\n")
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "proc-cgroup") is None
    assert usable_cores(tmp_path / "cg", tmp_path / "proc-cgroup") == (len(AFFINITY) or os.cpu_count())


# ------------------------------------------------------------------------------------ the CLI's default
def build_under_affinity(cpus: list[int], corpus: Path, out: Path, *extra: str) -> str:
    """`spanbert-data build` (no --tokenizer: it trains the vocabulary too) pinned to `cpus`; returns stderr."""
    done = run([*DATA_CLI, "build", "--corpus", corpus, "--out", out, "--vocab-size", "2000", "--unit-mb", "0.3",
                "--max-seq-len", "128", "--rows-per-shard", "256", *extra],
               preexec_fn=lambda: os.sched_setaffinity(0, cpus))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.skipif(len(AFFINITY) < 2, reason="needs two CPUs to pin to")
def test_build_without_workers_uses_the_cores_of_its_affinity_and_writes_the_bytes_of_one_worker(tmp_path):
    corpus = split_corpus(SAMPLE, tmp_path / "corpus", 3)  # 2.6 MB in 3 files: 9 units of 0.3 MB
    two = build_under_affinity(AFFINITY[:2], corpus, tmp_path / "default")
    assert "workers: 2 (one per usable core" in two.splitlines()[0]
    one = build_under_affinity(AFFINITY[:2], corpus, tmp_path / "one", "--workers", "1")
    assert "workers: 1 (--workers; 2 usable cores)" in one
    assert dataset_bytes(tmp_path / "default") == dataset_bytes(tmp_path / "one")


def test_vocab_without_workers_uses_one_core_under_an_affinity_of_one(tmp_path):
    corpus = split_corpus(SAMPLE, tmp_path / "corpus", 2)
    done = run([*DATA_CLI, "vocab", "--corpus", corpus, "--out", tmp_path / "tok.json", "--vocab-size", "500"],
               preexec_fn=lambda: os.sched_setaffinity(0, AFFINITY[:1]))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "workers: 1 (one per usable core" in done.stderr


# ------------------------------------------------------------------------------- workers of a killed driver
def pool_workers(driver: int) -> list[int]:
    """The driver's spawned pool workers (children running multiprocessing's spawn_main), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == driver and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pool_workers_exit_when_the_driver_is_killed(tmp_path):
    """A pool worker holds both ends of its task queue's pipe, so it never sees the driver go: without a watch on
    its parent, every `kill -9` of a default build (now a pool) left its workers waiting forever."""
    corpus = split_corpus(SAMPLE, tmp_path / "corpus", 3)
    vocab = REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"
    driver = spawn([*DATA_CLI, "build", "--corpus", corpus, "--out", tmp_path / "out", "--tokenizer", vocab,
                    "--unit-mb", "0.1", "--workers", "2"])  # fmt: skip
    try:
        # both workers started and past their first task (a worker still starting would exit on its own)
        assert wait_for(lambda: len(list((tmp_path / "out" / "store").glob("unit-*.json"))) >= 2, timeout=120)
        workers = pool_workers(driver.pid)
        assert len(workers) == 2
    finally:
        driver.kill()
        driver.wait()
    gone = wait_for(lambda: not any(map(running, workers)), timeout=15)
    for pid in filter(running, workers):  # (only when the test fails: leave no process behind)
        os.kill(pid, signal.SIGKILL)
    assert gone, f"workers {workers} outlived the driver"
