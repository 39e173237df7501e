"""Pass 1 from the containers corpora are held in: JSON Lines, Parquet, a `datasets` save_to_disk folder, and the
same Parquet from S3 (issue 21). Goals: Parquet at least JSON Lines' speed; S3 at least 0.8x the local Parquet.

The same documents (the bundled Wikipedia sample and the test excerpts, repeated to `--mb` of text) are written by
each real writer: JSON Lines (json.dumps), Parquet (pyarrow, row groups of `--rows-per-group` documents, as the Hub's
shards hold a few hundred), `Dataset.save_to_disk` (Arrow streams), and the Parquet file uploaded to a local S3
server (moto on 127.0.0.1, as the tests start it). For each, in one process, in rounds (so that a slow minute of a
shared machine hits every container alike; the fastest round counts):

- **read**: the documents of every unit (list, plan, read: what pass 1 does before tokenizing);
- **pass 1**: the whole of pass 1 (list, plan, then every unit read, tokenized with the bundled BERT vocabulary,
  cut into blocks and written to the token store), one unit after another as `--workers 1` runs it.

MB/s are of document text (UTF-8), the same for every container, so the rates compare directly. Every container's
store must hold the same blocks (checked). Prints a table; writes bench/results/corpus_formats.json.

    .venv/bin/python -m bench.corpus_formats [--mb 40] [--unit-mb 8] [--rows-per-group 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import local_s3, machine_info, write_result
from spanbert_data.corpus import CorpusStats
from spanbert_data.listing import list_corpus
from spanbert_data.shards import read_arrow_file
from spanbert_data.store import build_unit
from spanbert_data.tokenizer import load_tokenizer
from spanbert_data.unit_reader import unit_documents
from spanbert_data.units import plan_sources

REPO = Path(__file__).resolve().parents[1]
VOCAB = REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"


def documents(mb: float) -> list[str]:
    """The bundled documents, repeated until their text holds `mb` MB."""
    texts = [json.loads(line)["text"] for line in (REPO / "examples" / "wiki" / "enwiki-sample.jsonl").open()]
    excerpt = (REPO / "tests" / "assets" / "masking_wiki_excerpt.txt").read_text()
    texts += [doc.strip() for doc in excerpt.split("\n\n") if doc.strip()]
    out, size = [], 0
    while size < mb * 1e6:
        for text in texts:
            out.append(text)
            size += len(text.encode())
    return out


def write_containers(texts: list[str], root: Path, rows_per_group: int) -> dict[str, Path]:
    import datasets

    datasets.disable_progress_bars()
    (root / "jsonl").mkdir(parents=True)
    with open(root / "jsonl" / "corpus.jsonl", "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
    (root / "parquet").mkdir()
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    pq.write_table(table, root / "parquet" / "train-00000-of-00001.parquet", row_group_size=rows_per_group)
    datasets.Dataset(table).save_to_disk(str(root / "save_to_disk"), max_shard_size="64MB")
    return {"JSON Lines": root / "jsonl", "Parquet": root / "parquet", "save_to_disk": root / "save_to_disk"}


def run_pass1(where: str, unit_bytes: int, tokenize: bool, out: Path) -> tuple:
    """(seconds, documents, blocks) of reading every unit (tokenize=False) or of the whole of pass 1."""
    tokenizer = load_tokenizer(VOCAB) if tokenize else None
    if tokenize:
        shutil.rmtree(out, ignore_errors=True)
        (out / "store").mkdir(parents=True)
    started = time.perf_counter()
    corpus, files = list_corpus([where])
    docs = blocks = 0
    for source in plan_sources(files, unit_bytes):
        for unit in source.units():
            if tokenize:
                marker = build_unit(out, corpus, unit, tokenizer, 510)
                docs, blocks = docs + marker["documents"], blocks + marker["blocks"]
            else:
                docs += sum(1 for _ in unit_documents(corpus, unit, CorpusStats(), lambda m: None))
    return time.perf_counter() - started, docs, blocks


def store_digest(out: Path) -> str:
    """The blocks of a store, in order, whatever its units: their lengths and token ids, hashed."""
    lengths, values = hashlib.sha256(), hashlib.sha256()  # apart: the parts' boundaries differ between containers
    for part in sorted((out / "store").glob("part-*.arrow")):
        tokens = read_arrow_file(part).column("tokens")
        lengths.update(np.diff(tokens.offsets.to_numpy()).astype(np.int64).tobytes())
        values.update(tokens.values.to_numpy().tobytes())
    return lengths.hexdigest() + values.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=40.0, help="MB of document text (default 40)")
    ap.add_argument("--unit-mb", type=float, default=8.0, help="input unit size (default 8: several units)")
    ap.add_argument("--rows-per-group", type=int, default=200, help="Parquet row group size in documents")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out-dir", default=None, help="where NAME.json goes (default bench/results)")
    args = ap.parse_args()

    texts = documents(args.mb)
    text_mb = sum(len(t.encode()) for t in texts) / 1e6
    unit_bytes = int(args.unit_mb * (1 << 20))
    with tempfile.TemporaryDirectory() as tmp, local_s3("bench") as fs:
        tmp = Path(tmp)
        containers = {name: str(path) for name, path in write_containers(texts, tmp, args.rows_per_group).items()}
        parquet = next((tmp / "parquet").iterdir())
        fs.put_file(str(parquet), f"bench/corpus/{parquet.name}")
        containers["Parquet from S3 (moto)"] = "s3://bench/corpus"
        sizes = {name: sum(p.stat().st_size for p in Path(where).rglob("*") if p.is_file())
                 for name, where in containers.items() if not where.startswith("s3://")}  # fmt: skip
        sizes["Parquet from S3 (moto)"] = parquet.stat().st_size
        best: dict[tuple[str, str], float] = {}
        digests: dict[str, str] = {}
        counts: dict[str, tuple] = {}
        run_pass1(containers["Parquet"], unit_bytes, True, tmp / "warm")  # compile and load once
        for _ in range(args.rounds):
            for name, where in containers.items():
                for what in ("read", "pass 1"):
                    out = tmp / "store"
                    seconds, docs, blocks = run_pass1(where, unit_bytes, what == "pass 1", out)
                    best[name, what] = min(best.get((name, what), float("inf")), seconds)
                    if what == "pass 1":
                        digests[name] = store_digest(out)
                        counts[name] = (docs, blocks)
    assert len(set(digests.values())) == 1, f"containers tokenized to different blocks: {digests}"
    assert len(set(counts.values())) == 1 and counts["JSON Lines"][0] == len(texts), counts

    rows = []
    for name in containers:
        rows.append({"container": name, "file_mb": round(sizes[name] / 1e6, 2),
                     "read_mb_per_s": round(text_mb / best[name, "read"], 2),
                     "pass1_mb_per_s": round(text_mb / best[name, "pass 1"], 2),
                     "pass1_vs_jsonl": round(best["JSON Lines", "pass 1"] / best[name, "pass 1"], 3)})  # fmt: skip
    s3_vs_local = best["Parquet", "pass 1"] / best["Parquet from S3 (moto)", "pass 1"]
    print(f"{text_mb:.1f} MB of document text ({len(texts)} documents), --unit-mb {args.unit_mb}, Parquet row groups "
          f"of {args.rows_per_group} documents; fastest of {args.rounds} rounds; one process")
    print(f"{'container':<24} {'file MB':>8} {'read MB/s':>10} {'pass 1 MB/s':>12} {'pass 1 vs JSONL':>16}")
    for r in rows:
        print(f"{r['container']:<24} {r['file_mb']:>8.1f} {r['read_mb_per_s']:>10.2f} {r['pass1_mb_per_s']:>12.2f} "
              f"{r['pass1_vs_jsonl']:>15.2f}x")
    print(f"Parquet from S3 / local Parquet, pass 1: {s3_vs_local:.2f}x (goal >= 0.8); every container's store holds "
          "the same blocks")
    path = write_result("corpus_formats", {
        "machine": machine_info(), "text_mb": round(text_mb, 2), "documents": len(texts), "unit_mb": args.unit_mb,
        "rows_per_group": args.rows_per_group, "rounds": args.rounds, "speed": "fastest round of each",
        "tokenizer": "tests/assets/bert-uncased-tokenizer.json (compiled encoder), --workers 1",
        "rows": rows, "s3_vs_local_parquet_pass1": round(s3_vs_local, 3),
        "goals": {"parquet_vs_jsonl_pass1": ">= 1.0", "s3_vs_local_parquet_pass1": ">= 0.8"},
    }, args.out_dir)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
