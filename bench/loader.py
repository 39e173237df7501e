"""Loader throughput per rank on one core: tokens/s of building one rank's step batches from the mmapped shards.

Peer in the same run: the obvious row-by-row gather (Python loop over rows, NumPy slices per row) feeding the
same `make_batch`. Goal (issue 4): ≥ 5 M tokens/s per rank on one core.

    python bench/loader.py [--data DATASET] [--global-batch 256] [--world 1] [--steps 20]

Without --data it builds a 512-slot dataset from examples/wiki with the test WordPiece vocabulary.
Writes bench/results/loader.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine_info, write_result  # noqa: E402
from spanbert_train.batch import make_batch  # noqa: E402
from spanbert_train.data import LIST_COLUMNS, Dataset, TrainLoader, epoch_order  # noqa: E402


def build_example(out: Path) -> Path:
    from spanbert_data.build import build_dataset
    from spanbert_data.config import BuildConfig

    build_dataset(BuildConfig(corpus=REPO / "examples" / "wiki", out=out, valid_fraction=0.0,
                              tokenizer=REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"),
                  log=lambda msg: None)  # fmt: skip
    return out


def naive_step(loader: TrainLoader, epoch: int, index: int) -> int:
    """Row-by-row twin of TrainLoader.make_step (the peer)."""
    source = loader.sources[epoch % len(loader.sources)]
    rows = epoch_order(loader.seed, epoch, len(source))[index * loader.G : (index + 1) * loader.G]
    per_rank = loader.G // loader.world
    mine = rows[loader.rank * per_rank : (loader.rank + 1) * per_rank]
    tokens = 0
    for lo in range(0, per_rank, loader.micro):
        ids, lists = [], {name: ([0], []) for name in LIST_COLUMNS}
        for g in mine[lo : lo + loader.micro]:
            s = int(np.searchsorted(source.first, g, side="right") - 1)
            r = int(g - source.first[s])
            cols = source.shards[s].columns
            ids.append(cols["input_ids"][r])
            for name in LIST_COLUMNS:
                off, val = cols[name]
                piece = val[off[r] : off[r + 1]]
                lists[name][1].append(piece)
                lists[name][0].append(lists[name][0][-1] + len(piece))
        batch = make_batch(np.stack(ids), **{n: (np.array(o), np.concatenate(v)) for n, (o, v) in lists.items()})
        tokens += batch.num_tokens
    return tokens


def timed(fn, steps: int) -> tuple[list[float], int]:
    times, tokens = [], 0
    for i in range(steps):
        t0 = time.perf_counter()
        tokens = fn(i)
        times.append(time.perf_counter() - t0)
    return times, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--global-batch", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--world", type=int, default=1, help="ranks the global batch is split over (rank 0 is timed)")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or build_example(Path(tmp) / "wiki512")
        ds = Dataset(data)
        gbs = min(args.global_batch, ds.rows(0) // (args.micro_batch * args.world) * args.micro_batch * args.world)
        loader = TrainLoader(ds, gbs, args.micro_batch, 0, args.world, seed=0)
        n = loader.batches_per_epoch(0)
        ours, tokens = timed(lambda i: sum(b.num_tokens for b in loader.make_step(0, i % n).micro_batches),
                             args.steps)  # fmt: skip
        peer, peer_tokens = timed(lambda i: naive_step(loader, 0, i % n), max(3, args.steps // 4))
    assert tokens > 0 and peer_tokens > 0
    rate, peer_rate = tokens / statistics.median(ours), peer_tokens / statistics.median(peer)
    rows = [("ours (NumPy ragged gather)", rate, statistics.median(ours)),
            ("peer (row-by-row Python)", peer_rate, statistics.median(peer))]  # fmt: skip
    print(f"loader, rank 0 of {args.world}, global batch {gbs} rows x {ds.max_seq_len} slots, one core")
    print(f"{'implementation':30s} {'tokens/s':>14s} {'ms/step':>10s}")
    for name, r, t in rows:
        print(f"{name:30s} {r:14,.0f} {t * 1e3:10.2f}")
    verdict = "met" if rate >= 5e6 else "NOT met"
    print(f"ratio ours/peer: {rate / peer_rate:.1f}x; goal 5 M tokens/s per rank: {verdict}")
    result = {
        "machine": machine_info(), "device": "cpu (1 thread)", "numpy": np.__version__, "global_batch": gbs,
        "world": args.world, "micro_batch": args.micro_batch, "row_len": ds.max_seq_len, "steps": args.steps,
        "tokens_per_step_rank": tokens, "ours_tokens_per_s": rate, "ours_ms_p20_p50_p80": _spread(ours),
        "peer_tokens_per_s": peer_rate, "peer_ms_p20_p50_p80": _spread(peer), "ratio": rate / peer_rate,
    }  # fmt: skip
    print(f"wrote {write_result('loader', result)}")


def _spread(times: list[float]) -> list[float]:
    return [float(np.percentile(times, q)) * 1e3 for q in (20, 50, 80)]


if __name__ == "__main__":
    main()
