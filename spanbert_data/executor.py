"""The build's one executor seam: where its tasks run (DESIGN §3).

The driver (`build.py`) plans tasks with stable keys, hands them to an executor and gathers their
results; only the driver writes `build.json` and `manifest.json`. A task writes its own output files
atomically and a completion marker last, so a task that runs twice (a retry, a re-run) is harmless.

- `InlineExecutor`: in this process (`--workers 1`);
- `PoolExecutor`: a local pool of spawned processes (`--workers N`; by default one per usable core, cores.py);
- `DaskExecutor`: a Dask `distributed` cluster (`--scheduler tcp://HOST:8786`), or a `LocalCluster` of
  `--workers` processes started here (`--scheduler local`). Needs `pip install 'spanbert[dask]'`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from spanbert_data import tokenizer
from spanbert_data.cores import usable_cores
from spanbert_data.errors import BuildError, ExecutorError

Task = tuple[str, tuple]  # (stable key, arguments)
OnDone = Callable[[str, tuple, Any], None]


class Executor:
    """Runs `fn(*args)` for every task; `on_done(key, args, result)` is called in the driver as results arrive."""

    workers: int = 1

    def run(self, fn: Callable, tasks: Iterable[Task], on_done: OnDone) -> None:
        raise NotImplementedError

    def share(self, obj):
        """A handle to pass `obj` to many tasks (a Dask cluster ships it to each worker once)."""
        return obj

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tokenizer_threads(workers: int) -> int:
    """Tokenizer threads per worker process so that the usable cores are shared, not oversubscribed."""
    return max(1, usable_cores() // max(1, workers))


def _on_dask_worker() -> bool:
    if "distributed" not in sys.modules:  # a Dask worker has imported it; elsewhere, do not pay for the import
        return False
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def prepare_task_process() -> None:
    """Settings a build task makes for the process it runs in: only on a Dask worker (a pool worker gets them from
    its initializer, this process from the user), and only at the first task of a process.

    - Threads: a Dask worker runs one task per thread (`dask worker --nthreads 1 --nworkers N` on N cores), so
      each task tokenizes on one thread unless RAYON_NUM_THREADS says otherwise.
    - Memory: Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, and glibc then also freezes its
      mmap threshold at 128 KiB: every array above that becomes a fresh mmap whose pages fault in again. A
      250 MB build on one Dask worker had 5.6x the page faults and ~2 s more system time (docs/PERFORMANCE.md
      §8). Set the two thresholds to where glibc's own adaptive defaults settle (32 MiB / 64 MiB) here.
    """
    global _DASK_WORKER_READY
    if _DASK_WORKER_READY:
        return
    _DASK_WORKER_READY = True
    if not _on_dask_worker():
        return
    if "RAYON_NUM_THREADS" not in os.environ and not tokenizer._pool_started:
        tokenizer.set_tokenizer_threads(1)
    if "MALLOC_TRIM_THRESHOLD_" in os.environ and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
        except (OSError, AttributeError):  # not glibc: nothing to undo
            pass


_DASK_WORKER_READY = False
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


class InlineExecutor(Executor):
    """Runs every task in this process, in order: no pickling, no start-up cost."""

    def run(self, fn, tasks, on_done) -> None:
        for key, args in tasks:
            on_done(key, args, fn(*args))

    def describe(self) -> str:
        return "this process"


def _init_pool_worker(threads: int, driver: int) -> None:
    tokenizer.set_tokenizer_threads(threads)
    threading.Thread(target=_exit_with_driver, args=(driver,), daemon=True, name="spanbert-driver-watch").start()


def _exit_with_driver(driver: int) -> None:
    """End this worker once the driver is gone. A pool worker waits on a queue whose pipe it holds both ends of, so
    a driver killed with SIGKILL (OOM killer, `kill -9`) would leave it waiting forever; a re-run starts new ones."""
    while os.getppid() == driver:
        time.sleep(1.0)
    os._exit(1)


class PoolExecutor(Executor):
    """A pool of spawned worker processes on this machine, kept for every phase of the build."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = get_context("spawn")  # fork after tokenizers' threads started can deadlock
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_pool_worker,
                                             initargs=(tokenizer_threads(self.workers), os.getpid()))  # fmt: skip
        return self._pool

    def run(self, fn, tasks, on_done) -> None:
        pool = self._get_pool()
        try:
            # In flight: enough to keep every worker busy, few enough to bound memory (and a stream's work files).
            _drive(tasks, on_done, 2 * self.workers, lambda key, args: pool.submit(fn, *args),
                   lambda futs: wait(futs, return_when=FIRST_COMPLETED)[0], lambda fut, key: fut.result(),
                   lambda fut: fut.cancel())  # fmt: skip
        except BrokenExecutor:
            raise ExecutorError(
                "a worker process died (killed, or out of memory); re-run the same command to resume"
            ) from None

    def describe(self) -> str:
        return f"a local pool of {self.workers} processes"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class DaskExecutor(Executor):
    """Tasks on a Dask `distributed` cluster. Worker deaths are survived: the scheduler reruns their tasks
    elsewhere, and a failing task is retried; a task's files land atomically, so reruns are harmless."""

    RETRIES = 2
    WORKER_WAIT = 60  # seconds to wait for the first worker of an external cluster

    def __init__(self, scheduler: str, workers: int, log: Callable[[str], None]):
        try:
            import distributed
        except ImportError:
            raise ExecutorError(
                "--scheduler needs Dask: pip install 'spanbert[dask]' (dask and distributed)"
            ) from None
        self._cluster = None
        try:
            if scheduler == "local":
                self._cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                    # tokenizer threads (also the compiled encoder's): as the user set them, else shared out
                    env={"RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS") or str(tokenizer_threads(workers))},
                )  # fmt: skip
                self.client = distributed.Client(self._cluster)
            else:
                self.client = distributed.Client(scheduler, timeout="30s")
        except OSError as e:
            self.close()
            raise ExecutorError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        self.scheduler = scheduler
        try:
            self.client.wait_for_workers(1, timeout=self.WORKER_WAIT)
        except (TimeoutError, OSError):
            self.close()
            raise ExecutorError(
                f"no Dask worker joined the scheduler at {scheduler} within {self.WORKER_WAIT} s; start workers with "
                f"`dask worker {scheduler}`"
            ) from None
        self.workers = max(1, sum(self.client.nthreads().values()))
        link = self.client.dashboard_link
        log(f"Dask: {self.describe()}" + (f"; dashboard {link}" if link else ""))

    def run(self, fn, tasks, on_done) -> None:
        import distributed

        _drive(tasks, on_done, 4 * self.workers,
               lambda key, args: self.client.submit(fn, *args, key=key, retries=self.RETRIES, pure=False),
               lambda futs: distributed.wait(futs, return_when="FIRST_COMPLETED").done, _result,
               lambda fut: fut.release())  # fmt: skip

    def share(self, obj):
        return self.client.scatter(obj, broadcast=True, hash=False)

    def describe(self) -> str:
        where = "a LocalCluster on this machine" if self._cluster is not None else f"the cluster at {self.scheduler}"
        return f"{where}, {self.workers} worker threads"

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _drive(tasks: Iterable[Task], on_done: OnDone, limit: int, submit, wait_some, result, drop) -> None:
    """Keep at most `limit` tasks in flight, taking them lazily from `tasks` (a reader may still be producing
    them); hand each result to `on_done` as it arrives. What is still in flight when this fails is dropped."""
    pending: dict = {}
    tasks = iter(tasks)
    try:
        while True:
            while len(pending) < limit:
                task = next(tasks, None)
                if task is None:
                    break
                pending[submit(*task)] = task
            if not pending:
                return
            for fut in sorted(wait_some(list(pending)), key=lambda f: pending[f][0]):
                key, args = pending.pop(fut)
                on_done(key, args, result(fut, key))
    finally:
        for fut in pending:
            drop(fut)


