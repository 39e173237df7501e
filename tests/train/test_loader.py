"""The streaming loader: gathers exactly the right rows, in an order fixed by (seed, epoch, global batch)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from spanbert_data.errors import DatasetError
from spanbert_train.data import Dataset, TrainLoader, epoch_order
from spanbert_train.errors import ConfigError
from spanbert_train.shard import LIST_COLUMNS, RowSource
from tests.train.dataset_fixture import make_dataset, rewrite_manifest


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), rows=48, mask_epochs=2, valid_rows=12, shards_per_epoch=3)


def naive_gather(shards, rows):
    """Row-by-row Python twin of RowSource.gather."""
    first = np.cumsum([0] + [s.rows for s in shards])
    out = {"input_ids": [], **{name: [] for name in LIST_COLUMNS}}
    for g in rows:
        s = int(np.searchsorted(first, g, side="right") - 1)
        r = int(g - first[s])
        cols = shards[s].columns
        out["input_ids"].append(cols["input_ids"][r].copy())
        for name in LIST_COLUMNS:
            off, val = cols[name]
            out[name].append(val[off[r] : off[r + 1]].copy())
    return out


def test_gather_matches_row_by_row_copy(dataset_dir):
    ds = Dataset(dataset_dir)
    source = RowSource(ds.epochs[1])
    rows = np.random.default_rng(3).permutation(len(source))[:11]
    got = source.gather(rows)
    want = naive_gather(ds.epochs[1], rows)
    np.testing.assert_array_equal(got["input_ids"], np.stack(want["input_ids"]))
    for name in LIST_COLUMNS:
        offsets, values = got[name]
        assert offsets[0] == 0 and offsets[-1] == len(values)
        for i in range(len(rows)):
            np.testing.assert_array_equal(values[offsets[i] : offsets[i + 1]], want[name][i], err_msg=name)


def test_columns_are_zero_copy_views_of_the_mapped_file(dataset_dir):
    shard = Dataset(dataset_dir).epochs[0][0]
    assert not shard.columns["input_ids"].flags.owndata
    assert not shard.columns["input_ids"].flags.writeable  # read-only memory map


def _global_rows(loader: TrainLoader, epoch: int, index: int) -> np.ndarray:
    step = loader.make_step(loader.order.batch_of(epoch, index))
    assert (step.epoch, step.index) == (epoch, index)
    return np.concatenate([b.input_ids.numpy() for b in step.micro_batches])


def test_global_batch_is_the_same_for_any_rank_count_and_split(dataset_dir):
    ds = Dataset(dataset_dir)
    one = TrainLoader(ds, global_batch=8, micro_batch=8, rank=0, world=1, seed=5)
    for epoch, index in [(0, 0), (0, 3), (1, 2), (3, 1)]:
        whole = _global_rows(one, epoch, index)
        split = np.concatenate([
            _global_rows(TrainLoader(ds, 8, 2, rank, 2, seed=5), epoch, index) for rank in range(2)
        ])  # fmt: skip
        np.testing.assert_array_equal(whole, split)
        # ... and they are the rows of the seeded permutation of the right mask epoch (epoch mod K)
        perm = epoch_order(5, epoch, ds.rows(epoch % 2))[index * 8 : (index + 1) * 8]
        np.testing.assert_array_equal(whole, RowSource(ds.epochs[epoch % 2]).gather(perm)["input_ids"])


def test_ranks_read_disjoint_rows_and_global_counts_cover_all_ranks(dataset_dir):
    ds = Dataset(dataset_dir)
    steps = [TrainLoader(ds, 8, 2, rank, 4, seed=1).make_step(1) for rank in range(4)]
    ids = [b.input_ids.numpy() for s in steps for b in s.micro_batches]
    assert len({row.tobytes() for batch in ids for row in batch}) == 8
    mlm = sum(len(b.mlm_labels) for s in steps for b in s.micro_batches)
    sbo = sum(len(b.sbo_labels) for s in steps for b in s.micro_batches)
    tokens = sum(b.num_tokens for s in steps for b in s.micro_batches)
    for s in steps:
        assert (s.mlm_targets, s.sbo_targets, s.tokens) == (mlm, sbo, tokens)


def test_stream_crosses_epochs_and_resumes_at_a_position(dataset_dir):
    ds = Dataset(dataset_dir)
    loader = TrainLoader(ds, 8, 4, 0, 1, seed=2)
    assert loader.order.streams[0].batches(0) == 6
    stream = iter(loader)
    seen = [(s.epoch, s.index, s.micro_batches[0].input_ids.numpy().copy()) for s in itertools.islice(stream, 9)]
    assert [(e, i) for e, i, _ in seen] == [(0, i) for i in range(6)] + [(1, 0), (1, 1), (1, 2)]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batch"] == 3
    assert loader.state_dict()["global_batch"] == 9
    loader.close()
    resumed = TrainLoader(ds, 8, 4, 0, 1, seed=2, start=(0, 5))
    assert resumed.position == 5 and TrainLoader(ds, 8, 4, 0, 1, seed=2, start=(1, 2)).position == 8
    again = list(itertools.islice(resumed, 3))
    resumed.close()
    for (e, i, ids), s in zip(seen[5:8], again, strict=True):
        assert (e, i) == (s.epoch, s.index)
        np.testing.assert_array_equal(ids, s.micro_batches[0].input_ids.numpy())


def test_bad_batch_geometry_is_a_config_error(dataset_dir):
    ds = Dataset(dataset_dir)
    with pytest.raises(ConfigError, match="multiple of ranks"):
        TrainLoader(ds, 10, 4, 0, 1, seed=0)
    with pytest.raises(ConfigError, match="exceeds the 48 rows"):
        TrainLoader(ds, 64, 4, 0, 1, seed=0)


def test_missing_directory_and_foreign_manifest_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset directory"):
        Dataset(tmp_path / "nope")
    root = make_dataset(tmp_path / "v2", rows=8, mask_epochs=1, valid_rows=0)
    rewrite_manifest(root, format_version=3)
    with pytest.raises(DatasetError, match="format_version 3 is not supported"):
        Dataset(root)


def test_truncated_and_corrupt_shards_are_refused_naming_the_file(tmp_path):
    root = make_dataset(tmp_path / "ds", rows=8, mask_epochs=1, valid_rows=0, shards_per_epoch=1)
    shard = root / "epoch-0" / "part-00000.arrow"
    data = bytearray(shard.read_bytes())
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"part-00000\.arrow: \d+ bytes, manifest says"):
        Dataset(root)
    data[-40:] = b"\xff" * 40  # same size, broken footer
    shard.write_bytes(data)
    with pytest.raises(DatasetError, match=r"part-00000\.arrow: content hash differs .*corrupt"):
        Dataset(root)  # the default hashes a shard whose structure is broken, to name it as damaged
    with pytest.raises(DatasetError, match=r"part-00000\.arrow: not a readable Arrow file"):
        Dataset(root, verify="size")


# ------------------------------------------------------------------------------ corrupt data (issue 16)
def _bad_label(root, rel: str, row: int) -> None:
    """Set the first MLM label of `row` to 65000 (outside the vocabulary) and make the manifest vouch for it."""
    import json

    import pyarrow as pa

    from spanbert_data.files import sha256_file

    path = root / rel
    source = pa.memory_map(str(path))
    base = source.read_buffer(source.size()).address
    source.seek(0)
    col = pa.ipc.open_file(source).get_batch(0).column("mlm_labels")
    start = col.buffers()[-1].address - base + 2 * int(col.offsets[row].as_py())
    del col, source
    raw = bytearray(path.read_bytes())
    raw[start : start + 2] = np.uint16(65000).tobytes()
    path.write_bytes(bytes(raw))
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["shards"]["train"] + manifest["shards"]["valid"]:
        if entry["path"] == rel:
            entry["sha256"] = sha256_file(path)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_shards_are_hashed_lazily_in_order_of_use_and_ahead_of_need(dataset_dir):
    ds = Dataset(dataset_dir)  # the default, verify="sha256"
    everything = [s for shards in ds.epochs for s in shards] + ds.valid
    assert not any(s.verified for s in everything)  # opening hashes nothing
    loader = TrainLoader(ds, 8, 4, 1, 2, seed=3)
    touched = []  # the shards this rank's steps read, in order, computed row by row
    for index in range(loader.order.streams[0].batches(0)):
        rows = epoch_order(3, 0, ds.rows(0))[index * 8 : (index + 1) * 8][4:]
        for g in rows:
            shard = ds.epochs[0][int(np.searchsorted(RowSource(ds.epochs[0]).first, g, side="right") - 1)]
            if shard not in touched:
                touched.append(shard)
    assert loader.order.chunk_end(0) == loader.order.streams[0].batches(0)  # one dataset: a chunk is an epoch
    assert loader.shards_in_order_of_use(0) == touched
    step = next(iter(loader))
    assert step.index == 0 and all(s.verified for s in ds.valid)  # validation first, before step 1
    deadline = time.monotonic() + 30
    while not all(s.verified for s in everything) and time.monotonic() < deadline:
        time.sleep(0.01)  # the verifier thread hashes epoch 0, then epoch 1 (one epoch ahead)
    loader.close()
    assert all(s.verified for s in everything)
    assert all(s.hash_check.seconds > 0 for s in everything)  # really hashed, by the loader's threads


def test_a_bad_row_ends_the_stream_one_step_ahead_naming_shard_and_row(tmp_path):
    root = make_dataset(tmp_path / "ds", rows=16, mask_epochs=1, valid_rows=0, shards_per_epoch=16)
    bad = int(epoch_order(2, 0, 16)[8])  # a row of global batch 2; one row per shard: row r is shard r
    _bad_label(root, f"epoch-0/part-{bad:05d}.arrow", 0)
    loader = TrainLoader(Dataset(root), 4, 4, 0, 1, seed=2)
    stream = iter(loader)
    assert loader.peek_error() is None and next(stream).index == 0
    assert loader.peek_error() is None and next(stream).index == 1
    error = loader.peek_error()  # batch 2 is known bad before anyone consumes it
    assert isinstance(error, DatasetError)
    assert str(error).startswith(f"{root / 'epoch-0' / f'part-{bad:05d}.arrow'}: row 0: mlm_labels[0] holds id 65000")
    with pytest.raises(DatasetError, match="outside the vocabulary of 300 ids"):
        next(stream)
    loader.close()


def test_validation_rows_are_checked_by_every_reader(tmp_path):
    root = make_dataset(tmp_path / "ds", rows=8, mask_epochs=1, valid_rows=6, shards_per_epoch=1)
    _bad_label(root, "valid/part-00000.arrow", 4)
    ds = Dataset(root)
    with pytest.raises(DatasetError, match=r"valid/part-00000\.arrow: row 4: mlm_labels\[0\] holds id 65000"):
        RowSource(ds.valid).gather(np.arange(6))  # evaluation's reader (spanbert_train/evaluate.py)
    loader = TrainLoader(ds, 4, 4, 0, 1, seed=0)
    with pytest.raises(DatasetError, match=r"valid/part-00000\.arrow: row 4"):
        next(iter(loader))  # the loader checks every validation row before its first training step
    loader.close()
