"""Vocabulary training: our deterministic WordPiece and byte-level BPE trainers against the HF `tokenizers`
WordPiece and BPE trainers.

Claims (issues 10 and 22): on held-out text, tokens per word within 2% of a vocabulary of the same size from the
`tokenizers` trainer, and training time at most 2x that trainer's, on the same corpus and cores.

    .venv/bin/python -m bench.vocab [--docs /tmp/spanbert-vocab-corpus] [--vocab-sizes 8000 28996] [--repeats 3]
                                    [--models wordpiece bpe]

Corpora: the bundled Wikipedia sample (examples/wiki, 2.6 MB) and, when present, the larger docs corpus
that bench/make_vocab_corpus.py makes (Python and Perl manuals + the sample, ~23 MB). Each corpus's
documents are split by a hash of (file, document index): 10% held out, the rest written as JSON Lines
files of about --unit-mb each (so that counting has several units to spread over the workers).

Timed, interleaved per repeat, from the training files to a finished tokenizer, reading included, as wall
time and as CPU time (this process's threads + its finished worker processes; steadier on a shared machine):
- peer: our corpus reader -> `Tokenizer.train_from_iterator` with `trainers.WordPieceTrainer` (same
  options as our old code path: cased BERT normaliser, BERT pre-tokenizer, min_frequency 2), or for BPE with
  `trainers.BpeTrainer` (ByteLevel pre-tokenizer and its 256-character alphabet, RoBERTa's specials,
  min_frequency 2), Rayon on all cores;
- ours: `vocab.train_vocabulary` with --workers = all cores (spawned processes count the units), and
  with --workers 1 (in-process; the bytes must be identical).
Also ours on a sample of half the training text (`--vocab-sample-mb`). Quality: tokens per word on the
held-out documents (words as the BERT pre-tokenizer splits them), and the share of [UNK]. Prints a
table, writes bench/results/vocab.json (vocab_bpe.json with `--models bpe`).

Speed of the counting step (issue 24; bench/vocab_counting.py): per core, the compiled counter, the plain
Python counter it replaced and pass 1 on each corpus; with --build-corpus, the default build's whole time
(and --baseline CHECKOUT's), written to bench/results/vocab_counting.json. `--only speed` skips the comparison
with the peer, `--only quality` the speed rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine_info, write_result
from bench.vocab_counting import default_build, per_core, print_default_build, print_per_core
from spanbert_data.bpe_vocab import SPECIALS as BPE_SPECIALS
from spanbert_data.corpus import CorpusStats, read_documents
from spanbert_data.listing import list_corpus_files
from spanbert_data.tokenizer import SPECIAL_TOKENS, SubwordTokenizer, bert_pipeline, bert_post_processor
from spanbert_data.vocab import WordSplitter, corpus_vocabulary

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "wiki" / "enwiki-sample.jsonl"
DOCS = Path(tempfile.gettempdir()) / "spanbert-vocab-corpus"


def split_corpus(root: Path, dest: Path, unit_bytes: int) -> tuple[list[str], int]:
    """Write the training documents of root as JSONL files of ~unit_bytes under dest; return held-out lines."""
    base = root if root.is_dir() else root.parent
    held: list[str] = []
    out, size, k, written = None, 0, 0, 0
    dest.mkdir(parents=True)
    for path in list_corpus_files(root):
        rel = path.relative_to(base).as_posix()
        for i, doc in enumerate(read_documents(path, base, CorpusStats(), warn=lambda _m: None)):
            if hashlib.sha256(f"{rel}\0{i}".encode()).digest()[0] < 26:  # ~10%
                held += doc.lines
                continue
            if out is None or size >= unit_bytes:
                if out is not None:
                    out.close()
                out, size, k = open(dest / f"train-{k:04d}.jsonl", "w", encoding="utf-8"), 0, k + 1
            line = json.dumps({"text": "\n".join(doc.lines)}, ensure_ascii=False) + "\n"
            out.write(line)
            size += len(line.encode())
            written += len(line.encode())
    if out is not None:
        out.close()
    return held, written


def corpus_lines(train_dir: Path):
    for path in list_corpus_files(train_dir):
        for doc in read_documents(path, train_dir, CorpusStats(), warn=lambda _m: None):
            yield from doc.lines


def train_peer(train_dir: Path, vocab_size: int) -> SubwordTokenizer:
    """The HF `tokenizers` WordPiece trainer, as our code ran it before issue 10 (not deterministic)."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    bert_pipeline(tok, lowercase=False)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                        special_tokens=list(SPECIAL_TOKENS.values()),
                                        continuing_subword_prefix="##")  # fmt: skip
    tok.train_from_iterator(corpus_lines(train_dir), trainer)
    bert_post_processor(tok)
    return SubwordTokenizer(tok, "<tokenizers WordPieceTrainer>")


