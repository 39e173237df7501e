"""Shared pieces of the fault suite: running the real CLIs as processes, and checking what they left on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DATA_CLI = [str(BIN / "spanbert-data")]
TRAIN_CLI = [str(BIN / "spanbert-train")]
VOCAB = REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"
EXAMPLE = REPO / "examples" / "wiki" / "enwiki-sample.jsonl"
# One thread per process: the suite runs on small shared machines, and torch/numba threads only add noise.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

# A model small enough that a CPU step takes milliseconds (rows of 64 slots, see tests/train/dataset_fixture.py).
TINY_MODEL = ["--model", "tiny", "--model-set", "num_layers=1", "--model-set", "hidden_size=32",
              "--model-set", "intermediate_size=64", "--model-set", "max_position_embeddings=64"]  # fmt: skip


def run(cmd: list, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run a command to completion with the suite's environment; text output captured."""
    kw.setdefault("env", ENV)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def spawn(cmd: list, **kw) -> subprocess.Popen:
    """Start a command in the background (its output discarded unless `stderr`/`stdout` are given)."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    kw.setdefault("env", ENV)
    return subprocess.Popen([str(c) for c in cmd], **kw)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    """A refused input: exit status `code`, no traceback, and exactly one `error:` line holding every fragment."""
    err = result.stderr
    assert result.returncode == code, f"exit {result.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def split_corpus(src: Path, dest: Path, pieces: int) -> Path:
    """Cut a JSON Lines corpus into `pieces` files of whole lines (several input units for the builder)."""
    dest.mkdir(parents=True, exist_ok=True)
    lines = src.read_bytes().splitlines(keepends=True)
    step = -(-len(lines) // pieces)
    for i in range(pieces):
        (dest / f"part-{i:02d}.jsonl").write_bytes(b"".join(lines[i * step : (i + 1) * step]))
    return dest


def dataset_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a dataset by relative path; store markers without their timing field (the only non-data)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.parent.name == "store" and path.suffix == ".json":
                marker = json.loads(data)
                marker.pop("seconds", None)
                data = json.dumps(marker).encode()
            files[path.relative_to(root).as_posix()] = data
    return files


def shard_bytes(files: dict[str, bytes]) -> dict[str, bytes]:
    """Of `dataset_bytes`, what the trainer reads: the shards and the tokenizer. The store and the markers record
    the input units, which differ between containers of the same documents (docs/FORMAT.md)."""
    return {k: v for k, v in files.items() if k.startswith(("epoch-", "valid/")) or k == "tokenizer.json"}


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def metrics_rows(run_dir: Path) -> list[dict]:
    """The complete JSON rows of RUN_DIR/metrics.jsonl (a torn last line of a killed run is skipped)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def train_losses(run_dir: Path) -> dict[int, float]:
    """step → loss of the training rows of a run's metrics.jsonl; a step logged twice is an error."""
    losses: dict[int, float] = {}
    for row in metrics_rows(run_dir):
        if row.get("split", "train") == "train":
            assert row["step"] not in losses, f"step {row['step']} logged twice in {run_dir}"
            losses[row["step"]] = row["loss"]
    return losses
