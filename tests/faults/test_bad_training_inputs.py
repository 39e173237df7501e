"""Bad datasets, checkpoints and tokenizers at train/export time, end to end through the CLI entry points.

`spanbert-train` runs in-process through its console entry `spanbert_train.cli.main` (the function the
installed script calls: exit status, stderr and all, without paying torch's import per case); `spanbert-data`
runs as a process. Each refusal: non-zero exit, one `error:` line naming the file, no traceback, and
training never starts (no metrics, no checkpoint). tests/train/test_cli.py covers a truncated shard, a
manifest of another format version and a --model-set vocab_size that disagrees with the dataset.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from spanbert_data.files import sha256_file
from spanbert_train.cli import main
from spanbert_train.export import export_model
from spanbert_train.model import ModelConfig, SpanBertForPreTraining
from tests.faults.helpers import DATA_CLI, TINY_MODEL, VOCAB, assert_clean_error, metrics_rows, run
from tests.train.dataset_fixture import make_dataset

TRAIN = [*TINY_MODEL, "--global-batch-size", "4", "--micro-batch", "4", "--eval-rows", "4", "--log-every", "1"]


class Result:  # the fields of subprocess.CompletedProcess that assert_clean_error reads
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def train_cli(capsys, *argv) -> Result:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return Result(exit_info.value.code, out, err)


def assert_not_started(run_dir: Path) -> None:
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Two small datasets of different vocabularies (300 and 400 ids) and a 2-step run trained on the first."""
    tmp = tmp_path_factory.mktemp("tok")
    a = make_dataset(tmp / "a", rows=16, mask_epochs=1, valid_rows=4, vocab_size=300)
    b = make_dataset(tmp / "b", rows=16, mask_epochs=1, valid_rows=4, vocab_size=400, seed=1)
    return a, b


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([str(x) for x in ["--data", datasets[0], "--out", run_dir, *TRAIN, "--max-steps", "2"]])
    assert exit_info.value.code == 0
    return run_dir


def fresh_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds", rows=8, mask_epochs=1, valid_rows=0, shards_per_epoch=2)


# ------------------------------------------------------------------------------------------- shards
def test_shard_with_flipped_byte_is_named(capsys, tmp_path):
    root = fresh_dataset(tmp_path)
    shard = root / "epoch-0" / "part-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40  # same size: only the content hash can tell
    shard.write_bytes(bytes(data))
    result = train_cli(capsys, "--data", root, "--out", tmp_path / "run", *TRAIN)  # default: hashes before use
    assert_clean_error(result, str(shard), "content hash differs")
    # Shards are hashed ahead of need, after set-up: config.json and an empty metrics.jsonl exist, no step ran.
    assert not metrics_rows(tmp_path / "run") and not (tmp_path / "run" / "checkpoints").exists()
    verified = run([*DATA_CLI, "verify", root])  # the data tool names it too
    assert verified.returncode == 1 and str(shard) in verified.stderr and "Traceback" not in verified.stderr


def test_shard_replaced_by_garbage_of_the_same_size_is_named(capsys, tmp_path):
    root = fresh_dataset(tmp_path)
    shard = root / "epoch-0" / "part-00000.arrow"
    shard.write_bytes(os.urandom(shard.stat().st_size))
    result = train_cli(capsys, "--data", root, "--out", tmp_path / "run", *TRAIN)  # default: hashed when unreadable
    assert_clean_error(result, str(shard), "content hash differs")
    assert_not_started(tmp_path / "run")
    result = train_cli(capsys, "--data", root, "--out", tmp_path / "run", *TRAIN, "--verify-shards", "size")
    assert_clean_error(result, str(shard), "not a readable Arrow file")
    assert_not_started(tmp_path / "run")


