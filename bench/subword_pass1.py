"""Pass 1 with a byte-level BPE and a Unigram/Metaspace tokenizer against raw `tokenizers` on the same text.

Issue 22's claim: pass 1 (read → tokenize → word starts → blocks → Arrow token store) keeps at least 0.9x of raw
`encode_batch_fast`, although it also finds every token's word start, which `encode_batch_fast` cannot report
(it skips the offsets pass). Also measured, to show what the word rules of spanbert_data/words.py avoid:
`encode_batch` (the offsets pass that word ids need) alone, and pass 1 forced onto tokenizers' word ids.

    .venv/bin/python -m bench.subword_pass1 [--mb 10] [--repeats 3] [--vocab-size 16000]

The tokenizers are trained here on the bundled Wikipedia sample (RoBERTa-style BPE; Unigram with Metaspace,
XLM-R-style); `--bpe`/`--unigram` take tokenizer.json files instead. Every variant runs in this process with
the same Rayon threads, interleaved per repeat in a rotating order; wall and CPU time (this process's threads:
steadier on a shared machine) are both reported. Prints a table and writes bench/results/subword_pass1.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine_info, write_result
from bench.subword_tokenizers import byte_level_bpe, sample_documents, unigram_metaspace
from bench.tokenize_blocks import corpus_text
from spanbert_data.store import build_unit
from spanbert_data.tokenizer import load_tokenizer
from spanbert_data.units import Unit
from spanbert_data.words import WordRule, word_ids_starts

BATCH = 8192  # lines per tokenizers call, as pass 1's (tokenizer._ENCODE_CHUNK_LINES)


def raw(method, lines, word_ids: bool = False):
    """Tokens of every line through one `tokenizers` batch method (and their word ids, if asked)."""
    def run():
        n = 0
        for i in range(0, len(lines), BATCH):
            encodings = method(lines[i : i + BATCH], add_special_tokens=False)
            n += sum(len(e.ids) for e in encodings)
            if word_ids:
                word_ids_starts(encodings)
        return n

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=10.0, help="size of the text, MB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=16000)
    ap.add_argument("--bpe", type=Path, help="a byte-level BPE tokenizer.json (default: trained here)")
    ap.add_argument("--unigram", type=Path, help="a Unigram/Metaspace tokenizer.json (default: trained here)")
    args = ap.parse_args()

    docs = corpus_text(args.mb)
    lines = [line for d in docs for line in d]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = [line for d in sample_documents(110) for line in d]
        paths = {}
        for name, given, make in (("byte-level BPE", args.bpe, byte_level_bpe), ("Unigram", args.unigram,
                                                                                 unigram_metaspace)):  # fmt: skip
            paths[name] = given or tmp / f"{name}.json"
            if given is None:
                make(train, args.vocab_size).save(str(paths[name]))
        text = "\n\n".join("\n".join(d) for d in docs) + "\n"
        (tmp / "corpus").mkdir()
        (tmp / "corpus" / "wiki.txt").write_text(text)
        nbytes = len(text.encode())
        unit = Unit(0, 0, "files", ("wiki.txt",), nbytes)
        results = {}
        for name, path in paths.items():
            tok = load_tokenizer(path)
            slow = load_tokenizer(path)
            slow.words = WordRule("word-ids", "forced: tokenizers' word ids")

            def pass1(t=tok):
                return build_unit(tmp / "out", tmp / "corpus", unit, t, 510)["tokens"]

            def pass1_word_ids(t=slow):
                return build_unit(tmp / "out-ids", tmp / "corpus", unit, t, 510)["tokens"]

            sides = {"tokenizers encode_batch_fast (ids only)": raw(tok._tok.encode_batch_fast, lines),
                     "tokenizers encode_batch (+ offsets)": raw(tok._tok.encode_batch, lines),
                     "tokenizers encode_batch + word ids": raw(tok._tok.encode_batch, lines, True),
                     "spanbert pass 1 (word starts, blocks, store)": pass1,
                     "spanbert pass 1 on tokenizers' word ids": pass1_word_ids}  # fmt: skip
            pass1()  # warm-up: Numba's cache, the byte-level class table
            times: dict[str, list[float]] = {k: [] for k in sides}
            cpu: dict[str, list[float]] = {k: [] for k in sides}
            tokens = {}
            names = list(sides)
            for r in range(args.repeats):  # interleaved, the order rotated: load and position hit every side alike
                for side in names[r % len(names) :] + names[: r % len(names)]:
                    t0, c0 = time.perf_counter(), time.process_time()
                    tokens[side] = sides[side]()
                    times[side].append(time.perf_counter() - t0)
                    cpu[side].append(time.process_time() - c0)
            base = statistics.median(times[names[0]])
            base_cpu = statistics.median(cpu[names[0]])
            rows = {side: {"seconds": t, "seconds_median": statistics.median(t), "cpu_seconds": cpu[side],
                           "cpu_seconds_median": statistics.median(cpu[side]), "tokens": tokens[side],
                           "mb_per_s": nbytes / 1e6 / statistics.median(t),
                           "vs_encode_batch_fast": base / statistics.median(t),
                           "vs_encode_batch_fast_cpu": base_cpu / statistics.median(cpu[side])}
                    for side, t in times.items()}  # fmt: skip
            results[name] = {"tokenizer": str(path) if path.parent != tmp else "trained here", "words": tok.words.kind,
                             "vocab_size": tok.vocab_size, "rows": rows}  # fmt: skip

    print(f"text: {nbytes / 1e6:.1f} MB, {len(lines)} lines; median of {args.repeats}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'tokenizer':15s} {'variant':46s} {'MB/s':>7s} {'wall s':>7s} {'CPU s':>7s} {'x fast (wall)':>14s} "
          f"{'x fast (CPU)':>13s}")  # fmt: skip
    for name, r in results.items():
        for side, row in r["rows"].items():
            print(f"{name:15s} {side:46s} {row['mb_per_s']:7.2f} {row['seconds_median']:7.2f} "
                  f"{row['cpu_seconds_median']:7.2f} {row['vs_encode_batch_fast']:14.3f} "
                  f"{row['vs_encode_batch_fast_cpu']:13.3f}")  # fmt: skip
    path = write_result("subword_pass1", {"text_mb": nbytes / 1e6, "lines": len(lines), "repeats": args.repeats,
                                          "results": results, "goal": 0.9, "machine": machine_info(),
                                          "load_average_at_end": os.getloadavg()})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
