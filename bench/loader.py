"""Loader throughput per rank on one core: tokens/s of building one rank's step batches from the mmapped shards.

Peer in the same run: the obvious row-by-row gather (Python loop over rows, NumPy slices per row) feeding the
same `make_batch`. Goal (issue 4): ≥ 5 M tokens/s per rank on one core.

Same run, the cost of the corrupt-data guards (issue 16):
- the structural row checks (spanbert_data.rowcheck), on in every mode: `make_step` with and without them
  (goal: < 2% of the loader's time);
- shard hashing (`--verify-shards sha256`, the default, against `size`): the loader's stream (both of its
  threads) on a larger dataset, tiled from the example's rows, whose next mask epoch is hashed by the verifier
  thread WHILE the measured steps are built: tokens/s per rank, the wait for the first step (its shards are
  hashed first), and the SHA-256 rate of one thread.

    python -m bench.loader [--data DATASET] [--global-batch 256] [--world 1] [--steps 20]
                           [--tile-shards 8] [--tile-rows 16384] [--stream-steps 100]

Same run, a dataset in object storage (issue 15): the stream from a local S3 server (moto, 127.0.0.1) through the
shard cache, cold (empty) and warm, against the same files read locally.

Same run, two datasets mixed by weight (issue 23): `make_step` of a blend, weights 1,1, of the two halves of the tiled
dataset (each half a dataset of its own: half of every mask epoch's shards, the same files), against the tiled
dataset alone: the same rows, in one dataset or two, so that only the mixing differs (a micro-batch touches about
as many shards either way). Goal ≥ 0.9× its tokens/s.

Without --data it builds a 512-slot dataset from examples/wiki with the test WordPiece vocabulary.
Writes bench/results/loader.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from bench.common import machine_info, write_result  # noqa: E402
from spanbert_data.files import atomic_write_json, sha256_file  # noqa: E402
from spanbert_data.packing import record_batch_columns, rows_to_record_batch  # noqa: E402
from spanbert_data.rowcheck import first_bad_row  # noqa: E402
from spanbert_data.shards import load_manifest, read_arrow_file, write_arrow_file  # noqa: E402
from spanbert_train.batch import make_batch  # noqa: E402
from spanbert_train.data import Dataset, TrainLoader, open_blend  # noqa: E402
from spanbert_train.shard import LIST_COLUMNS  # noqa: E402


def build_example(out: Path) -> Path:
    from spanbert_data.build import build_dataset
    from spanbert_data.config import BuildConfig

    build_dataset(BuildConfig(corpus=REPO / "examples" / "wiki", out=out, valid_fraction=0.0,
                              tokenizer=REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"),
                  log=lambda msg: None)  # fmt: skip
    return out


def naive_step(loader: TrainLoader, batch: int) -> int:
    """Row-by-row twin of TrainLoader.make_step (the peer)."""
    source = loader.source
    rows = loader.order.rows(batch, batch + 1)[0]  # the same rows, from the same memoised order
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


def tile_dataset(src: Path, dst: Path, shards: int, rows: int, epochs: int) -> Path:
    """A larger dataset of `epochs` mask epochs × `shards` shards × `rows` rows, each shard the source's rows
    repeated from another starting row (real rows, other bytes: every shard has its own hash)."""
    manifest = load_manifest(src)
    cols = record_batch_columns(read_arrow_file(src / manifest["shards"]["train"][0]["path"]))
    n = cols["input_ids"].shape[0]
    train = []
    for epoch in range(epochs):
        for j in range(shards):
            idx = (np.arange(rows) + 7919 * (epoch * shards + j)) % n
            tiled = {"input_ids": cols["input_ids"][idx]}
            for name in cols.keys() - {"input_ids"}:
                off, val = cols[name]
                lengths = (off[idx + 1] - off[idx]).astype(np.int64)
                tiled[name] = (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
                               np.concatenate([val[off[i] : off[i + 1]] for i in idx]))  # fmt: skip
            rel = f"epoch-{epoch}/part-{j:05d}.arrow"
            info = write_arrow_file(dst / rel, rows_to_record_batch(tiled, tiled["input_ids"].shape[1]))
            train.append({"path": rel, "epoch": epoch, "rows": rows, **info})
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    atomic_write_json(dst / "manifest.json", {**manifest, "mask_epochs": epochs, "shards": {"train": train,
                                                                                            "valid": []}})
    return dst


def stream(data, verify: str, gbs: int, micro: int, world: int, steps: int, storage=None) -> dict:
    """The loader as the trainer uses it (batch builder + verifier threads), consumed as fast as it comes."""
    ds = Dataset(data, verify=verify, storage=storage)
    training = [s for shards in ds.epochs for s in shards]

    def hashed_mb() -> float:
        return sum(s.path.stat().st_size for s in training if s.hash_check is not None and s.hash_check.done) / 1e6

    t0 = time.perf_counter()
    loader = TrainLoader(ds, gbs, micro, 0, world, seed=0)
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    before, tokens, t1 = hashed_mb(), 0, time.perf_counter()
    for _ in range(steps):
        tokens += sum(b.num_tokens for b in next(it).micro_batches)
    elapsed = time.perf_counter() - t1
    during = hashed_mb() - before
    loader.close()
    downloaded = ds.cache.downloaded if ds.cache is not None else 0
    ds.close()
    return {"tokens_per_s": tokens / elapsed, "first_step_s": first, "hashed_mb_before_first_step": before,
            "hashed_mb_during_steps": during, "seconds": elapsed, "objects_downloaded": downloaded,
            "tokens_per_s_with_first_step": tokens / (elapsed + first)}  # fmt: skip


BLEND_ROUNDS = 9  # alternating rounds of the blend comparison


def split_dataset(src: Path, dst: Path, part: int, parts: int) -> Path:
    """Dataset `part` of `parts` of `src`: the `part`-th contiguous share of every mask epoch's shards, hard-linked (the
    same files), with the same tokenizer and no validation shards."""
    manifest = load_manifest(src)
    train = []
    for epoch in range(manifest["mask_epochs"]):
        shards = [e for e in manifest["shards"]["train"] if e["epoch"] == epoch]
        train += np.array_split(np.array(shards, dtype=object), parts)[part].tolist()
    for entry in train:
        (dst / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        os.link(src / entry["path"], dst / entry["path"])
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    atomic_write_json(dst / "manifest.json", {**manifest, "shards": {"train": train, "valid": []}})
    return dst


def blend_steps(tiled: Path, tmp: Path, args) -> dict:
    """make_step of a blend of the two halves of `tiled` (weights 1,1) against `tiled` alone, in alternating rounds of
    the same steps: tokens/s of each (rank 0 of args.world)."""
    halves = [split_dataset(tiled, tmp / f"half-{i}", i, 2) for i in range(2)]
    loaders = {"alone": TrainLoader(Dataset(tiled), args.global_batch, args.micro_batch, 0, args.world, seed=0),
               "blend": TrainLoader(open_blend(halves, [1, 1]), args.global_batch, args.micro_batch, 0, args.world,
                                    seed=0)}  # fmt: skip
    for loader in loaders.values():  # every shard these steps touch hashed, and its pages read, before any timing
        for i in range(args.steps):
            loader.make_step(i)

    def rate(loader: TrainLoader) -> float:
        tokens, t0 = 0, time.perf_counter()
        for i in range(args.steps):
            tokens += sum(b.num_tokens for b in loader.make_step(i).micro_batches)
        return tokens / (time.perf_counter() - t0)

    rates = {"alone": [], "blend": []}
    for _ in range(BLEND_ROUNDS):  # pairs of rounds back to back: load drifting over time hits both alike
        for name, loader in loaders.items():
            rates[name].append(rate(loader))
    median = {name: statistics.median(r) for name, r in rates.items()}
    paired = [b / a for a, b in zip(rates["alone"], rates["blend"], strict=True)]
    return {"tokens_per_s": median, "rounds": rates, "weights": [1, 1], "steps": args.steps,
            "shards_per_mask_epoch": {"alone": args.tile_shards, "each half": args.tile_shards // 2},
            "ratio": statistics.median(paired), "ratio_of_medians": median["blend"] / median["alone"],
            "ratio_of_best": max(rates["blend"]) / max(rates["alone"])}  # fmt: skip


def remote_streams(tiled: Path, tmp: Path, args) -> dict:
    """The same stream from a local S3 server (moto's ThreadedMotoServer on 127.0.0.1, objects in this process):
    a cold cache (empty: the first step waits for the shards it touches, the rest of the epochs download behind
    the training) and a warm one (every object already verified in the cache), against the local files."""
    import logging
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    from spanbert_train.remote_data import Storage

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")  # fmt: skip
    try:
        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        t0 = time.perf_counter()
        for path in sorted(tiled.rglob("*")):
            if path.is_file():
                fs.put_file(str(path), f"bench/tiled/{path.relative_to(tiled).as_posix()}")
        upload_s = time.perf_counter() - t0
        runs = {mode: [] for mode in ("local", "s3 cold cache", "s3 warm cache")}
        for i in range(args.stream_runs):
            cache = tmp / f"cache-{i}"
            for mode in runs:
                data = tiled if mode == "local" else "s3://bench/tiled"
                storage = None if mode == "local" else Storage(cache_dir=cache)
                runs[mode].append(stream(data, "sha256", args.global_batch, args.micro_batch, args.world,
                                         args.stream_steps, storage))  # fmt: skip
            shutil.rmtree(cache)
    finally:
        server.stop()
    return {"runs": runs, "upload_s": upload_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--global-batch", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--world", type=int, default=1, help="ranks the global batch is split over (rank 0 is timed)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tile-shards", type=int, default=8, help="shards per mask epoch of the hashing dataset")
    ap.add_argument("--tile-rows", type=int, default=16384, help="rows per shard of the hashing dataset")
    ap.add_argument("--stream-steps", type=int, default=100, help="steps timed per stream run")
    ap.add_argument("--stream-runs", type=int, default=3, help="stream runs per mode, alternating")
    ap.add_argument("--no-remote", dest="remote", action="store_false",
                    help="skip the s3:// rows (they need s3fs and moto[server], both in the test extra)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or build_example(Path(tmp) / "wiki512")
        ds = Dataset(data)
        gbs = min(args.global_batch, ds.rows(0) // (args.micro_batch * args.world) * args.micro_batch * args.world)
        loader = TrainLoader(ds, gbs, args.micro_batch, 0, args.world, seed=0)
        unchecked = TrainLoader(ds, gbs, args.micro_batch, 0, args.world, seed=0, check_rows=False)
        n = loader.order.streams[0].batches(0)
        for i in range(n):  # every shard hashed and the kernels compiled before anything is timed
            loader.make_step(i)
        ours, tokens = timed(lambda i: sum(b.num_tokens for b in loader.make_step(i % n).micro_batches), args.steps)
        bare, _ = timed(lambda i: sum(b.num_tokens for b in unchecked.make_step(i % n).micro_batches), args.steps)
        ours2, _ = timed(lambda i: sum(b.num_tokens for b in loader.make_step(i % n).micro_batches), args.steps)
        bare2, _ = timed(lambda i: sum(b.num_tokens for b in unchecked.make_step(i % n).micro_batches), args.steps)
        ours, bare = ours + ours2, bare + bare2  # interleaved halves: load drifting over time hits both alike
        peer, peer_tokens = timed(lambda i: naive_step(loader, i % n), max(3, args.steps // 4))
        # The row checks alone, on the same micro-batches (the difference of two noisy timings is less precise).
        cols = [loader.source.gather(r, check=False) for r in np.array_split(loader.order.rows(0, 1)[0],
                                                                             gbs // args.micro_batch)]  # fmt: skip
        def check_step(i: int) -> int:
            for c in cols:
                assert first_bad_row(c, ds.vocab_size) is None
            return 0

        check_s, _ = timed(check_step, args.steps * 5)

        tiled = tile_dataset(Path(data), Path(tmp) / "tiled", args.tile_shards, args.tile_rows, epochs=2)
        shard_mb = tiled.joinpath("epoch-1/part-00000.arrow").stat().st_size / 1e6
        hash_s, _ = timed(lambda i: len(sha256_file(tiled / "epoch-1" / f"part-{i % args.tile_shards:05d}.arrow")), 4)
        hash_rate = shard_mb / min(hash_s)
        runs = {mode: [] for mode in ("size", "sha256")}
        for _ in range(args.stream_runs):  # alternate the modes so that both see the same machine
            for mode in runs:
                runs[mode].append(stream(tiled, mode, args.global_batch, args.micro_batch, args.world,
                                         args.stream_steps))  # fmt: skip
        tiled_mb = sum(p.stat().st_size for p in tiled.rglob("*.arrow")) / 1e6
        tiled_tokens = sum(int(s.row_tokens.sum()) for shards in Dataset(tiled, "size").epochs for s in shards)
        blend = blend_steps(tiled, Path(tmp), args)
        remote = remote_streams(tiled, Path(tmp), args) if args.remote else None

    assert tokens > 0 and peer_tokens > 0
    rate, bare_rate = tokens / statistics.median(ours), tokens / statistics.median(bare)
    peer_rate = peer_tokens / statistics.median(peer)
    check_share = statistics.median(check_s) / statistics.median(ours)
    rows = [("ours (NumPy ragged gather)", rate, statistics.median(ours)),
            ("ours without row checks", bare_rate, statistics.median(bare)),
            ("peer (row-by-row Python)", peer_rate, statistics.median(peer))]  # fmt: skip
    print(f"loader, rank 0 of {args.world}, global batch {gbs} rows x {ds.max_seq_len} slots, one core")
    print(f"{'implementation':30s} {'tokens/s':>14s} {'ms/step':>10s}")
    for name, r, t in rows:
        print(f"{name:30s} {r:14,.0f} {t * 1e3:10.2f}")
    verdict = "met" if rate >= 5e6 else "NOT met"
    print(f"ratio ours/peer: {rate / peer_rate:.1f}x; goal 5 M tokens/s per rank: {verdict}")
    print(f"row checks: {statistics.median(check_s) * 1e3:.3f} ms per step = {100 * check_share:.2f}% of the "
          f"loader's step time (goal < 2%: {'met' if check_share < 0.02 else 'NOT met'}); with/without checks "
          f"timed: {100 * (bare_rate / rate - 1):+.1f}%")
    best = {mode: sorted(r, key=lambda x: x["tokens_per_s"])[len(r) // 2] for mode, r in runs.items()}  # median
    print(f"\nstream (both loader threads), {tiled_mb:,.0f} MB tiled dataset: 2 mask epochs x {args.tile_shards} "
          f"shards x {args.tile_rows} rows; global batch {args.global_batch}; median of {args.stream_runs} runs")
    print(f"{'--verify-shards':16s} {'tokens/s/rank':>14s} {'first step (s)':>15s} {'MB hashed before':>17s} "
          f"{'MB hashed while timed':>22s}")
    for mode, r in best.items():
        print(f"{mode:16s} {r['tokens_per_s']:14,.0f} {r['first_step_s']:15.2f} "
              f"{r['hashed_mb_before_first_step']:17,.0f} {r['hashed_mb_during_steps']:22,.0f}")
    ratio = best["sha256"]["tokens_per_s"] / best["size"]["tokens_per_s"]
    # Load-independent view: CPU time of hashing a token's share of the shard bytes vs building its batch.
    bytes_per_token = tiled_mb * 1e6 / tiled_tokens
    hash_share = bytes_per_token / (hash_rate * 1e6) * best["size"]["tokens_per_s"]
    print(f"sha256/size tokens/s: {ratio:.3f}; SHA-256 {hash_rate:,.0f} MB/s on one thread = "
          f"{1e3 / hash_rate:.2f} s per GB of shards a rank reads, spent by the verifier thread ahead of need")
    print(f"hashing a token's {bytes_per_token:.1f} shard bytes takes {100 * hash_share:.1f}% of the CPU time of "
          f"building its batch (size mode), on the verifier's own thread")
    print(f"\ntwo datasets mixed 1,1 (issue 23): the tiled dataset's halves ({args.tile_shards // 2} shards per mask "
          f"epoch each) {blend['tokens_per_s']['blend']:,.0f} tokens/s against {blend['tokens_per_s']['alone']:,.0f} "
          f"for the tiled dataset alone (make_step, medians of {BLEND_ROUNDS} alternating rounds of {args.steps} steps)"
          f": {blend['ratio']:.3f}x, the median of the rounds' ratios (of the medians "
          f"{blend['ratio_of_medians']:.3f}x, of the best rounds {blend['ratio_of_best']:.3f}x; goal >= 0.9: "
          f"{'met' if blend['ratio'] >= 0.9 else 'NOT met'})")
    if remote is not None:
        med = {mode: sorted(r, key=lambda x: x["tokens_per_s"])[len(r) // 2] for mode, r in remote["runs"].items()}
        print(f"\nremote (s3:// from moto on 127.0.0.1; upload of the {tiled_mb:,.0f} MB took "
              f"{remote['upload_s']:.1f} s), the same stream, --verify-shards sha256; median of "
              f"{args.stream_runs} runs")
        print(f"{'source':16s} {'tokens/s/rank':>14s} {'first step (s)':>15s} {'tokens/s incl. first step':>26s} "
              f"{'objects downloaded':>19s}")
        for mode, r in med.items():
            print(f"{mode:16s} {r['tokens_per_s']:14,.0f} {r['first_step_s']:15.2f} "
                  f"{r['tokens_per_s_with_first_step']:26,.0f} {r['objects_downloaded']:19d}")
        for mode in ("s3 cold cache", "s3 warm cache"):
            print(f"{mode} / local tokens/s: {med[mode]['tokens_per_s'] / med['local']['tokens_per_s']:.3f}")
    result = {
        "machine": machine_info(), "device": "cpu (1 thread)", "numpy": np.__version__, "global_batch": gbs,
        "world": args.world, "micro_batch": args.micro_batch, "row_len": ds.max_seq_len, "steps": args.steps,
        "tokens_per_step_rank": tokens, "ours_tokens_per_s": rate, "ours_ms_p20_p50_p80": _spread(ours),
        "ours_without_row_checks_tokens_per_s": bare_rate, "without_checks_ms_p20_p50_p80": _spread(bare),
        "row_checks_ms_per_step": statistics.median(check_s) * 1e3, "row_checks_share_of_step": check_share,
        "peer_tokens_per_s": peer_rate, "peer_ms_p20_p50_p80": _spread(peer), "ratio": rate / peer_rate,
        "stream": {"dataset_mb": tiled_mb, "tile_shards": args.tile_shards, "tile_rows": args.tile_rows,
                   "global_batch": args.global_batch, "steps": args.stream_steps, "runs": runs,
                   "sha256_over_size_tokens_per_s": ratio, "sha256_mb_per_s_one_thread": hash_rate,
                   "shard_bytes_per_token": bytes_per_token, "hash_cpu_share_of_loader": hash_share},
        "remote": remote, "blend": blend,
        "load_average_1min": os.getloadavg()[0],
    }  # fmt: skip
    print(f"wrote {write_result('loader', result)}")


def _spread(times: list[float]) -> list[float]:
    return [float(np.percentile(times, q)) * 1e3 for q in (20, 50, 80)]


if __name__ == "__main__":
    main()