def train_peer_bpe(train_dir: Path, vocab_size: int) -> SubwordTokenizer:
    """The HF `tokenizers` BPE trainer, byte-level as RoBERTa's (not deterministic in its ties)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(BPE_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(corpus_lines(train_dir), trainer)
    return SubwordTokenizer(tok, "<tokenizers BpeTrainer>")


PEERS = {"wordpiece": ("tokenizers WordPieceTrainer (peer)", lambda d, n: train_peer(d, n)),
         "bpe": ("tokenizers BpeTrainer (peer)", lambda d, n: train_peer_bpe(d, n))}


def train_ours(train_dir: Path, vocab_size: int, unit_bytes: int, workers: int, sample_bytes: int = 0,
               model: str = "wordpiece"):  # fmt: skip
    return corpus_vocabulary(train_dir, vocab_size, sample_bytes, unit_bytes, workers, log=lambda _m: None,
                             model=model)[0]  # fmt: skip


def quality(tok: SubwordTokenizer, held: list[str], words: int) -> dict:
    flat, _ = tok.encode_lines(held)
    return {"tokens_per_word": flat.size / words, "unk_share": float((flat == tok.special_ids["unk"]).mean()),
            "vocab_size": tok.vocab_size}  # fmt: skip


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished child processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args):
    """(result, (wall seconds, CPU seconds)): on a loaded machine the CPU time is the steadier measure."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = fn(*args)
    return result, (time.perf_counter() - t0, cpu_seconds() - c0)


