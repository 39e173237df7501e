"""How the whole build scales with workers, on a local process pool and on Dask, and its memory per worker.

The corpus (>= 200 MB by default) is made of the bundled Wikipedia sample and the test assets' text,
repeated, in two layouts: 10 JSON Lines files, and one single large JSON Lines file (which the build
must cut into byte-range units to use more than one core). Every build is the real command,
`spanbert-data build`, run as a process with one tokenizer thread per worker (RAYON_NUM_THREADS=1) and
the bundled BERT vocabulary (so that every run tokenizes with the same vocabulary); the process tree's
resident memory is sampled every 0.2 s.

    .venv/bin/python -m bench.build_scaling [--mb 250] [--unit-mb 16] [--repeat 3] [--rss-mb 250 1000] [--quick]

Speed runs: every configuration runs `--repeat` times, round-robin (so that a slow minute of a shared
machine hits all of them alike), and the fastest run of each counts. They use 16 MB units: a 250 MB
corpus then has ~16 units, so that two workers get balanced work, as the default 64 MB units do on a
corpus of several GB (with 64 MB units a 250 MB file is four units, one of them small, and two workers
can only reach ~1.6x). The memory runs use the default 64 MB units (memory grows with the unit size).

Prints a table and writes bench/results/build_scaling.json: MB/s for the pool and for Dask at 1 and 2
workers, the 1 -> 2 speed-up (goal >= 1.7x on 2 cores), Dask's overhead against the pool at equal
workers (goal <= 10%), and the peak RSS of the driver and of each worker for two input sizes (goal
< 2 GB and flat as the corpus grows).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import machine_info, write_result

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "spanbert-data"
VOCAB = REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"
ENV = {**os.environ, "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def base_lines() -> list[bytes]:
    """JSON Lines records of every document of the bundled text (the Wikipedia sample, the test excerpts)."""
    lines = (REPO / "examples" / "wiki" / "enwiki-sample.jsonl").read_bytes().splitlines()
    excerpt = (REPO / "tests" / "assets" / "masking_wiki_excerpt.txt").read_text()
    for i, doc in enumerate(excerpt.split("\n\n")):
        if doc.strip():
            lines.append(json.dumps({"id": f"excerpt-{i}", "text": doc.strip()}).encode())
    return lines


def make_corpus(dest: Path, mb: float, files: int) -> int:
    """`files` JSON Lines files together about `mb` MB (the bundled documents repeated); returns the bytes."""
    dest.mkdir(parents=True)
    lines = base_lines()
    block = b"\n".join(lines) + b"\n"
    copies = max(1, round(mb * 1e6 / len(block)))
    per_file = -(-copies // files)
    total = 0
    for f in range(files):
        n = min(per_file, copies - f * per_file)
        if n <= 0:
            break
        with open(dest / f"part-{f:03d}.jsonl", "wb") as out:
            for _ in range(n):
                out.write(block)
        total += n * len(block)
    return total


def run_build(corpus: Path, out: Path, workers: int, scheduler: str | None, unit_mb: float,
              sample_rss: bool = False) -> dict:  # fmt: skip
    """One `spanbert-data build`: wall seconds, and with `sample_rss` the peak RSS of the driver and of each other
    process (sampled every 0.2 s; the speed runs do not sample, so that the sampler takes no core time)."""
    cmd = [str(CLI), "build", "--corpus", str(corpus), "--out", str(out), "--tokenizer", str(VOCAB),
           "--workers", str(workers), "--unit-mb", str(unit_mb)]  # fmt: skip
    if scheduler:
        cmd += ["--scheduler", scheduler]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(proc.pid)
    peak: dict[int, tuple[str, int]] = {}
    while sample_rss and proc.poll() is None:
        try:
            family = [driver, *driver.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in family:
            try:
                rss = p.memory_info().rss
                name = "driver" if p.pid == proc.pid else " ".join(p.cmdline()[1:3])[:60]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if rss > peak.get(p.pid, ("", 0))[1]:
                peak[p.pid] = (name, rss)
        time.sleep(0.2)
    err = proc.stderr.read()
    proc.wait()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({' '.join(cmd)}):\n{err[-3000:]}")
    own = re.search(r"built in ([0-9.]+)s", err)
    workers_rss = sorted((rss for pid, (name, rss) in peak.items() if pid != proc.pid), reverse=True)
    return {
        "seconds": seconds,
        "build_seconds": float(own.group(1)) if own else None,  # the build's own time (no interpreter start)
        "driver_peak_rss_mb": peak.get(proc.pid, ("", 0))[1] / 2**20,
        "worker_peak_rss_mb": [r / 2**20 for r in workers_rss],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=250.0, help="corpus size for the speed runs (>= 200 for the claim)")
    ap.add_argument("--rss-mb", type=float, nargs="+", default=[250.0, 1000.0], help="corpus sizes for memory")
    ap.add_argument("--unit-mb", type=float, default=16.0, help="unit size of the speed runs")
    ap.add_argument("--rss-unit-mb", type=float, default=64.0, help="unit size of the memory runs (the default)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each speed configuration; the fastest counts")
    ap.add_argument("--quick", action="store_true", help="20 MB and 4 MB units: a smoke run, not the claim")
    args = ap.parse_args()
    if args.quick:
        args.mb, args.rss_mb, args.unit_mb, args.rss_unit_mb, args.repeat = 20.0, [20.0, 40.0], 4.0, 4.0, 1

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        layouts = {"10 files": 10, "one file": 1}
        sizes = {}
        for name, files in layouts.items():
            sizes[name] = make_corpus(tmp / name.replace(" ", "-"), args.mb, files)
        runs = iter(range(1 << 30))
        configs = [(layout, executor, scheduler, workers) for layout in layouts
                   for executor, scheduler in (("pool", None), ("dask", "local")) for workers in (1, 2)]  # fmt: skip
        for round_ in range(args.repeat):
            for layout, executor, scheduler, workers in configs:
                corpus = tmp / layout.replace(" ", "-")
                r = run_build(corpus, tmp / f"out-{next(runs)}", workers, scheduler, args.unit_mb)
                r.update(layout=layout, executor=executor, workers=workers, round=round_, mb=sizes[layout] / 1e6,
                         mb_per_s=sizes[layout] / 1e6 / r["seconds"],
                         build_mb_per_s=sizes[layout] / 1e6 / r["build_seconds"])  # fmt: skip
                rows.append(r)
                print(f"round {round_ + 1}: {layout:9s} {executor:5s} workers={workers}: {r['mb_per_s']:.2f} MB/s "
                      f"({r['seconds']:.1f} s; the build's own {r['build_seconds']:.1f} s)", flush=True)  # fmt: skip
                for path in tmp.glob("out-*"):
                    subprocess.run(["rm", "-rf", str(path)], check=True)
        memory = []
        for mb in args.rss_mb:
            corpus = tmp / f"rss-{mb:g}"
            size = make_corpus(corpus, mb, 1)
            r = run_build(corpus, tmp / f"out-{next(runs)}", 2, None, args.rss_unit_mb, sample_rss=True)
            r.update(mb=size / 1e6, mb_per_s=size / 1e6 / r["seconds"])
            memory.append(r)
            print(f"memory, one {size / 1e6:.0f} MB file, pool workers=2: driver {r['driver_peak_rss_mb']:.0f} MB, "
                  f"workers {', '.join(f'{w:.0f}' for w in r['worker_peak_rss_mb'])} MB", flush=True)
            subprocess.run(["rm", "-rf", str(corpus), *map(str, tmp.glob("out-*"))], check=True)

    def speed(layout, executor, workers, field="mb_per_s"):
        """The fastest of the configuration's runs."""
        return max(r[field] for r in rows if (r["layout"], r["executor"], r["workers"]) == (layout, executor, workers))

    summary = {}
    print(f"\n{'layout':10s} {'executor':8s} {'1 worker':>9s} {'2 workers':>10s} {'speed-up':>9s} {'vs pool':>8s}"
          f" | build's own time: {'1 worker':>9s} {'2 workers':>10s} {'speed-up':>9s} {'vs pool':>8s}")  # fmt: skip
    for layout in ("10 files", "one file"):
        for executor in ("pool", "dask"):
            key = f"{layout}/{executor}"
            cells = []
            for field in ("mb_per_s", "build_mb_per_s"):
                one, two = speed(layout, executor, 1, field), speed(layout, executor, 2, field)
                overhead = {w: 1 - speed(layout, "dask", w, field) / speed(layout, "pool", w, field) for w in (1, 2)}
                prefix = "" if field == "mb_per_s" else "build_"
                summary.setdefault(key, {}).update({f"{prefix}mb_per_s_1": one, f"{prefix}mb_per_s_2": two,
                                                    f"{prefix}speedup_1_to_2": two / one})  # fmt: skip
                if executor == "dask":
                    summary[key][f"{prefix}overhead_vs_pool"] = overhead
                vs = f"{100 * overhead[2]:+.1f}%" if executor == "dask" else ""
                cells.append(f"{one:9.2f} {two:10.2f} {two / one:8.2f}x {vs:>8s}")
            print(f"{layout:10s} {executor:8s} {cells[0]} | {'':19s}{cells[1]}")
    print("MB/s of the whole command (process start, pass 1, pass 2) and of the build's own time (`built in`: "
          "without the interpreter's start and imports); the fastest of the repeats")
    print("goals: speed-up >= 1.7x on 2 cores; Dask overhead <= 10% (vs pool: how much slower Dask is at 2 workers)")
    worst = max(max(m["worker_peak_rss_mb"], default=0) for m in memory)
    per_input = ", ".join(f"{m['mb']:.0f} MB input: {max(m['worker_peak_rss_mb'], default=0):.0f} MB" for m in memory)
    drivers = ", ".join(f"{m['driver_peak_rss_mb']:.0f} MB" for m in memory)
    print(f"peak RSS per worker: {per_input} (goal < 2048 MB and flat); driver: {drivers}")
    write_result("build_scaling", {
        "corpus": "bundled Wikipedia sample + test excerpts, repeated, JSON Lines",
        "unit_mb": args.unit_mb, "rss_unit_mb": args.rss_unit_mb, "repeat": args.repeat,
        "speed": "the fastest of the repeats of each configuration",
        "tokenizer": "tests/assets/bert-uncased-tokenizer.json",
        "tokenizer_threads_per_worker": 1, "runs": rows, "summary": summary, "memory": memory,
        "worst_worker_peak_rss_mb": worst, "goals": {"speedup": 1.7, "dask_overhead": 0.10, "worker_rss_mb": 2048},
        "quick": args.quick, "machine": machine_info(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
