"""Pass 1 (read → tokenize → block → Arrow token store) and the whole build (+ mask, pack, write shards)
against the plain tokenizer on the same text.

The tokenizer is the data pipeline's physical limit (DESIGN §9): this measures how much of its speed
our pass 1 keeps. Both sides use the same tokenizer object settings and thread count, in one run.

    .venv/bin/python -m bench.tokenize_blocks [--mb 20] [--repeats 3] [--encoder hf]

`--encoder hf` (the default here) keeps this a measure of pass 1's overhead over `tokenizers`;
bench/wordpiece.py compares the compiled encoder (`--encoder fast`, the build's default) with it.

Prints a table and writes bench/results/tokenize_blocks.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine_info, write_result
from spanbert_data.build import build_dataset
from spanbert_data.config import BuildConfig
from spanbert_data.corpus import CorpusStats, read_documents
from spanbert_data.inputs import Corpus
from spanbert_data.listing import list_corpus_files
from spanbert_data.store import build_unit
from spanbert_data.tokenizer import load_tokenizer
from spanbert_data.units import Unit

REPO = Path(__file__).resolve().parents[1]


def corpus_text(target_mb: float) -> list[list[str]]:
    """Documents of the example corpus, repeated until the text reaches `target_mb` MB."""
    root = REPO / "examples" / "wiki"
    docs = [d.lines for f in list_corpus_files(root) for d in read_documents(f, root, CorpusStats())]
    size = sum(len(line.encode()) + 1 for d in docs for line in d)
    reps = max(1, int(target_mb * 1e6 / size + 0.999))
    return docs * reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=20.0, help="size of the text, MB (>= 20 for the claim)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokenizer", default=str(REPO / "tests/assets/bert-uncased-tokenizer.json"))
    ap.add_argument("--encoder", choices=["auto", "fast", "hf"], default="hf", help="pass 1's and the build's encoder")
    args = ap.parse_args()

    docs = corpus_text(args.mb)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = "\n\n".join("\n".join(d) for d in docs) + "\n"
        (tmp / "corpus").mkdir()
        (tmp / "corpus" / "wiki.txt").write_text(text)
        nbytes = len(text.encode())
        lines = [line for d in docs for line in d]
        tok = load_tokenizer(args.tokenizer, encoder=args.encoder)
        raw = tok._tok  # the same tokenizers.Tokenizer object our pass 1 uses

        def plain(method):
            def run():
                n = 0
                for i in range(0, len(lines), 32768):
                    for enc in method(lines[i : i + 32768], add_special_tokens=False):
                        n += len(enc.ids)
                return n

            return run

        def pass1():
            out = tmp / "out"
            unit = Unit(0, 0, "files", ("wiki.txt",), nbytes)
            marker = build_unit(out, Corpus([str(tmp / "corpus")]), unit, tok, 510)
            return marker["tokens"]

        runs = iter(range(1 << 30))

        def full_build():
            out = tmp / f"build-{next(runs)}"
            cfg = BuildConfig(corpus=tmp / "corpus", out=out, tokenizer=Path(args.tokenizer), encoder=args.encoder,
                              workers=1)  # in-process, as pass 1 above
            return build_dataset(cfg, log=lambda _m: None)["tokens"]

        rows = {}
        sides = [("tokenizers encode_batch (plain)", plain(raw.encode_batch)),
                 ("tokenizers encode_batch_fast", plain(raw.encode_batch_fast)), ("spanbert pass 1", pass1),
                 ("spanbert build (pass 1 + 2)", full_build)]  # fmt: skip
        for name, fn in sides:
            times, tokens = [], 0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                tokens = fn()
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            rows[name] = {"seconds_median": med, "seconds": times, "tokens": tokens,
                          "mb_per_s": nbytes / 1e6 / med, "tokens_per_s": tokens / med}  # fmt: skip

    plain, ours = rows["tokenizers encode_batch (plain)"], rows["spanbert pass 1"]
    ratio = ours["mb_per_s"] / plain["mb_per_s"]
    ratio_fast = ours["mb_per_s"] / rows["tokenizers encode_batch_fast"]["mb_per_s"]
    ratio_build = rows["spanbert build (pass 1 + 2)"]["mb_per_s"] / plain["mb_per_s"]
    print(f"text: {nbytes / 1e6:.1f} MB, {len(lines)} lines; median of {args.repeats}")
    print(f"{'':34s} {'MB/s':>8s} {'Mtok/s':>8s} {'s':>7s}")
    for name, r in rows.items():
        print(f"{name:34s} {r['mb_per_s']:8.2f} {r['tokens_per_s'] / 1e6:8.2f} {r['seconds_median']:7.2f}")
    print(f"ratio pass 1 / plain encode_batch: {ratio:.3f} (goal >= 0.9); / encode_batch_fast: {ratio_fast:.3f}")
    print(f"ratio whole build (+ mask, pack, write) / plain encode_batch: {ratio_build:.3f} (goal >= 0.9)")
    write_result("tokenize_blocks", {
        "text_mb": nbytes / 1e6, "lines": len(lines), "results": rows, "ratio_vs_plain": ratio,
        "ratio_vs_encode_batch_fast": ratio_fast, "build_ratio_vs_plain": ratio_build, "goal": 0.9,
        "machine": machine_info(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