def _result(fut, key: str):
    """A Dask future's result; our own (one-line, user-facing) errors pass through, anything else is summarised."""
    try:
        return fut.result()
    except Exception as e:
        if type(e).__module__.startswith("spanbert_data."):
            raise
        raise ExecutorError(
            f"task {key} failed on the Dask cluster: {type(e).__name__}: {e} (every worker needs the same spanbert "
            "version; a local run, without --scheduler, shows the full traceback)"
        ) from None


def make_executor(workers: int | None, scheduler: str | None, log: Callable[[str], None]) -> Executor:
    """`--scheduler` given: Dask; else a local pool for more than one worker, else this process.

    workers None: one per usable core (cores.py). The count is logged, except for an existing Dask cluster,
    whose workers are its own (DaskExecutor logs them)."""
    if scheduler and scheduler != "local":
        return DaskExecutor(scheduler, workers or 1, log)
    cores = usable_cores()
    n = cores if workers is None else workers
    how = "one per usable core; --workers N to change" if workers is None else f"--workers; {cores} usable cores"
    log(f"workers: {n} ({how})")
    if scheduler:
        return DaskExecutor(scheduler, n, log)
    if n > 1:
        return PoolExecutor(n)
    return InlineExecutor()


def task_prefix(where: Path | str, phase: str) -> str:
    """Dask keys must be unique on a shared cluster: the phase plus a hash of the directory (or the corpus) the tasks
    work on."""
    key = str(where.resolve()) if isinstance(where, Path) else str(where)
    return f"spanbert-{phase}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def run_tasks(executor: Executor, fn: Callable, tasks: Iterable[Task], on_done: OnDone) -> None:
    """`executor.run`, with a failure of the executor itself (a dead worker, a lost cluster) as a BuildError."""
    try:
        executor.run(fn, tasks, on_done)
    except ExecutorError as e:
        raise BuildError(str(e)) from None
