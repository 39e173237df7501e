"""Throughput of the Numba masking kernels (SPEC §2, §3) against their peers, one CPU thread.

Peers, all on the same 510-token blocks of real BERT-tokenized English (the test asset, tiled):
- Hugging Face transformers' DataCollatorForLanguageModeling (BERT sub-word masking) and the same
  collator with whole_word_mask=True (transformers 5 folded DataCollatorForWholeWordMask into it);
- a plain Python/NumPy implementation of SPEC §2 + §3, one block at a time, the way the
  original SpanBERT code does it (a set of masked positions, one NumPy draw at a time).
The slow peers run on a subset; every row reports tokens/s, and the ratio column is the Numba span
kernel's tokens/s over the row's. Times are of the public mask_blocks (validation and allocation
included); the "blocks per call" row reuses output memory, the others pay fresh page faults.
Writes bench/results/masking.json with machine info and the load average (the CPU may be shared).

    python -m bench.masking            # 50 M tokens (the lead's full run)
    python -m bench.masking --quick    # a small run
"""

import os

os.environ["NUMBA_NUM_THREADS"] = "1"  # before numba is imported: one core, as the claim says

import argparse
import json
import platform
import statistics
import subprocess
import time
import warnings
from pathlib import Path

import numba
import numpy as np

from spanbert_data.config import SCHEMES, MaskingConfig  # noqa: E402
from spanbert_data.masking import mask_blocks, replacement_cdf, span_length_probs  # noqa: E402
from spanbert_data.words import word_start_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests/assets/bert-uncased-tokenizer.json"
TEXT = ROOT / "tests/assets/masking_wiki_excerpt.txt"
BLOCK = 510


def load_corpus():
    """Token ids, per-token character offsets (for the HF whole-word collator) and the vocab tables."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.no_truncation()
    tok.no_padding()
    lines = [s for s in TEXT.read_text().splitlines() if s.strip()]
    ids, spans, base = [], [], 0
    for line, enc in zip(lines, tok.encode_batch(lines, add_special_tokens=False), strict=True):
        ids += enc.ids
        spans += [(base + a, base + b) for a, b in enc.offsets]
        base += len(line) + 1
    strings = [""] * tok.get_vocab_size()
    for s, i in tok.get_vocab().items():
        strings[i] = s
    special = np.zeros(len(strings), bool)
    special[[tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]] = True
    ids = np.array(ids, np.uint16)
    counts = np.bincount(ids, minlength=len(strings))
    return ids, np.array(spans, np.int64), word_start_table(strings), replacement_cdf(counts, special, "unigram"), tok


def make_blocks(ids, n_tokens):
    """Consecutive 510-token windows of the corpus tiled to n_tokens (rounded down to whole blocks)."""
    n_blocks = max(1, n_tokens // BLOCK)
    tokens = np.resize(ids, n_blocks * BLOCK)
    offsets = np.arange(n_blocks + 1, dtype=np.int64) * BLOCK
    return tokens, offsets


def time_numba(tokens, offsets, ws, cdf, mask_id, scheme, repeats, chunk_blocks=None):
    """Seconds per repeat of masking every block: one mask_blocks call (what a shard build does), or
    calls of chunk_blocks blocks each, whose output memory the allocator reuses (no fresh page faults)."""
    keys = np.arange(offsets.size - 1, dtype=np.int64)
    cfg = MaskingConfig(scheme=scheme)
    starts = ws[tokens]  # word starts per token, as pass 2 gathers them
    mask_blocks(tokens[: 2 * BLOCK], offsets[:3], keys[:2], starts[: 2 * BLOCK], cdf, mask_id, cfg, 0, 0)  # compile
    step = chunk_blocks or keys.size
    times = []
    for r in range(-1, repeats):  # r = -1: untimed, so that every row meets the allocator in the same state
        t = time.perf_counter()
        for lo in range(0, keys.size, step):
            hi = min(keys.size, lo + step)
            sub = offsets[lo : hi + 1]
            mask_blocks(tokens[sub[0] : sub[-1]], sub - sub[0], keys[lo:hi], starts[sub[0] : sub[-1]], cdf, mask_id,
                        cfg, 0, r + 1)  # fmt: skip
        times.append(time.perf_counter() - t)
    return times[1:]


def numpy_span_block(block, ws, cdf, mask_id, gen, probs):
    """SPEC §2 + §3 for one block, with a Python set and one NumPy draw at a time (the original's way)."""
    n = len(block)
    budget = int(np.ceil(0.15 * n - 1e-9))
    starts = ws[block]
    starts[0] = True
    masked, spans = set(), []
    while len(masked) < budget:
        length = gen.choice(len(probs), p=probs) + 1
        anchor = int(gen.integers(n))
        if anchor in masked:
            continue
        i = anchor
        while not starts[i]:
            i -= 1
        first, words = i, 0
        while i < n and len(masked) < budget:
            if starts[i] and i != first:
                words += 1
                if words == length:
                    break
            masked.add(i)
            i += 1
        spans.append((first, i - 1))
    merged = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out = block.copy()
    sbo = []
    for s, e in merged:
        u = gen.random()
        if u < 0.8:
            out[s : e + 1] = mask_id
        elif u < 0.9:
            out[s : e + 1] = np.searchsorted(cdf, gen.random(e - s + 1), side="right")
        if s > 0 and e < n - 1:
            sbo += [(i, s - 1, e + 1, i - s) for i in range(s, min(e + 1, s + 15))]
    return out, sorted(masked), sbo


def time_numpy(tokens, offsets, ws, cdf, mask_id, n_blocks):
    gen = np.random.default_rng(0)
    probs = span_length_probs(0.2, 10)
    t = time.perf_counter()
    for b in range(n_blocks):
        numpy_span_block(tokens[offsets[b] : offsets[b + 1]], ws, cdf, mask_id, gen, probs)
    return time.perf_counter() - t


def time_hf(tokens, offsets, char_spans, tok, n_blocks, whole_word, batch_size=32):
    import torch
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), unk_token="[UNK]", pad_token="[PAD]",
                                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip
    with warnings.catch_warnings():  # whole_word_mask=True turns random replacement off (HF says so); so be it
        warnings.simplefilter("ignore", UserWarning)
        collator = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, whole_word_mask=whole_word, seed=0)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    spans = np.resize(char_spans, (tokens.size, 2))
    examples = []
    for b in range(n_blocks):
        lo, hi = offsets[b], offsets[b + 1]
        ex = {"input_ids": [cls, *tokens[lo:hi].tolist(), sep], "special_tokens_mask": [1] + [0] * (hi - lo) + [1]}
        if whole_word:
            ex["offset_mapping"] = [(0, 0), *map(tuple, spans[lo:hi].tolist()), (0, 0)]
        examples.append(ex)
    collator(examples[:2])  # warm-up
    t = time.perf_counter()
    for i in range(0, n_blocks, batch_size):
        collator(examples[i : i + batch_size])
    return time.perf_counter() - t


