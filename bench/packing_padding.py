"""Padding of our packer (best-fit decreasing) against simpler packers and the optimum's lower bound.

DESIGN §6 aims for < 2% padding. How much padding is *possible* depends on the example lengths: two
examples longer than half a row never share one, so the gaps beside long examples can only be filled
by short ones. Each distribution is therefore also scored with the Martello-Toth L2 lower bound on
the number of rows of ANY packing. Peers, in the same run on the same lengths:
  one-per-row      no packing at all
  next-fit         examples in corpus order, a new row whenever the next one does not fit (streaming)
  first-fit-dec    longest first, each into the FIRST row with room
  best-fit-dec     ours (spanbert_data.packing.pack_examples): longest first, into the FULLEST row with room

    .venv/bin/python -m bench.packing_padding [--repeats 5]

Prints a table and writes bench/results/packing_padding.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit

from bench.common import machine_info, write_result
from spanbert_data.packing import pack_examples, padding_fraction, rows_lower_bound

ROW_LEN = 512


# ----------------------------------------------------------------------------------- length distributions
def mixed(rng, n):
    """70% near-full examples U(400, 512), 30% U(3, 512) (lengths include [CLS]/[SEP])."""
    return np.where(rng.random(n) < 0.7, rng.integers(400, ROW_LEN + 1, n), rng.integers(3, ROW_LEN + 1, n))


@njit(cache=True)
def _greedy_blocks(line_lengths, line_doc, cap):
    """SPEC §1 blocks: whole lines of one document while the content stays <= cap (lines pre-split to <= cap)."""
    out = np.empty(line_lengths.shape[0], np.int64)
    n, cur = 0, 0
    for i in range(line_lengths.shape[0]):
        new_doc = i > 0 and line_doc[i] != line_doc[i - 1]
        if cur > 0 and (new_doc or cur + line_lengths[i] > cap):
            out[n] = cur
            n += 1
            cur = 0
        cur += line_lengths[i]
    if cur > 0:
        out[n] = cur
        n += 1
    return out[:n]


def wiki_like(rng, n, line_median, line_sigma):
    """The first n blocks of documents with lognormal token counts (median 250, mean ~510 tokens: English
    Wikipedia has ~6M articles, ~3B word pieces) made of lognormal lines."""
    docs = max(4, n)  # documents average more than one block, so this is enough
    totals = rng.lognormal(np.log(250), 1.2, docs)
    mean_line = line_median * np.exp(line_sigma**2 / 2)
    lines_per_doc = np.maximum(1, np.round(totals / mean_line)).astype(np.int64)
    line_doc = np.repeat(np.arange(docs), lines_per_doc)
    line_lengths = np.clip(rng.lognormal(np.log(line_median), line_sigma, line_doc.size), 1, ROW_LEN - 2)
    return _greedy_blocks(line_lengths.astype(np.int64), line_doc, ROW_LEN - 2)[:n] + 2


DISTRIBUTIONS = {
    "mixed 70% U(400,512) + 30% U(3,512)": mixed,
    "wiki-like, sentence lines (~28 tokens)": lambda rng, n: wiki_like(rng, n, 25, 0.5),
    "wiki-like, paragraph lines (~150 tokens)": lambda rng, n: wiki_like(rng, n, 120, 0.7),
}


# ----------------------------------------------------------------------------------- peers
@njit(cache=True)
def next_fit(lengths, row_len):
    rows, free = 0, 0
    for i in range(lengths.shape[0]):
        if lengths[i] > free:
            rows += 1
            free = row_len
        free -= lengths[i]
    return rows


@njit(cache=True)
def first_fit_decreasing(lengths, order, row_len):
    """Max-tree over rows' free space: descend to the leftmost row with room, O(n log n)."""
    size = 1
    while size < lengths.shape[0]:
        size *= 2
    tree = np.full(2 * size, row_len, np.int64)  # every leaf a (not yet opened) empty row
    rows = 0
    for j in range(order.shape[0]):
        need = lengths[order[j]]
        node = 1
        while node < size:
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        rows = max(rows, node - size + 1)
        tree[node] -= need
        node //= 2
        while node >= 1:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return rows




def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pack_examples(np.array([3, 4]), ROW_LEN)  # compile before timing
    first_fit_decreasing(np.array([3]), np.array([0]), ROW_LEN)
    next_fit(np.array([3]), ROW_LEN)

    results = []
    head = f"{'distribution':42s} {'n':>7s} {'1/row':>7s} {'next-fit':>8s} {'FFD':>7s} {'BFD ours':>8s} " \
           f"{'bound':>7s} {'BFD ms':>7s}"
    print(head + "\n" + "-" * len(head))
    for name, draw in DISTRIBUTIONS.items():
        for n in (2_000, 100_000):
            lengths = draw(np.random.default_rng(args.seed), n).astype(np.int64)
            (_, _, bfd), seconds = timed(lambda lengths=lengths: pack_examples(lengths, ROW_LEN), args.repeats)
            order = np.argsort(-lengths, kind="stable")
            rows = {"one_per_row": n, "next_fit": next_fit(lengths, ROW_LEN),
                    "first_fit_decreasing": first_fit_decreasing(lengths, order, ROW_LEN),
                    "best_fit_decreasing": bfd, "lower_bound": rows_lower_bound(lengths, ROW_LEN)}  # fmt: skip
            pad = {k: padding_fraction(lengths, v, ROW_LEN) for k, v in rows.items()}
            results.append({"distribution": name, "n": n, "mean_length": float(lengths.mean()),
                            "fraction_over_half_row": float(np.mean(lengths > ROW_LEN // 2)), "rows": rows,
                            "padding_fraction": pad, "best_fit_decreasing_seconds_median": seconds})  # fmt: skip
            print(f"{name:42s} {n:7d} {pad['one_per_row']:7.2%} {pad['next_fit']:8.2%} "
                  f"{pad['first_fit_decreasing']:7.2%} {pad['best_fit_decreasing']:8.2%} {pad['lower_bound']:7.2%} "
                  f"{seconds * 1e3:7.1f}")
    path = write_result("packing_padding", {"machine": machine_info(), "row_len": ROW_LEN, "seed": args.seed,
                                            "repeats": args.repeats, "results": results})  # fmt: skip
    print(f"\n'bound' = padding if rows = the L2 lower bound of any packing.  Wrote {path}")


if __name__ == "__main__":
    main()