def compare(name: str, train_dir: Path, train_bytes: int, held: list[str], words: int, vocab_size: int,
            repeats: int, workers: int, unit_bytes: int, model: str = "wordpiece") -> dict:  # fmt: skip
    """Time and score both trainers of `model` at one vocabulary size; print the rows; return the record."""
    times: dict[str, list[tuple[float, float]]] = {"peer": [], "ours": [], "ours1": []}
    peer_q = []
    peer_name, peer = PEERS[model]
    for _ in range(repeats):  # interleaved, so that load from other processes hits every variant alike
        tok, t = timed(peer, train_dir, vocab_size)
        times["peer"].append(t)
        peer_q.append(quality(tok, held, words))
        ours, t = timed(train_ours, train_dir, vocab_size, unit_bytes, workers, 0, model)
        times["ours"].append(t)
        one, t = timed(train_ours, train_dir, vocab_size, unit_bytes, 1, 0, model)
        times["ours1"].append(t)
    sampled, t_sample = timed(train_ours, train_dir, vocab_size, unit_bytes, workers, train_bytes // 2, model)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    peer_tpw = statistics.mean(q["tokens_per_word"] for q in peer_q)
    rows = {
        peer_name: (med["peer"], {**peer_q[0], "tokens_per_word": peer_tpw}),
        f"ours, --workers {workers}": (med["ours"], quality(ours, held, words)),
        "ours, --workers 1": (med["ours1"], quality(one, held, words)),
        "ours, sample = half the text": (t_sample, quality(sampled, held, words)),
    }
    for trainer, ((wall, cpu), q) in rows.items():
        print(f"{name:12s} {model:9s} {train_bytes / 1e6:5.1f} {vocab_size:6d} {trainer:34s} {wall:8.2f} "
              f"{wall / med['peer'][0]:7.2f} {cpu:8.2f} {cpu / med['peer'][1]:7.2f} {q['tokens_per_word']:9.4f} "
              f"{q['tokens_per_word'] / peer_tpw - 1:+8.2%} {q['unk_share']:7.2%}")  # fmt: skip
    print(f"{'':12s} identical bytes for --workers 1 and {workers}: {one.sha256 == ours.sha256}")
    return {
        "corpus": name, "model": model, "train_bytes": train_bytes, "heldout_lines": len(held), "heldout_words": words,
        "vocab_size": vocab_size, "wall_cpu_seconds": times,
        "ours_over_peer_wall": med["ours"][0] / med["peer"][0], "ours_over_peer_cpu": med["ours"][1] / med["peer"][1],
        "peer_quality_per_repeat": peer_q,
        "rows": {k: {"wall_seconds": w, "cpu_seconds": c, **q,
                     "tokens_per_word_vs_peer": q["tokens_per_word"] / peer_tpw - 1}
                 for k, ((w, c), q) in rows.items()},
        "workers_1_equals_workers_n": one.sha256 == ours.sha256,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=DOCS, help="the larger corpus (bench/make_vocab_corpus.py)")
    ap.add_argument("--vocab-sizes", type=int, nargs="+", default=[8000, 28996])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unit-mb", type=float, default=4.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--models", nargs="+", choices=list(PEERS), default=list(PEERS))
    ap.add_argument("--only", choices=["speed", "quality"], default=None, help="one of the two parts (default both)")
    ap.add_argument("--build-corpus", type=Path, default=None, help="time the default build of this corpus too")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout (with its .venv) whose default build is timed beside ours, e.g. the commit "
                         "before issue 24")  # fmt: skip
    ap.add_argument("--build-repeats", type=int, default=3)
    args = ap.parse_args()
    unit_bytes = int(args.unit_mb * (1 << 20))
    corpora = {"wiki sample": SAMPLE}
    if args.docs.exists():
        corpora["docs + wiki"] = args.docs
    else:
        print(f"({args.docs} missing: run bench/make_vocab_corpus.py for the larger corpus)")
    splitter = WordSplitter()
    results, speed, build = [], {}, None
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for name, root in corpora.items():
            train_dir = Path(tmp) / name.replace(" ", "_").replace("+", "")
            held, train_bytes = split_corpus(root, train_dir, unit_bytes)
            if args.only != "quality":
                speed[name] = per_core(train_dir, unit_bytes, args.repeats)
                print_per_core(name, speed[name])
            if args.only == "speed":
                continue
            words = sum(len(splitter.words("\n".join(held[i : i + 2000]))) for i in range(0, len(held), 2000))
            print(f"{'corpus':12s} {'model':9s} {'MB':>5s} {'vocab':>6s} {'trainer':34s} {'wall s':>8s} "
                  f"{'x peer':>7s} {'CPU s':>8s} {'x peer':>7s} {'tok/word':>9s} {'vs peer':>8s} {'[UNK]':>7s}")
            for model in args.models:  # (BERT's words: one denominator for every row, the ratios are the claim)
                train_ours(train_dir, 300, unit_bytes, 1, 0, model)  # warm-up: Numba cache, imports
                for vocab_size in args.vocab_sizes:
                    results.append(compare(name, train_dir, train_bytes, held, words, vocab_size, args.repeats,
                                           args.workers, unit_bytes, model))  # fmt: skip
    if args.build_corpus is not None and args.only != "quality":
        build = default_build(args.build_corpus, args.build_repeats, args.baseline)
        print_default_build(build)
    common = {"machine": machine_info(), "load_average_at_end": os.getloadavg(), "unit_mb": args.unit_mb,
              "repeats": args.repeats}  # fmt: skip
    if speed:
        print(f"wrote {write_result('vocab_counting', {**common, 'per_core': speed, 'default_build': build})}")
    if results:
        name = "vocab" if "wordpiece" in args.models else "vocab_" + "_".join(args.models)  # keeps WordPiece's file
        print(f"wrote {write_result(name, {**common, 'workers': args.workers, 'results': results})}")


if __name__ == "__main__":
    main()
