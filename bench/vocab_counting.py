"""Counting words as fast as pass 1 encodes (issue 24): per-core rates, and the default build's whole time.

    .venv/bin/python -m bench.vocab --only speed [--build-corpus FILE] [--baseline CHECKOUT]

Writes bench/results/vocab_counting.json (bench/vocab.py's comparison with the peer writes vocab.json).

Per core, on the training files of each of bench/vocab.py's corpora (units of --unit-mb), in one process on one
thread, as CPU time of that process (steadier than wall time on a shared machine), median of --repeats
interleaved repeats, reading the corpus included in every row:
- counting, compiled: `vocab.count_unit_words` (spanbert_data/wordcount.py), the task `build` runs per unit;
- counting, plain Python: `vocab.count_words` over the same lines (the per-unit count before issue 24);
- pass 1: `store.build_unit` with the vocabulary trained on that corpus (tokenize, block, write the store).

The default build (with --build-corpus): `spanbert-data build --corpus C --out D` with no other option (a
trained vocabulary, one worker per usable core), its wall time and the vocabulary step's time from its log,
beside the same command with `--workers 1` and, with --baseline, the `spanbert-data` of another checkout
(its own .venv: e.g. the commit before issue 24), interleaved.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def per_core_worker(train_dir: Path, unit_bytes: int, repeats: int) -> dict:
    """The three per-core rates (MB/s of input per CPU second); run in a process of its own (one thread)."""
    from spanbert_data.tokenizer import set_tokenizer_threads

    set_tokenizer_threads(1)  # before anything encodes: Rayon and the compiled encoder on one thread
    from spanbert_data.corpus import CorpusStats
    from spanbert_data.listing import list_corpus
    from spanbert_data.store import build_unit
    from spanbert_data.unit_reader import unit_documents
    from spanbert_data.units import plan_sources
    from spanbert_data.vocab import corpus_vocabulary, count_unit_words, count_words

    corpus, files = list_corpus([train_dir])
    units = [u for s in plan_sources(files, unit_bytes) for u in s.units()]
    total = sum(u.bytes for u in units)
    tok, _ = corpus_vocabulary(train_dir, 8000, 0, unit_bytes, 1, log=lambda _m: None)  # also the warm-up
    store = Path(tempfile.mkdtemp(prefix="spanbert-bench-store-"))
    (store / "tokenizer.json").write_text(tok.to_json())

    def python_count() -> None:
        for u in units:
            count_words(line for d in unit_documents(corpus, u, CorpusStats(), lambda _m: None) for line in d.lines)

    sides = {
        "counting, compiled (count_unit_words)": lambda: [count_unit_words(corpus, u) for u in units],
        "counting, plain Python (count_words, before)": python_count,
        "pass 1 (build_unit: tokenize, block, write)": lambda: [build_unit(store, corpus, u, tok, 510)
                                                                for u in units],
    }
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            c0 = time.process_time()
            fn()
            seconds[name].append(time.process_time() - c0)
    return {"bytes": total, "units": len(units), "cpu_seconds": seconds,
            "mb_per_cpu_s": {k: total / 1e6 / statistics.median(v) for k, v in seconds.items()}}  # fmt: skip


def per_core(train_dir: Path, unit_bytes: int, repeats: int) -> dict:
    cmd = [sys.executable, "-m", "bench.vocab_counting", str(train_dir), str(unit_bytes), str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "RAYON_NUM_THREADS": "1"})
    if done.returncode:
        sys.exit(f"per-core worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def print_per_core(name: str, r: dict) -> None:
    rates = r["mb_per_cpu_s"]
    pass1 = next(v for k, v in rates.items() if k.startswith("pass 1"))
    for side, rate in rates.items():
        print(f"{name:12s} {r['bytes'] / 1e6:6.1f} {side:46s} {rate:8.2f} MB/s per core {rate / pass1:6.2f}x pass 1")


def _build_once(bin_dir: Path, corpus: Path, out: Path, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([str(bin_dir / "spanbert-data"), "build", "--corpus", str(corpus), "--out", str(out), *extra],
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"build failed ({bin_dir}):\n{done.stderr[-3000:]}")
    vocab = re.search(r"vocabulary: .* in ([\d.]+)s", done.stderr)
    workers = re.search(r"^workers: (\d+)", done.stderr, re.M)
    return {"wall_s": wall, "vocab_s": float(vocab.group(1)) if vocab else None,
            "workers": int(workers.group(1)) if workers else 1}  # fmt: skip


def default_build(corpus: Path, repeats: int, baseline: Path | None) -> dict:
    """Wall time of the default command (and --workers 1, and a baseline checkout's default), interleaved."""
    sides = {"default (this checkout)": (REPO / ".venv" / "bin", []),
             "--workers 1 (this checkout)": (REPO / ".venv" / "bin", ["--workers", "1"])}  # fmt: skip
    if baseline is not None:
        sides[f"default ({baseline})"] = (baseline / ".venv" / "bin", [])
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory(prefix="spanbert-bench-build-") as tmp:
        for r in range(repeats):
            for k, (name, (bin_dir, extra)) in enumerate(sides.items()):
                runs[name].append(_build_once(bin_dir, corpus, Path(tmp) / f"{r}-{k}", extra))
    med = {name: {key: statistics.median(x[key] for x in v) if v[0][key] is not None else None
                  for key in ("wall_s", "vocab_s")} | {"workers": v[0]["workers"]}
           for name, v in runs.items()}  # fmt: skip
    return {"corpus": str(corpus), "bytes": corpus.stat().st_size, "runs": runs, "median": med}


def print_default_build(r: dict) -> None:
    base = next(iter(r["median"].values()))["wall_s"]
    print(f"\nthe whole build of {r['corpus']} ({r['bytes'] / 1e6:.0f} MB), median wall time:")
    for name, m in r["median"].items():
        vocab = f"{m['vocab_s']:7.1f} s" if m["vocab_s"] is not None else "      -"
        print(f"  {name:50s} {m['wall_s']:7.1f} s (vocabulary {vocab}, {m['workers']} workers) "
              f"{m['wall_s'] / base:5.2f}x the default")  # fmt: skip


if __name__ == "__main__":  # the per-core worker: python -m bench.vocab_counting DIR UNIT_BYTES REPEATS
    print(json.dumps(per_core_worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
