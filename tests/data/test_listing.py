"""What `--corpus` names (spanbert_data/listing.py): several entries in the order given, glob patterns, URLs, and
the folders Hugging Face `datasets` and the Hub leave (written here by `datasets` and `huggingface_hub` themselves),
recognised by their content."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import fsspec
import pytest

from spanbert_data.corpus import CorpusStats
from spanbert_data.errors import CorpusError
from spanbert_data.listing import list_corpus

datasets = pytest.importorskip("datasets")
hub = pytest.importorskip("huggingface_hub")
datasets.disable_progress_bars()
_names = itertools.count()


def names(entries, **kw) -> list[tuple[int, str]]:
    corpus, files = list_corpus(entries, **kw)
    return [(f.root, f.name) for f in files]


def touch(root: Path, *rels: str) -> Path:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"text of {rel}\n")
    return root


def test_entries_in_the_order_given_files_sorted_within_each(tmp_path):
    a = touch(tmp_path / "a", "z.txt", "b/y.txt", "b/a.txt", ".git/config")
    b = touch(tmp_path / "b", "one.txt")
    stats = CorpusStats()
    assert names([b, a, a / "z.txt"], stats=stats) == [(0, "one.txt"), (1, "b/a.txt"), (1, "b/y.txt"), (1, "z.txt"),
                                                       (2, "z.txt")]  # fmt: skip
    assert stats.skipped == {"hidden": 1}
    corpus, _ = list_corpus([b, a / "z.txt"])
    assert corpus.bases == (str(b), str(a)) and str(corpus) == f"{b}, {a / 'z.txt'}"


def test_glob_patterns_match_below_their_fixed_directory(tmp_path):
    root = touch(tmp_path / "c", "en/train-0.parquet", "en/train-1.parquet", "en/test-0.parquet", "de/train-0.parquet",
                 "en/deep/train-2.parquet", "notes.txt")  # fmt: skip
    assert names([f"{root}/en/train-*.parquet"]) == [(0, "train-0.parquet"), (0, "train-1.parquet")]
    assert names([f"{root}/*/train-?.parquet"]) == [(0, "de/train-0.parquet"), (0, "en/train-0.parquet"),
                                                    (0, "en/train-1.parquet")]  # fmt: skip
    assert names([f"{root}/**/train-*.parquet"])[-1] == (0, "en/train-1.parquet")
    assert (0, "en/deep/train-2.parquet") in names([f"{root}/**/train-*.parquet"])
    with pytest.raises(CorpusError, match=r"no file matches '\*\.jsonl'"):
        list_corpus([f"{root}/*.jsonl"])
    with pytest.raises(CorpusError, match="cannot be read"):
        list_corpus([tmp_path / "missing"])


def test_a_url_is_listed_once_with_sizes_and_hidden_objects_are_skipped(tmp_path):
    url = f"memory://listing-{next(_names)}/corpus"
    fs = fsspec.filesystem("memory")
    for rel, data in {"b.txt": b"bb", "a/x.txt": b"x", ".cache/huggingface/y": b"y", "a/.z": b"z"}.items():
        fs.pipe_file(f"{url}/{rel}", data)
    stats = CorpusStats()
    corpus, files = list_corpus([url, f"{url}/b.txt", f"{url}/*.txt"], stats=stats)
    assert [(f.root, f.name, f.size) for f in files] == [(0, "a/x.txt", 1), (0, "b.txt", 2), (1, "b.txt", 2),
                                                         (2, "b.txt", 2)]  # fmt: skip
    assert corpus.bases == (url, url, url) and stats.skipped == {"hidden": 2}
    assert files[0].path is None and files[0].url == f"{url}/a/x.txt"
    with pytest.raises(CorpusError, match="no objects there"):
        list_corpus([f"memory://listing-{next(_names)}/nothing"])


def test_a_save_to_disk_folder_reads_its_arrow_files_in_its_own_order(tmp_path):
    texts = [f"document number {i}" for i in range(30)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"), num_shards=3)
    state = json.loads((tmp_path / "ds" / "state.json").read_text())
    assert len(state["_data_files"]) == 3
    assert names([tmp_path / "ds"]) == [(0, f["filename"]) for f in state["_data_files"]]


def test_a_dataset_dict_folder_reads_the_chosen_split(tmp_path):
    train = datasets.Dataset.from_dict({"text": ["a train document"] * 4})
    test = datasets.Dataset.from_dict({"text": ["a test document"] * 2})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    assert names([tmp_path / "dd"]) == [(0, "train/data-00000-of-00001.arrow")]
    assert names([tmp_path / "dd"], split="test") == [(0, "test/data-00000-of-00001.arrow")]
    with pytest.raises(CorpusError, match=r"dataset_dict\.json: a DatasetDict of the splits train, test, none named "
                                          "'validation'; choose one with --split"):  # fmt: skip
        list_corpus([tmp_path / "dd"], split="validation")


def _hub_folder(root: Path, files: dict[str, list[str]], card_configs: bool = True) -> Path:
    """A dataset folder as `huggingface-cli download` leaves it: the data files, the card, the download cache."""
    for rel, texts in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict({"text": texts}).to_parquet(str(root / rel))
    data = hub.DatasetCardData(configs=[{"config_name": "default", "data_files": "data/*"}]) if card_configs else \
        hub.DatasetCardData(dataset_info={"features": [{"name": "text", "dtype": "string"}]})  # fmt: skip
    hub.DatasetCard.from_template(data, pretty_name="test corpus").save(root / "README.md")
    touch(root, ".cache/huggingface/download/data.metadata")
    return root


def test_a_hub_dataset_folder_skips_its_card_and_reads_one_split(tmp_path):
    root = _hub_folder(tmp_path / "hub", {"data/train-00000-of-00002.parquet": ["t1"],
                                          "data/train-00001-of-00002.parquet": ["t2"],
                                          "data/test-00000-of-00001.parquet": ["e1"]})  # fmt: skip
    assert names([root]) == [(0, "data/train-00000-of-00002.parquet"), (0, "data/train-00001-of-00002.parquet")]
    assert names([root], split="test") == [(0, "data/test-00000-of-00001.parquet")]
    with pytest.raises(CorpusError, match="a Hub dataset with the splits test, train, none named 'validation'"):
        list_corpus([root], split="validation")
    # Files that name no split are all "train" (as on the Hub); the card is never read as text.
    plain = _hub_folder(tmp_path / "plain", {"20231101.en/part-0.parquet": ["a"], "20231101.en/part-1.parquet": ["b"]},
                        card_configs=False)  # fmt: skip
    assert names([plain]) == [(0, "20231101.en/part-0.parquet"), (0, "20231101.en/part-1.parquet")]
    with pytest.raises(CorpusError, match=r"--split test: .* has no splits"):
        list_corpus([plain / "20231101.en"], split="test")


def test_a_readme_that_is_not_a_dataset_card_is_text(tmp_path):
    root = touch(tmp_path / "c", "a.txt")
    (root / "README.md").write_text("---\ntitle: notes\n---\nA corpus of notes.\n")
    assert names([root]) == [(0, "README.md"), (0, "a.txt")]
