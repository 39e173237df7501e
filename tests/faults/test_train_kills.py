"""Training under faults, black-box through `spanbert-train` processes: SIGKILL at random moments and inside a
checkpoint write, SIGTERM, and one rank of a 2-rank `torchrun --max-restarts 1` job killed.

Each test compares the faulted run's metrics.jsonl, step by step, with an undisturbed run of the same command:
the losses must be EQUAL (not close), which holds only if every resume restored model, optimiser, scheduler,
loader position and every RNG exactly (tests/train/test_train.py proves the in-process version).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from spanbert_train.checkpoint import latest_good, list_checkpoints, read_meta
from tests.faults.helpers import ENV, TINY_MODEL, TRAIN_CLI, metrics_rows, run, spawn, train_losses, wait_for
from tests.train.dataset_fixture import make_dataset

STEPS = 14


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), rows=32, mask_epochs=1, valid_rows=0)


def train_cmd(data: Path, out: Path, steps: int = STEPS, *extra) -> list:
    # Dropout stays on: the RNG streams must be restored too for the losses to repeat exactly.
    return [*TRAIN_CLI, "--data", data, "--out", out, *TINY_MODEL, "--global-batch-size", "4", "--micro-batch", "4",
            "--max-steps", steps, "--warmup-steps", "2", "--lr", "2e-3", "--log-every", "1", "--eval-every", "0",
            "--save-every", "1", "--keep-last", "2", "--seed", "5", "--resume", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The undisturbed run: its losses by step, and its wall time (the random kill moments are drawn within it)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    started = time.monotonic()
    done = run(train_cmd(data, out))
    assert done.returncode == 0, done.stderr[-3000:]
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses, time.monotonic() - started


def assert_latest_checkpoint_loads(run_dir: Path) -> int | None:
    """The newest checkpoint under a final name is whole (hashes match meta.json, tensors load); its step."""
    names = list_checkpoints(run_dir)
    if not names:
        return None
    found = latest_good(run_dir, warn=lambda msg: pytest.fail(f"newest checkpoint is bad: {msg}"))
    assert found is not None and found[0] == names[-1]
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert load_file(str(found[0] / name))  # parses; read_meta already matched size and SHA-256
    return int(found[1]["step"])


def checkpoint_write_in_flight(run_dir: Path) -> bool:
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(p.name.startswith(".tmp-step-") for p in folder.iterdir())


def newest_step(run_dir: Path) -> int:
    names = list_checkpoints(run_dir)
    return int(names[-1].name[5:]) if names else 0


def kill_during_checkpoint_write(cmd: list, run_dir: Path, after_step: int) -> bool:
    """Start `cmd`; once checkpoint `after_step` exists, SIGKILL it the moment the next checkpoint's temp
    directory appears. True if it died with that write in flight."""
    proc = spawn(cmd)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and newest_step(run_dir) < after_step:
        time.sleep(0.005)
    while proc.poll() is None and time.monotonic() < deadline and not checkpoint_write_in_flight(run_dir):
        pass  # spin: a save lasts only milliseconds
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL and checkpoint_write_in_flight(run_dir)


def kill_after(cmd: list, seconds: float) -> bool:
    proc = spawn(cmd)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    return proc.wait() == -signal.SIGKILL


def sigkill_chain(data: Path, out: Path, reference, kills: int, seed: int, command=None) -> None:
    """Alternate kills inside a checkpoint write and at random moments, re-running `--resume` after each
    (`command(data, out)`: the command line, default train_cmd's)."""
    train_cmd = command or globals()["train_cmd"]
    losses, seconds = reference
    rng = random.Random(seed)
    in_write = 0
    for i in range(kills):
        if i % 2 == 0:  # inside the save that follows a random step, so the chain also makes progress
            after = rng.randint(0, STEPS - 2)
            for _ in range(3):  # a kill can miss a very short save; try again, the chain only moves on
                hit = kill_during_checkpoint_write(train_cmd(data, out), out, after)
                assert_latest_checkpoint_loads(out)
                if hit:
                    in_write += 1
                    break
        else:  # anywhere: start-up, a step, a save, the metrics file
            kill_after(train_cmd(data, out), rng.uniform(0.0, seconds))
        assert_latest_checkpoint_loads(out)
    assert in_write >= 1, "no kill landed inside a checkpoint write"
    resumable = bool(list_checkpoints(out))
    done = run(train_cmd(data, out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("resumed from" in done.stderr) == resumable
    assert not list((out / "checkpoints").glob(".tmp-step-*")), "a killed save's temp directory was not cleaned up"
    assert train_losses(out) == losses


def test_sigkill_at_random_moments_and_during_checkpoint_writes(data, reference, tmp_path):
    sigkill_chain(data, tmp_path / "run", reference, kills=4, seed=11)


@pytest.mark.slow
def test_sigkill_many_times(data, reference, tmp_path):
    sigkill_chain(data, tmp_path / "run", reference, kills=10, seed=12)


def blend_cmd(data: tuple[Path, Path], out: Path) -> list:
    """Two datasets mixed 3,1 (issue 23): 4-row batches of 3 + 1 rows; `data` holds 32 rows, `books` 12, so both
    cross epochs, at different steps, within the run."""
    return [*train_cmd(data[0], out), "--data", data[1], "--data-weights", "3,1"]


def test_a_blend_killed_and_resumed_gives_the_uninterrupted_losses(data, tmp_path):
    books = make_dataset(tmp_path / "books", rows=12, mask_epochs=2, valid_rows=0, seed=3)
    started = time.monotonic()
    done = run(blend_cmd((data, books), tmp_path / "ref"))
    assert done.returncode == 0, done.stderr[-3000:]
    losses = train_losses(tmp_path / "ref")
    assert sorted(losses) == list(range(1, STEPS + 1))
    rows = [r["rows_by_dataset"] for r in metrics_rows(tmp_path / "ref") if r.get("split", "train") == "train"]
    assert list(rows[-1].values()) == [3 * STEPS, STEPS]
    sigkill_chain((data, books), tmp_path / "run", (losses, time.monotonic() - started), kills=2, seed=13,
                  command=blend_cmd)  # fmt: skip
    untimed = [[{k: v for k, v in r.items() if k != "tokens_per_s"} for r in metrics_rows(tmp_path / name)]
               for name in ("run", "ref")]  # fmt: skip
    assert untimed[0] == untimed[1]  # every row, rows_by_dataset included


def test_sigterm_saves_a_checkpoint_exits_zero_and_resumes_exactly(data, reference, tmp_path):
    """tests/train/test_cli.py checks the exit status and that meta.json exists; here the checkpoint is also
    whole, of the last logged step, and the resumed run repeats the undisturbed losses."""
    out = tmp_path / "run"
    proc = spawn(train_cmd(data, out), stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(train_losses(out)) >= 3, timeout=120, interval=0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped at step" in err
    last = max(train_losses(out))
    assert last < STEPS, "the run finished before SIGTERM arrived; nothing was tested"
    assert assert_latest_checkpoint_loads(out) == last
    done = run(train_cmd(data, out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"step {last}," in done.stderr and "resumed from" in done.stderr
    assert train_losses(out) == reference[0]


# ------------------------------------------------------------------------------------------------ torchrun
def _descendants(pid: int) -> list[int]:
    """Every process id below `pid` (read from Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


# torch 2.13's torchrun shares its rendezvous TCP store with the workers and does not namespace the process
# group's keys per restart, so a restarted rank can read its peer's address from the failed attempt and gloo
# fails with "connectFullMesh ... Connection refused" (3 of 4 tries here; pytorch/pytorch#135712). Opting out of
# the sharing makes restarts work (7 of 7); docs/RELIABILITY.md tells users to set it.
TORCHRUN_ENV = {**ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def torchrun_cmd(data: Path, out: Path, steps: int) -> list:
    # The later --micro-batch/--save-every win (click keeps the last): 2 ranks x 2 rows, a checkpoint every 2 steps.
    args = train_cmd(data, out, steps, "--micro-batch", "2", "--save-every", "2")[len(TRAIN_CLI):]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--max-restarts", "1", "-m", "spanbert_train", *args]  # fmt: skip


def test_torchrun_rank_killed_restarts_from_checkpoint_with_equal_losses(data, tmp_path):
    steps = 24
    undisturbed = run(torchrun_cmd(data, tmp_path / "ref", steps), env=TORCHRUN_ENV)
    assert undisturbed.returncode == 0, undisturbed.stderr[-3000:]
    expected = train_losses(tmp_path / "ref")
    assert sorted(expected) == list(range(1, steps + 1))

    out = tmp_path / "run"
    proc = spawn(torchrun_cmd(data, out, steps), env=TORCHRUN_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                 text=True)  # fmt: skip
    assert wait_for(lambda: len(list_checkpoints(out)) >= 2, timeout=180, interval=0.01)
    victims = [pid for pid in _descendants(proc.pid) if _rank_of(pid) == 1]
    assert victims, "rank 1's process not found under torchrun"
    killed_at = max(train_losses(out))
    for pid in victims:  # the worker (and any helper process of it that carries its environment)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    assert killed_at < steps, "the job finished before rank 1 was killed; nothing was tested"
    assert "resumed from" in log, log[-3000:]
    assert train_losses(out) == expected
    assert read_meta(list_checkpoints(out)[-1])["step"] == steps