def machine_info():
    cpu = "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    import transformers

    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "numba": numba.__version__, "numpy": np.__version__,
            "transformers": transformers.__version__,
            "git_revision": rev or None, "numba_num_threads": numba.config.NUMBA_NUM_THREADS}  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=50_000_000, help="tokens masked by each Numba kernel per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each Numba kernel (median reported)")
    ap.add_argument("--hf-blocks", type=int, default=1024, help="blocks timed through each HF collator")
    ap.add_argument("--numpy-blocks", type=int, default=2000, help="blocks timed through the NumPy implementation")
    ap.add_argument("--chunk-blocks", type=int, default=1024, help="blocks per call in the steady-state row")
    ap.add_argument("--quick", action="store_true", help="small run: 2 M tokens, 3 repeats, small peer subsets")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/masking.json")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.hf_blocks, args.numpy_blocks = 2_000_000, 3, 128, 300

    ids, char_spans, ws, cdf, tok = load_corpus()
    mask_id = tok.token_to_id("[MASK]")
    tokens, offsets = make_blocks(ids, args.tokens)
    n_tok = tokens.size
    rows = []
    numba_runs = [(scheme, None) for scheme in SCHEMES] + [("span", args.chunk_blocks)]
    for scheme, chunk in numba_runs:
        times = time_numba(tokens, offsets, ws, cdf, mask_id, scheme, args.repeats, chunk)
        name = f"numba {scheme}" + (f" ({chunk} blocks per call)" if chunk else "")
        rows.append({"name": name, "tokens": n_tok, "seconds": statistics.median(times),
                     "seconds_min": min(times), "seconds_max": max(times), "repeats": len(times)})  # fmt: skip
    nb = min(args.numpy_blocks, offsets.size - 1)
    rows.append({"name": "python/numpy span (SPEC §2, per block)", "tokens": nb * BLOCK,
                 "seconds": time_numpy(tokens, offsets, ws, cdf, mask_id, nb), "repeats": 1})  # fmt: skip
    nb = min(args.hf_blocks, offsets.size - 1)
    for whole_word, name in ((False, "HF DataCollatorForLanguageModeling"), (True, "HF ... whole_word_mask=True")):
        rows.append({"name": name, "tokens": nb * BLOCK, "repeats": 1,
                     "seconds": time_hf(tokens, offsets, char_spans, tok, nb, whole_word)})  # fmt: skip
    span_rate = rows[0]["tokens"] / rows[0]["seconds"]
    load = os.getloadavg()
    print(f"one thread, {n_tok:,} tokens in {offsets.size - 1:,} blocks of {BLOCK}; ratio = numba span / row; "
          f"load average {load[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    print(f"{'implementation':42s} {'tokens':>12s} {'seconds':>9s} {'Mtok/s':>9s} {'ratio':>9s}")
    for r in rows:
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["span_kernel_ratio"] = span_rate / r["tokens_per_s"]
        print(f"{r['name']:42s} {r['tokens']:12,d} {r['seconds']:9.3f} {r['tokens_per_s'] / 1e6:9.2f} "
              f"{r['span_kernel_ratio']:8.1f}x")  # fmt: skip
    hf_best = max(r["tokens_per_s"] for r in rows if r["name"].startswith("HF"))
    chunked_rate = rows[len(SCHEMES)]["tokens_per_s"]
    goals = {"span_kernel_tokens_per_s_ge_50M": span_rate >= 50e6,
             "span_kernel_ge_100x_every_hf_collator": span_rate >= 100 * hf_best,
             "span_kernel_chunked_ge_100x_every_hf_collator": chunked_rate >= 100 * hf_best}  # fmt: skip
    print("goals:", goals)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "masking", "quick": args.quick, "block_len": BLOCK, "threads": 1, "load_average": load,
              "rows": rows,
              "goals": goals, "machine": machine_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
