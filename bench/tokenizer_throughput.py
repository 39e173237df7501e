"""SubwordTokenizer.encode_lines (ids as NumPy) against plain tokenizers `encode_batch` on the same text.

encode_lines must cost little beyond the tokenizer itself (DESIGN §9: the tokenizer is the pipeline's
limit). The peer is `Tokenizer.encode_batch` returning Encoding objects, no NumPy at all; the runs are
interleaved so that load from other processes hits every variant alike. A second table times only the
Encoding -> flat NumPy conversion, the step where Python overhead hides, for the candidate ways.

    .venv/bin/python -m bench.tokenizer_throughput [--dump PATH] [--repeats 5] [--threads N]

Text: the lines of a corpus file (default: the bundled Wikipedia sample, examples/wiki/), one
sentence per line. Prints tables and writes bench/results/tokenizer_throughput.json.

This measures the `tokenizers` path (`--encoder hf`); bench/wordpiece.py measures the compiled encoder.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from operator import attrgetter
from pathlib import Path

import numpy as np

from bench.common import machine_info, write_result
from spanbert_data.corpus import CorpusStats, read_documents
from spanbert_data.tokenizer import load_tokenizer, set_tokenizer_threads

REPO = Path(__file__).resolve().parents[1]
DUMP = REPO / "examples" / "wiki" / "enwiki-sample.jsonl"


def dump_lines(path: Path) -> list[str]:
    """Every text line of a corpus file (any format the builder reads: the example JSONL, an XML dump, ...)."""
    return [line for doc in read_documents(path, path.parent, CorpusStats()) for line in doc.lines]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(times: list[float], nbytes: int, ntokens: int) -> dict:
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times), "MB_per_s": nbytes / 1e6 / med,
            "ns_per_token": med / ntokens * 1e9}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", type=Path, default=DUMP)
    ap.add_argument("--tokenizer", default=str(REPO / "tests/assets/bert-uncased-tokenizer.json"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="RAYON_NUM_THREADS (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        set_tokenizer_threads(args.threads)

    lines = dump_lines(args.dump)
    nbytes = sum(len(line.encode()) + 1 for line in lines)
    tok = load_tokenizer(args.tokenizer, encoder="hf")
    raw = tok._tok  # the same tokenizers.Tokenizer object (truncation/padding off) that encode_lines drives
    flat, _ = tok.encode_lines(lines)  # warm-up, and the token count
    ntokens = int(flat.size)

    # 1. end to end, interleaved
    variants = {
        "tokenizers encode_batch (peer)": lambda: raw.encode_batch(lines, add_special_tokens=False),
        "tokenizers encode_batch_fast": lambda: raw.encode_batch_fast(lines, add_special_tokens=False),
        "encode_lines (ids -> NumPy)": lambda: tok.encode_lines(lines),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name] += timed(fn, 1)
    end_to_end = {k: summary(v, nbytes, ntokens) for k, v in times.items()}
    peer = end_to_end["tokenizers encode_batch (peer)"]["median_s"]
    print(f"{len(lines)} lines, {nbytes / 1e6:.2f} MB, {ntokens} tokens, {args.repeats} interleaved repeats")
    print(f"{'variant':34s} {'MB/s':>7s} {'ns/token':>9s} {'time / peer':>12s}")
    for name, r in end_to_end.items():
        print(f"{name:34s} {r['MB_per_s']:7.2f} {r['ns_per_token']:9.1f} {r['median_s'] / peer:12.3f}")

    # 2. Encoding -> flat ids only, on one fixed batch of encodings
    encs = raw.encode_batch_fast(lines, add_special_tokens=False)
    get_ids = attrgetter("ids")
    conversions = {
        "fromiter(chain(map(ids))) [ours]": lambda: np.fromiter(
            itertools.chain.from_iterable(map(get_ids, encs)), np.int32, ntokens
        ),
        "fromiter(chain([ids list]))": lambda: np.fromiter(
            itertools.chain.from_iterable([e.ids for e in encs]), np.int32, ntokens
        ),
        "concatenate(np.array per line)": lambda: np.concatenate([np.array(e.ids, np.int32) for e in encs]),
        "np.array(list(chain(...)))": lambda: np.array(
            list(itertools.chain.from_iterable(map(get_ids, encs))), np.int32
        ),
        "Encoding.merge + np.array": lambda: np.array(type(encs[0]).merge(encs, False).ids, np.int32),
        "per-line lengths (len(enc))": lambda: np.fromiter(map(len, encs), np.int64, len(encs)),
    }
    conv = {}
    print(f"\n{'Encoding -> NumPy':34s} {'ms':>7s} {'ns/token':>9s} {'% of fast':>10s}")
    fast = end_to_end["tokenizers encode_batch_fast"]["median_s"]
    for name, fn in conversions.items():
        r = summary(timed(fn, args.repeats), nbytes, ntokens)
        conv[name] = r
        print(f"{name:34s} {r['median_s'] * 1e3:7.1f} {r['ns_per_token']:9.1f} {100 * r['median_s'] / fast:9.1f}%")

    path = write_result(
        "tokenizer_throughput",
        {
            "machine": machine_info(),
            "threads": args.threads or "all cores",
            "text": {"source": args.dump.name, "lines": len(lines), "bytes": nbytes, "tokens": ntokens},
            "tokenizer": Path(args.tokenizer).name,
            "repeats": args.repeats,
            "end_to_end": end_to_end,
            "encode_lines_over_peer": end_to_end["encode_lines (ids -> NumPy)"]["median_s"] / peer,
            "conversion": conv,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
