"""`spanbert-data build` SIGKILLed at 20 seeded random moments and re-run: never a partial file under a final
name, and the finished dataset is byte-identical to an uninterrupted build and passes `verify`.

On the default path: no --tokenizer, so every run that is killed before `tokenizer.json` lands trains the
vocabulary again, and the result must still be the uninterrupted build's, byte for byte (issue 10)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from spanbert_data.errors import DatasetError
from spanbert_data.files import sha256_file
from spanbert_data.shards import read_arrow_file, verify_dataset
from tests.faults.helpers import DATA_CLI, EXAMPLE, dataset_bytes, run, spawn, split_corpus

# Small units and shards: 6 input files in ~10 units, ~150 shards, so a kill lands among many separate writes.
# No --tokenizer: the vocabulary is trained on the corpus, as a user's first command does.
OPTIONS = ["--unit-mb", "0.25", "--rows-per-shard", "64", "--max-seq-len", "128", "--mask-epochs", "2",
           "--valid-fraction", "0.02"]  # fmt: skip


def build_cmd(corpus: Path, out: Path) -> list:
    return [*DATA_CLI, "build", "--corpus", corpus, "--out", out, *OPTIONS]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted build, and how long it took (the kill moments are spread over that time)."""
    tmp = tmp_path_factory.mktemp("build-kill")
    corpus = split_corpus(EXAMPLE, tmp / "corpus", pieces=6)
    out = tmp / "reference"
    started = time.monotonic()
    # One worker, as the 20-kill test runs: the kill moments are spread over that configuration's duration (the
    # default, a pool of every core, spends its first seconds starting processes on a small corpus like this).
    done = run([*build_cmd(corpus, out), "--workers", "1"])
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    return corpus, out, seconds


def assert_nothing_partial(out: Path) -> None:
    """Every file under its final name is complete; only hidden `.NAME.*.tmp` files may be half-written."""
    markers = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(out).as_posix()
        if path.name.startswith("."):
            assert path.name.endswith(".tmp"), f"unexpected hidden file {rel}"
            continue
        if path.suffix == ".json":
            markers[rel] = json.loads(path.read_text())  # a torn JSON file would raise here
        elif path.suffix == ".arrow":
            try:
                read_arrow_file(path)  # footer, schema and the single record batch must all be there
            except DatasetError as e:
                pytest.fail(f"partial file under its final name: {e}")
        else:
            pytest.fail(f"unexpected file {rel}")
    # A marker is written after its data: whatever it vouches for exists, whole, with the recorded hash.
    for rel, marker in markers.items():
        if rel.startswith("store/unit-"):
            vouched = marker["parts"]
        elif rel.split("/")[0].startswith(("epoch-", "valid")):
            vouched = [marker]
        else:
            continue
        for part in vouched:
            assert sha256_file(out / part["path"]) == part["sha256"], f"{part['path']} disagrees with {rel}"
    if (out / "manifest.json").exists():
        assert verify_dataset(out) == []


def kill_and_resume(reference, out: Path, kills: int, seed: int, workers: int) -> None:
    """SIGKILL the build (its whole process group: the worker processes too) `kills` times at random moments
    within the reference build's duration, checking the directory after each kill; then finish and compare."""
    corpus, ref, seconds = reference
    expected = dataset_bytes(ref)
    cmd = [*build_cmd(corpus, out), "--workers", workers]
    rng = random.Random(seed)
    landed = attempts = 0
    while landed < kills:
        attempts += 1
        assert attempts <= 4 * kills, f"only {landed} kills landed in {attempts} attempts"
        proc = spawn(cmd, start_new_session=True)
        time.sleep(rng.uniform(0.0, seconds))
        os.killpg(proc.pid, signal.SIGKILL)
        if proc.wait() == -signal.SIGKILL:
            landed += 1
            assert_nothing_partial(out)
        else:  # the remaining work finished before this moment: check the result, then start a new chain
            assert proc.returncode == 0
            assert dataset_bytes(out) == expected
            shutil.rmtree(out)
    done = run(cmd)
    assert done.returncode == 0, done.stderr
    assert_nothing_partial(out)
    assert dataset_bytes(out) == expected  # also: the killed runs' temp files are gone
    verified = run([*DATA_CLI, "verify", out])
    assert verified.returncode == 0 and verified.stdout.startswith("ok:"), verified.stderr


def test_build_killed_20_times_resumes_to_identical_bytes(reference, tmp_path):
    kill_and_resume(reference, tmp_path / "killed", kills=20, seed=20260507, workers=1)


@pytest.mark.slow
def test_build_with_workers_killed_10_times_resumes_to_identical_bytes(reference, tmp_path):
    kill_and_resume(reference, tmp_path / "killed", kills=10, seed=7, workers=2)


def test_build_killed_at_its_first_file_resumes(reference, tmp_path):
    """The narrowest window: killed as soon as anything appears in --out (the claim file or its temp file).

    Before build.json was written first, a kill here left a directory the re-run refused as "not ours"."""
    corpus, ref, _ = reference
    expected = dataset_bytes(ref)
    for attempt in range(2):
        out = tmp_path / f"early-{attempt}"
        proc = spawn(build_cmd(corpus, out))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.is_dir() and any(out.iterdir())):
            pass  # spin: the first file is visible for only a few milliseconds before the next lands
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_nothing_partial(out)
        done = run(build_cmd(corpus, out))
        assert done.returncode == 0, done.stderr
        assert dataset_bytes(out) == expected
