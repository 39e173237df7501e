"""The documents define the dataset, not their container (docs/FORMAT.md): the same documents in the same order,
written by real writers (pyarrow, polars, duckdb, Hugging Face `datasets`, a Hub folder), build the shards of their
JSON Lines file byte for byte; the held-out documents are chosen by content, so they do not move with units, files
or positions, and exact copies of a document fall on one side. (In a bucket: tests/faults/test_corpus_storage.py;
on Dask: tests/faults/test_dask.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spanbert_data.build import build_dataset
from spanbert_data.config import BuildConfig
from spanbert_data.shards import read_arrow_file
from spanbert_data.store import document_hash

datasets = pytest.importorskip("datasets")
hub = pytest.importorskip("huggingface_hub")
polars = pytest.importorskip("polars")
duckdb = pytest.importorskip("duckdb")
datasets.disable_progress_bars()

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "wiki" / "enwiki-sample.jsonl"
VOCAB = REPO / "tests" / "assets" / "bert-uncased-tokenizer.json"
TEXTS = [json.loads(line)["text"] for line in EXAMPLE.read_text().splitlines()[:24]]
OTHER = ["A document of another split.", "It is never read unless that split is chosen."]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _pyarrow(root: Path) -> list:
    pq.write_table(pa.table({"id": range(len(TEXTS)), "text": TEXTS}), root / "train.parquet", row_group_size=3)
    return [root]


def _polars(root: Path) -> list:
    polars.DataFrame({"text": TEXTS, "n": list(range(len(TEXTS)))}).write_parquet(root / "x.parquet", row_group_size=5)
    return [root]


def _duckdb(root: Path) -> list:
    documents = pa.table({"text": TEXTS})  # noqa: F841 - duckdb reads the local variable by its name
    duckdb.sql(f"COPY (SELECT * FROM documents) TO '{root / 'x.parquet'}' (FORMAT PARQUET)")
    return [root]


def _save_to_disk(root: Path) -> list:
    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(root / "ds"), num_shards=3)
    return [root / "ds"]


def _to_parquet(root: Path) -> list:
    datasets.Dataset.from_dict({"text": TEXTS}).to_parquet(str(root / "x.parquet"), batch_size=4)
    return [root / "x.parquet"]


def _dataset_dict(root: Path) -> list:
    splits = {"train": datasets.Dataset.from_dict({"text": TEXTS}), "test": datasets.Dataset.from_dict({"text": OTHER})}
    datasets.DatasetDict(splits).save_to_disk(str(root / "dd"))
    return [root / "dd"]


def _hub_folder(root: Path) -> list:
    """As `huggingface-cli download` leaves a dataset pushed with `push_to_hub`: data/ shards and the card."""
    train = datasets.Dataset.from_dict({"text": TEXTS})
    for i in range(2):
        train.shard(2, i, contiguous=True).to_parquet(str(root / "hub" / "data" / f"train-0000{i}-of-00002.parquet"))
    datasets.Dataset.from_dict({"text": OTHER}).to_parquet(str(root / "hub" / "data" / "test-00000-of-00001.parquet"))
    card = hub.DatasetCardData(configs=[{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]}])  # fmt: skip
    hub.DatasetCard.from_template(card, pretty_name="test").save(root / "hub" / "README.md")
    return [root / "hub"]


def _arrow_file(root: Path) -> list:
    table = pa.table({"text": TEXTS})
    with pa.ipc.new_file(str(root / "x.arrow"), table.schema) as writer:
        writer.write_table(table, max_chunksize=7)
    return [root / "x.arrow"]


def _jsonl_then_parquet(root: Path) -> list:
    """Two --corpus entries, read in the order given (the Parquet half sorts first by name, and must not)."""
    write_jsonl(root / "b" / "first.jsonl", TEXTS[:10])
    pq.write_table(pa.table({"text": TEXTS[10:]}), root / "a.parquet", row_group_size=4)
    return [root / "b", root / "a.parquet"]


WRITERS = {"pyarrow": _pyarrow, "polars": _polars, "duckdb": _duckdb, "save_to_disk": _save_to_disk,
           "to_parquet": _to_parquet, "DatasetDict": _dataset_dict, "hub_folder": _hub_folder,
           "arrow_file": _arrow_file, "two_entries": _jsonl_then_parquet}  # fmt: skip


def build(corpus: list, out: Path, **kw) -> dict:
    kw = {"tokenizer": VOCAB, "unit_bytes": 48_000, **kw}
    cfg = BuildConfig(corpus=tuple(corpus), out=out, max_seq_len=128, rows_per_shard=300, valid_fraction=0.1, **kw)
    return build_dataset(cfg, log=lambda m: None)


def shards(out: Path, manifest: dict) -> dict:
    """What the trainer reads (every shard and the tokenizer, by name) and the manifest's fields about them."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and (
             p.relative_to(out).parts[0].startswith(("epoch-", "valid")) or p.name == "tokenizer.json")}  # fmt: skip
    fields = {k: manifest[k] for k in ("blocks", "valid_blocks", "tokens", "unigram_counts", "shards", "tokenizer")}
    return {**files, "manifest": json.dumps(fields, sort_keys=True).encode()}


