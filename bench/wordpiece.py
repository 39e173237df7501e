"""The compiled WordPiece encoder (spanbert_data/wordpiece.py) against HF `tokenizers`, same text, same run.

    .venv/bin/python -m bench.wordpiece [--mb 20] [--repeats 3] [--corpus FILE_OR_DIR] [--tokenizer PATH]

1. Encoding: tokens/s and MB/s of ours (`SubwordTokenizer.encode_lines`, flat NumPy ids + counts) and
   of `tokenizers.Tokenizer.encode_batch_fast` (Encoding objects only, its cheapest output), with one
   thread each and with all cores each. Every configuration runs in a fresh process (Rayon reads
   RAYON_NUM_THREADS once per process), on batches of 32768 lines as in pass 1, after a warm-up batch;
   median of --repeats. The ids of both sides are hashed and must be equal.
2. The whole build, `--encoder fast` against `--encoder hf` (all cores, default options), alternating,
   each in a fresh process: the build's own time (`build_dataset`, as in its "built in ..." line:
   reading, tokenizing, blocking, masking, packing, writing, compiled-code loading) and the wall time
   of the process (+ interpreter start and imports, ~1 s). The shard bytes must be equal.

Text: the documents of the bundled Wikipedia sample (examples/wiki, 2.5 MB), repeated until --mb MB
(no encoder here caches words, so repetition favours neither side); --corpus takes other text.
Prints a table and writes bench/results/wordpiece.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_info, write_result

REPO = Path(__file__).resolve().parents[1]
BATCH = 32768  # lines per encode call, as spanbert_data.store.LINES_PER_BATCH


def corpus_docs(root: Path, target_mb: float) -> list[list[str]]:
    from spanbert_data.corpus import CorpusStats, read_documents
    from spanbert_data.listing import list_corpus_files

    base = root if root.is_dir() else root.parent
    docs = [d.lines for f in list_corpus_files(root) for d in read_documents(f, base, CorpusStats())]
    size = sum(len(line.encode()) + 1 for d in docs for line in d)
    return docs * max(1, int(target_mb * 1e6 / size + 0.999))


def worker(side: str, threads: int, lines_file: Path, tokenizer: str, repeats: int) -> dict:
    """One configuration in this (fresh) process: timings and a hash of the ids."""
    import numpy as np

    lines = lines_file.read_text(encoding="utf-8").split("\n")
    if side == "ours":
        from spanbert_data.tokenizer import load_tokenizer, set_tokenizer_threads

        set_tokenizer_threads(threads)
        tok = load_tokenizer(tokenizer, encoder="fast")
        tok.encode_lines(lines[:BATCH])  # warm-up: compiled code and tables loaded

        def run():
            return [tok.encode_lines(lines[i : i + BATCH]) for i in range(0, len(lines), BATCH)]

        def ids(out):
            return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])
    else:
        from tokenizers import Tokenizer

        raw = Tokenizer.from_file(tokenizer)
        raw.no_truncation()
        raw.no_padding()
        raw.encode_special_tokens = True
        raw.encode_batch_fast(lines[:BATCH], add_special_tokens=False)  # warm-up: the Rayon pool

        def run():
            return [raw.encode_batch_fast(lines[i : i + BATCH], add_special_tokens=False)
                    for i in range(0, len(lines), BATCH)]  # fmt: skip

        def ids(out):
            encs = [e for batch in out for e in batch]
            return (np.array([i for e in encs for i in e.ids], np.int32), np.array([len(e.ids) for e in encs]))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    flat, counts = ids(out)
    digest = hashlib.sha256(flat.astype(np.int32).tobytes() + counts.astype(np.int64).tobytes()).hexdigest()
    return {"seconds": times, "tokens": int(len(flat)), "ids_sha256": digest}


def build_worker(encoder: str, corpus: Path, out: Path, tokenizer: str) -> dict:
    from spanbert_data.build import build_dataset
    from spanbert_data.config import BuildConfig

    cfg = BuildConfig(corpus=corpus, out=out, tokenizer=Path(tokenizer), encoder=encoder, workers=1)  # in-process
    t0 = time.perf_counter()
    build_dataset(cfg, log=lambda _m: None)
    return {"seconds": time.perf_counter() - t0}


def run_worker(side: str, threads: int, lines_file: Path, args) -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", side, "--threads", str(threads), "--lines", str(lines_file),
           "--tokenizer", args.tokenizer, "--repeats", str(args.repeats)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def dataset_bytes(root: Path) -> dict[str, bytes]:
    """Every data file of a dataset (store markers carry timings: compared without them)."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".json" and p.parent.name == "store":
                marker = json.loads(data)
                marker.pop("seconds", None)
                data = json.dumps(marker).encode()
            files[p.relative_to(root).as_posix()] = data
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=20.0, help="size of the text, MB (>= 20 for the claim)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--corpus", type=Path, default=REPO / "examples" / "wiki")
    ap.add_argument("--tokenizer", default=str(REPO / "tests/assets/bert-uncased-tokenizer.json"))
    ap.add_argument("--worker", choices=["ours", "hf", "build-fast", "build-hf"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--lines", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker in ("ours", "hf"):
        print(json.dumps(worker(args.worker, args.threads, args.lines, args.tokenizer, args.repeats)))
        return
    if args.worker:
        print(json.dumps(build_worker(args.worker[6:], args.corpus, args.out, args.tokenizer)))
        return

    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    docs = corpus_docs(args.corpus, args.mb)
    lines = [line for d in docs for line in d]
    text = "\n\n".join("\n".join(d) for d in docs) + "\n"
    nbytes = len(text.encode())
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "lines.txt").write_text("\n".join(lines), encoding="utf-8")
        (tmp / "corpus").mkdir()
        (tmp / "corpus" / "text.txt").write_text(text, encoding="utf-8")
        for threads in sorted({1, cores}):
            for side, name in (("hf", "tokenizers encode_batch_fast"), ("ours", "ours (compiled WordPiece)")):
                r = run_worker(side, threads, tmp / "lines.txt", args)
                med = statistics.median(r["seconds"])
                rows[f"{name}, {threads} thread(s)"] = {
                    "side": side, "threads": threads, **r, "seconds_median": med,
                    "mb_per_s": nbytes / 1e6 / med, "tokens_per_s": r["tokens"] / med,
                }  # fmt: skip
        builds: dict[str, dict[str, list[float]]] = {e: {"build": [], "process": []} for e in ("hf", "fast")}
        for k in range(args.repeats):
            for encoder in ("hf", "fast"):
                cmd = [sys.executable, __file__, "--worker", f"build-{encoder}", "--corpus", str(tmp / "corpus"),
                       "--out", str(tmp / f"out-{encoder}-{k}"), "--tokenizer", args.tokenizer]  # fmt: skip
                t0 = time.perf_counter()
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                builds[encoder]["process"].append(time.perf_counter() - t0)
                builds[encoder]["build"].append(json.loads(res.stdout.strip().splitlines()[-1])["seconds"])
        same_shards = dataset_bytes(tmp / "out-hf-0") == dataset_bytes(tmp / "out-fast-0")
    for encoder, times in builds.items():
        for what, label in (("build", "whole build"), ("process", "whole build + process start")):
            med = statistics.median(times[what])
            rows[f"{label} --encoder {encoder}, {cores} thread(s)"] = {
                "side": f"{what}-{encoder}", "threads": cores, "seconds": times[what], "seconds_median": med,
                "mb_per_s": nbytes / 1e6 / med,
            }  # fmt: skip

    def ratio(a: str, b: str) -> float:
        return rows[a]["mb_per_s"] / rows[b]["mb_per_s"]

    ratios = {f"encode, {t} thread(s)": ratio(f"ours (compiled WordPiece), {t} thread(s)",
                                              f"tokenizers encode_batch_fast, {t} thread(s)")
              for t in sorted({1, cores})}  # fmt: skip
    for label in ("whole build", "whole build + process start"):
        ratios[label] = ratio(f"{label} --encoder fast, {cores} thread(s)", f"{label} --encoder hf, {cores} thread(s)")
    same_ids = len({r["ids_sha256"] for r in rows.values() if "ids_sha256" in r}) == 1
    print(f"text: {nbytes / 1e6:.1f} MB, {len(lines)} lines ({args.corpus.name}); tokenizer "
          f"{Path(args.tokenizer).name}; {cores} cores; load average {load_before[0]:.1f} -> "
          f"{os.getloadavg()[0]:.1f}; median of {args.repeats}")  # fmt: skip
    print(f"{'':56s} {'MB/s':>8s} {'Mtok/s':>8s} {'s':>7s}")
    for name, r in rows.items():
        tok = f"{r['tokens_per_s'] / 1e6:8.2f}" if "tokens_per_s" in r else f"{'':8s}"
        print(f"{name:56s} {r['mb_per_s']:8.2f} {tok} {r['seconds_median']:7.2f}")
    for name, value in ratios.items():
        print(f"ours / tokenizers, {name}: {value:.1f}x")
    print(f"ids identical: {same_ids}; shard bytes identical (--encoder fast vs hf): {same_shards}")
    print("goals: >= 3x tokenizers per core (stretch 8x), whole build >= 2.5x (the build's own time)")
    write_result("wordpiece", {
        "text_mb": nbytes / 1e6, "lines": len(lines), "corpus": str(args.corpus.relative_to(REPO))
        if args.corpus.is_relative_to(REPO) else str(args.corpus), "tokenizer": Path(args.tokenizer).name,
        "repeats": args.repeats, "results": rows, "ratios": ratios, "ids_identical": same_ids,
        "shard_bytes_identical": same_shards, "goals": {"per_core": 3.0, "per_core_stretch": 8.0, "build": 2.5},
        "load_average": {"before": load_before, "after": os.getloadavg()}, "machine": machine_info(),
    })  # fmt: skip
    if not (same_ids and same_shards):
        sys.exit("the encoders disagree: see above")


if __name__ == "__main__":
    main()