def test_missing_shard_is_named(capsys, tmp_path):
    root = fresh_dataset(tmp_path)
    (root / "epoch-0" / "part-00001.arrow").unlink()
    result = train_cli(capsys, "--data", root, "--out", tmp_path / "run", *TRAIN)
    assert_clean_error(result, str(root / "epoch-0" / "part-00001.arrow"), "missing")


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_shard_paths_leaving_the_dataset_are_rejected(capsys, tmp_path, how):
    root = fresh_dataset(tmp_path)
    outside = tmp_path / "outside.arrow"
    shutil.copy(root / "epoch-0" / "part-00000.arrow", outside)  # a real, readable file: only its place is wrong
    manifest = json.loads((root / "manifest.json").read_text())
    if how == "symlink":  # the manifest is fine; the file under the dataset is a link out of it
        (root / "epoch-0" / "part-00000.arrow").unlink()
        os.symlink(outside, root / "epoch-0" / "part-00000.arrow")
        says = "leaves the dataset directory"
    else:
        manifest["shards"]["train"][0]["path"] = "../outside.arrow" if how == "dotdot" else str(outside)
        says = "leaves the dataset directory" if how == "dotdot" else "must be relative"
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_error(train_cli(capsys, "--data", root, "--out", tmp_path / "run", *TRAIN), says)
    assert_not_started(tmp_path / "run")
    assert_clean_error(run([*DATA_CLI, "verify", root]), says)


# --------------------------------------------------------------------------------- tokenizer mismatch
def test_swapped_tokenizer_is_caught_by_verify_and_refused_by_export(capsys, datasets, trained, tmp_path):
    a, b = datasets
    copy = tmp_path / "a-swapped"
    shutil.copytree(a, copy)
    shutil.copy(b / "tokenizer.json", copy / "tokenizer.json")  # same name, another vocabulary
    verified = run([*DATA_CLI, "verify", copy])
    assert verified.returncode == 1 and "Traceback" not in verified.stderr
    assert f"bad: {copy / 'tokenizer.json'}: content hash differs" in verified.stderr
    result = train_cli(capsys, "export", trained, "--out", tmp_path / "hf", "--data", copy)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(copy / "tokenizer.json") in result.stderr and "not the tokenizer its manifest names" in result.stderr
    assert not (tmp_path / "hf").exists()


def test_export_with_another_datasets_tokenizer_is_refused(capsys, datasets, trained, tmp_path):
    result = train_cli(capsys, "export", trained, "--out", tmp_path / "hf", "--data", datasets[1])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(datasets[1]) in result.stderr and "not the one the run was trained with" in result.stderr
    assert not (tmp_path / "hf").exists()


def test_resume_on_a_dataset_of_another_vocab_size_is_refused(capsys, datasets, trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    result = train_cli(capsys, "--data", datasets[1], "--out", run_dir, *TRAIN, "--max-steps", "4", "--resume")
    assert_clean_error(result, str(run_dir / "checkpoints" / "step-00000002"), "another model config")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before  # nothing written or pruned


def test_init_from_a_model_of_another_vocab_size_is_refused(capsys, datasets, tmp_path):
    """A real export (the bundled 30,522-entry BERT vocabulary) used to start a run on a 300-id dataset."""
    model = SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=30522, max_position_embeddings=64))
    hf = export_model(model, VOCAB, tmp_path / "hf-bert")
    result = train_cli(capsys, "--data", datasets[0], "--out", tmp_path / "run", *TRAIN, "--init-from", hf)
    assert_clean_error(result, str(hf), "vocab_size 30522", "300")
    assert_not_started(tmp_path / "run")


def test_resume_on_a_dataset_of_another_tokenizer_of_the_same_size_is_refused(capsys, datasets, trained, tmp_path):
    """Same vocab size, other words behind the ids: the checkpoint's tokenizer_sha256 must match the dataset's."""
    other = tmp_path / "other-words"
    shutil.copytree(datasets[0], other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["tok200"], vocab["tok201"] = vocab["tok201"], vocab["tok200"]  # two words trade ids
    (other / "tokenizer.json").write_text(json.dumps(spec))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = sha256_file(other / "tokenizer.json")  # a consistent, different dataset
    (other / "manifest.json").write_text(json.dumps(manifest))
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    result = train_cli(capsys, "--data", other, "--out", run_dir, *TRAIN, "--max-steps", "4", "--resume")
    assert_clean_error(result, str(run_dir / "checkpoints" / "step-00000002"), "tokenizer")