@pytest.fixture(scope="module")
def jsonl_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jsonl")
    manifest = build([write_jsonl(tmp / "c" / "corpus.jsonl", TEXTS)], tmp / "out")
    assert manifest["valid_blocks"] > 0 and len(manifest["shards"]["train"]) > 1
    return shards(tmp / "out", manifest)


@pytest.mark.parametrize("writer", WRITERS)
def test_every_container_of_the_same_documents_builds_the_same_shards(writer, jsonl_build, tmp_path):
    (tmp_path / "c").mkdir()
    corpus = WRITERS[writer](tmp_path / "c")
    manifest = build(corpus, tmp_path / "out")
    assert manifest["corpus"]["documents"] == len(TEXTS)
    assert shards(tmp_path / "out", manifest) == jsonl_build


def test_a_parquet_build_on_two_workers_and_a_trained_vocabulary_match_the_json_lines_ones(tmp_path):
    jsonl = write_jsonl(tmp_path / "j" / "c.jsonl", TEXTS)
    (tmp_path / "p").mkdir()
    parquet = _to_parquet(tmp_path / "p")
    one = build([jsonl], tmp_path / "one", tokenizer=None, vocab_size=800)
    two = build(parquet, tmp_path / "two", tokenizer=None, vocab_size=800, workers=2)
    assert shards(tmp_path / "one", one) == shards(tmp_path / "two", two)


def _held_out_keys(out: Path, manifest: dict) -> tuple[set, set]:
    keys = [read_arrow_file(out / p["path"]).column("doc_hash").to_numpy() for p in manifest["store"]]
    keys = np.concatenate(keys)
    blocks = {split: np.concatenate([read_arrow_file(out / x["path"]).column("block_ids").values.to_numpy()
                                     for x in manifest["shards"][split] if x["epoch"] == 0])
              for split in ("train", "valid")}  # fmt: skip
    return set(keys[blocks["valid"]].tolist()), set(keys[blocks["train"]].tolist())


def test_held_out_documents_are_chosen_by_content_not_by_place(tmp_path):
    """Reversed order, other files and other units hold out the same documents; an exact copy of a document lands on
    the side of its original."""
    forward = build([write_jsonl(tmp_path / "f" / "c.jsonl", TEXTS)], tmp_path / "fo")
    back = TEXTS[::-1]
    (tmp_path / "b").mkdir()
    pq.write_table(pa.table({"text": back[:12]}), tmp_path / "b" / "0.parquet", row_group_size=2)
    write_jsonl(tmp_path / "b" / "1.jsonl", back[12:] + TEXTS[:5])  # five exact copies
    backward = build([tmp_path / "b"], tmp_path / "bo", unit_bytes=20_000)
    valid, train = _held_out_keys(tmp_path / "fo", forward)
    valid_b, train_b = _held_out_keys(tmp_path / "bo", backward)
    assert valid and valid == valid_b and train == train_b and not valid & train
    lines = [[line.strip() for line in t.splitlines() if line.strip()] for t in TEXTS]
    assert valid == {h for h in map(document_hash, lines) if h in valid}  # the keys are the documents' own
