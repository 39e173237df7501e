"""Datasets mixed by weight (issue 23): an exact schedule, each dataset in its own single-dataset order, `1,0` equal to
the single-dataset run, 1 and 2 ranks alike, one-line refusals, metrics and evaluation per dataset."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import numpy as np
import pytest

from spanbert_data.errors import DatasetError
from spanbert_train.blend import BlendOrder, epoch_order
from spanbert_train.cli import main
from spanbert_train.data import Dataset, TrainLoader, open_blend
from spanbert_train.errors import ConfigError
from spanbert_train.evaluate import evaluate_checkpoint
from spanbert_train.remote_data import Storage
from spanbert_train.schedule import Schedule
from spanbert_train.shard import RowSource
from spanbert_train.train import train
from spanbert_train.weights import blend_weights
from tests.train.dataset_fixture import make_dataset
from tests.train.test_train import NO_DROPOUT, _torchrun, config, train_rows

TINY = ["--model", "tiny", "--model-set", "num_layers=1", "--model-set", "hidden_size=32",
        "--model-set", "intermediate_size=64", "--model-set", "max_position_embeddings=64",
        "--global-batch-size", "8", "--micro-batch", "4", "--eval-rows", "8"]  # fmt: skip


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    """The larger dataset: 48 rows in each of 2 mask epochs (6 global batches of 8), 12 held-out rows."""
    return make_dataset(tmp_path_factory.mktemp("wiki"), rows=48, mask_epochs=2, valid_rows=12, shards_per_epoch=3)


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """The smaller one, same tokenizer and row length: 24 rows, one mask epoch, 8 held-out rows."""
    return make_dataset(tmp_path_factory.mktemp("books"), rows=24, mask_epochs=1, valid_rows=8, shards_per_epoch=2,
                        seed=1)  # fmt: skip


def blend_config(paths, weights, out, **kw):
    cfg = config(paths[0], out, **kw)
    cfg.data.path, cfg.data.weights = [str(p) for p in paths], list(weights)
    return cfg


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("spanbert-train: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------- the schedule
def simulate(weights: list[int], rows: int) -> list[int]:
    """The schedule's rule applied row by row in exact fractions (an independent twin of schedule.py)."""
    total, counts, out = sum(weights), [0] * len(weights), []
    for t in range(1, rows + 1):
        behind = [k for k, w in enumerate(weights) if Fraction(t * w, total) > counts[k]]
        k = min(behind, key=lambda k: (Fraction(counts[k] + 1, weights[k]), k))
        counts[k] += 1
        out.append(k)
    return out


@pytest.mark.parametrize("weights", [[3, 1], [1, 1, 5], [1, 0], [2, 0, 7, 1, 1]])
def test_counts_stay_within_one_row_of_their_share_after_every_global_batch(weights):
    schedule = Schedule(weights)
    w, total = np.array(weights), sum(weights)
    for G in (1, 3, 8, 256, 2048):
        for b in range(1, 3000):
            counts = schedule.counts(b * G)
            assert counts.sum() == b * G
            assert np.all(np.abs(counts * total - b * G * w) < total), (G, b, counts)  # |count - share| < 1
    dataset, position = schedule.assign(0, 5 * total + 3)
    assert dataset.tolist() == simulate(weights, 5 * total + 3)  # the closed form is the rule
    for k in range(len(weights)):  # each dataset's positions run 0, 1, 2, ... in row order
        assert position[dataset == k].tolist() == list(range(int((dataset == k).sum())))


def test_random_weights_and_every_row():
    rng = np.random.default_rng(23)
    for _ in range(40):
        weights = rng.integers(0, 40, size=int(rng.integers(2, 7))).tolist()
        if sum(weights) == 0:
            continue
        schedule, total = Schedule(weights), sum(weights)
        dataset, _ = schedule.assign(0, 4 * total)
        counts = np.zeros(len(weights), dtype=np.int64)
        for t, k in enumerate(dataset.tolist(), start=1):  # after EVERY row, not only every batch
            counts[k] += 1
            assert np.all(np.abs(counts * total - t * np.array(weights)) < total), (weights, t)
        assert dataset[:total].tolist() == simulate(weights, total)
        for k in np.flatnonzero(weights):
            assert all(schedule.row_of(int(k), p) == np.flatnonzero(dataset == k)[p] for p in range(3 * weights[k]))


def test_weights_are_exact_ratios_and_bad_ones_name_the_field():
    assert blend_weights([0.75, 0.25], 2) == blend_weights([3, 1], 2) == blend_weights([6.0, 2.0], 2) == [3, 1]
    assert blend_weights([0.7, 0.3], 2) == [7, 3] and blend_weights([1, 0], 2) == [1, 0]
    assert blend_weights([1 / 3, 2 / 3], 2) == [1, 2]  # as written: 0.3333333333333333 and twice that
    assert blend_weights([], 3) == [1, 1, 1] and blend_weights([5], 1) == [1]
    for weights, message in (([1], "has 1 entries for 2 dataset(s)"), ([-1, 1], "numbers >= 0"),
                             ([0, 0], "must not all be 0"), ([float("nan"), 1], "numbers >= 0"),
                             ([0.1234567, 0.5], "give them with fewer digits")):  # fmt: skip
        with pytest.raises(ConfigError) as error:
            blend_weights(weights, 2)
        assert str(error.value).startswith("data.weights") and message in str(error.value)


# ------------------------------------------------------------------------------------------------- the loader
@pytest.mark.parametrize("weights", [[3, 1], [3, 2]])
def test_each_dataset_gives_its_rows_in_its_own_single_dataset_order(wiki, books, weights):
    """Weights 3,1 with G = 8: wiki gives 6 rows per step (its epoch of 48 rows lasts 8 steps), books 2 (24 rows: 12
    steps); with 3,2 books' epochs end inside global batches. Over 40 steps each crosses several epochs at its own
    pace, and the rows it gave, in order, are exactly its single-dataset stream: epoch e = mask epoch e mod K in
    epoch_order(seed, e), whole global batches' worth."""
    blend = open_blend([wiki, books], weights)
    share = np.array(weights) / sum(weights)
    one = TrainLoader(blend, 8, 4, rank=0, world=1, seed=5)
    two = [TrainLoader(blend, 8, 2, rank=r, world=2, seed=5) for r in range(2)]
    owner = {}  # row bytes -> (dataset, mask epoch, row)
    for k, ds in enumerate(blend.datasets):
        for m in range(ds.mask_epochs):
            for i, row in enumerate(RowSource(ds.epochs[m]).gather(np.arange(ds.rows(m)))["input_ids"]):
                owner[row.tobytes()] = (k, m, i)
    given = {0: [], 1: []}
    for b in range(40):
        step = one.make_step(b)
        rows = np.concatenate([m.input_ids.numpy() for m in step.micro_batches])
        split = np.concatenate([m.input_ids.numpy() for loader in two for m in loader.make_step(b).micro_batches])
        np.testing.assert_array_equal(rows, split)  # the same global batch for any rank count and micro-batch
        for row in rows.astype(np.uint16):
            k, m, i = owner[row.tobytes()]
            given[k].append((m, i))
        assert step.rows_by_dataset == [len(given[0]), len(given[1])] == one.order.consumed(b + 1).tolist()
        assert np.all(np.abs(np.array([len(given[0]), len(given[1])]) - 8 * (b + 1) * share) < 1)
    for k, ds in enumerate(blend.datasets):
        expected, epoch = [], 0
        while len(expected) < len(given[k]):
            m, n = epoch % ds.mask_epochs, ds.rows(epoch % ds.mask_epochs)
            expected += [(m, int(i)) for i in epoch_order(5, epoch, n)[: n // 8 * 8]]
            epoch += 1
        assert given[k] == expected[: len(given[k])], blend.names[k]
    state = one.state_dict()  # after no consumed step: position 0
    assert [d["rows"] for d in state["datasets"]] == [0, 0] and "epoch" not in state
    blend.close()


@pytest.mark.parametrize("weights", [[3, 1], [3, 2]])
def test_chunks_end_where_a_dataset_changes_epoch_and_shards_are_hashed_in_order_of_use(wiki, books, weights):
    blend = open_blend([wiki, books], weights)
    order = BlendOrder(blend, 8, seed=5)
    first, last = [], []  # per global batch: the training epoch of each dataset's first and of its last row there
    for b in range(60):
        dataset, position = blend.schedule.assign(b * 8, (b + 1) * 8)
        epochs = [order.streams[k].locate(position[dataset == k])[0] for k in (0, 1)]
        first.append([int(e[0]) for e in epochs])
        last.append([int(e[-1]) for e in epochs])
    b, ends = 0, []
    while b < 40:  # a chunk: the batches from b whose rows all lie in the epochs of b's first rows
        expected = b + 1
        while first[expected] == last[expected] == first[b]:
            expected += 1
        assert order.chunk_end(b) == expected, (b, first[b : expected + 1], last[b : expected + 1])
        ends.append(expected)
        b = expected
    if weights == [3, 1]:
        assert ends[:4] == [8, 12, 16, 24]  # wiki's epochs end every 8 steps, books' every 12
    else:
        assert any(first[b] != last[b] for b in range(60))  # some batch holds rows of two epochs of a dataset
    loader = TrainLoader(blend, 8, 4, rank=1, world=2, seed=5)
    touched = []
    for x in range(order.chunk_end(0)):
        for g in order.rows(x, x + 1)[0][4:]:  # rank 1's half of every batch of the first chunk
            shard = blend.source.shards[int(np.searchsorted(blend.source.first, g, side="right") - 1)]
            if shard not in touched:
                touched.append(shard)
    assert loader.shards_in_order_of_use(0) == touched
    stream = iter(loader)
    for _ in range(20):  # 20 steps: both datasets into their second epoch
        next(stream)
    loader.close()
    hashed = [s for s in blend.training_shards() if s.verified]
    assert len(hashed) == len(blend.training_shards()) == 8  # wiki's 2 x 3 shards and books' 2: all hashed
    blend.close()


# ------------------------------------------------------------------------------------------------- training
def test_weights_1_0_train_exactly_the_single_dataset_run(wiki, books, tmp_path):
    alone = train_rows(train(config(wiki, tmp_path / "alone", max_steps=8)))  # dropout on
    mixed = train(blend_config([wiki, books], [1, 0], tmp_path / "mixed", max_steps=8, eval_every=4, eval_rows=8))
    assert [r["loss"] for r in train_rows(mixed)] == [r["loss"] for r in alone]  # exactly
    assert [r["rows_by_dataset"] for r in train_rows(mixed)] == [{str(wiki): 8 * s, str(books): 0} for s in range(1, 9)]
    valid = [r for r in mixed if r.get("split") == "valid"]
    assert [r["step"] for r in valid] == [4, 8]
    assert valid[-1]["loss_mlm"] == valid[-1]["datasets"][str(wiki)]["loss_mlm"]  # books has weight 0 in the mean
    assert valid[-1]["datasets"][str(books)]["rows"] == 8


def test_a_blend_logs_rows_by_dataset_and_evaluates_each_dataset_and_their_weighted_mean(wiki, books, tmp_path):
    out = tmp_path / "run"
    rows = train(blend_config([wiki, books], [3, 1], out, max_steps=6, eval_every=3, eval_rows=8, save_every=3))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all("rows_by_dataset" in line for line in lines)  # every logged line
    order = Schedule([3, 1])
    for line in lines:
        assert list(line["rows_by_dataset"].values()) == order.counts(8 * line["step"]).tolist()
    valid = [r for r in rows if r.get("split") == "valid"][-1]
    each = valid["datasets"]
    assert set(each) == {str(wiki), str(books)} and valid["weights"] == {str(wiki): 3, str(books): 1}
    for key in ("loss_mlm", "loss_sbo", "acc_mlm", "acc_sbo"):
        assert valid[key] == pytest.approx(0.75 * each[str(wiki)][key] + 0.25 * each[str(books)][key], rel=1e-12)
    assert valid["rows"] == 16 and valid["loss"] == pytest.approx(valid["loss_mlm"] + valid["loss_sbo"])
    # `evaluate` on the run (its datasets and weights by default) and on one dataset alone: the same figures
    again = evaluate_checkpoint(out, max_rows=8)
    assert again["data"] == [str(wiki), str(books)] and again["weights"] == valid["weights"]
    alone = evaluate_checkpoint(out, data=books, max_rows=8)
    for key in ("loss_mlm", "loss_sbo", "acc_mlm"):
        assert again[key] == pytest.approx(valid[key], rel=1e-6)
        assert alone[key] == pytest.approx(each[str(books)][key], rel=1e-6)
    equal = evaluate_checkpoint(out, data=[wiki, books], max_rows=8)  # other datasets given: equal weights
    assert equal["loss_mlm"] == pytest.approx((each[str(wiki)]["loss_mlm"] + each[str(books)]["loss_mlm"]) / 2)
    meta = json.loads((out / "checkpoints" / "step-00000006" / "meta.json").read_text())
    assert [d["weight"] for d in meta["datasets"]] == [3, 1]
    assert [d["rows"] for d in meta["loader"]["datasets"]] == [36, 12] and meta["loader"]["global_batch"] == 6


def test_two_ranks_give_the_losses_of_one(wiki, books, tmp_path):
    args = ["--data", str(wiki), "--data", str(books), "--data-weights", "3,1", "--model", "tiny", "--max-steps", "10",
            "--global-batch-size", "8", "--micro-batch", "2", "--lr", "2e-3", "--warmup-steps", "1", "--eval-every",
            "0", "--log-every", "1", "--save-every", "0",
            *[f"--model-set={k}={v}" for k, v in NO_DROPOUT.items()]]  # fmt: skip
    two = _torchrun(2, [*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    cfg = blend_config([wiki, books], [3, 1], tmp_path / "one", max_steps=10, micro=2, overrides=NO_DROPOUT, seed=1234)
    cfg.optim.warmup_steps = 1
    one = train_rows(train(cfg))
    logged = train_rows([json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()])
    assert len(one) == len(logged) == 10  # steps 9, 10: both datasets in their second epoch
    for x, y in zip(one, logged, strict=True):
        assert x["rows_by_dataset"] == y["rows_by_dataset"]
        for key in ("loss", "loss_mlm", "loss_sbo", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-5), key


# ------------------------------------------------------------------------------------------------- refusals
def test_datasets_that_do_not_fit_together_are_refused_with_one_line(capsys, wiki, tmp_path):
    other_vocab = make_dataset(tmp_path / "v310", rows=16, mask_epochs=1, valid_rows=0, vocab_size=310)
    shorter = make_dataset(tmp_path / "len32", rows=16, mask_epochs=1, valid_rows=0, row_len=32)
    copy = tmp_path / "copy"
    shutil.copytree(wiki, copy)
    run = ["--out", tmp_path / "run", *TINY]
    line = one_error_line(*run_cli(capsys, "--data", wiki, "--data", other_vocab, *run)[:3:2])
    assert f"{other_vocab} was built with another tokenizer than {wiki}" in line
    line = one_error_line(*run_cli(capsys, "--data", wiki, "--data", shorter, *run)[:3:2])
    assert f"{shorter} has rows of 32 slots, {wiki} of 64" in line
    line = one_error_line(*run_cli(capsys, "--data", wiki, "--data", copy, *run)[:3:2])
    assert f"{copy} and {wiki} are the same dataset" in line
    line = one_error_line(*run_cli(capsys, "--data", wiki, "--data", wiki, *run)[:3:2])
    assert f"data.path lists {wiki} twice" in line
    line = one_error_line(*run_cli(capsys, "--data", wiki, "--data", copy, "--data-weights", "3,1,1", *run)[:3:2])
    assert "data.weights has 3 entries for 2 dataset(s)" in line
    line = one_error_line(*run_cli(capsys, "--data", wiki, "--data-weights", "3;1", *run)[:3:2])
    assert "--data-weights expects numbers separated by commas" in line
    assert not (tmp_path / "run").exists()


def test_config_file_lists_datasets_as_tables(capsys, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[data]\nmicro_batch = 2\n[[data.datasets]]\npath = "data/wiki"\nweight = 3\n'
                    '[[data.datasets]]\npath = "data/books"\n')  # fmt: skip
    code, out, err = run_cli(capsys, "--config", toml, "--out", "o", "--print-config")
    assert code == 0, err
    data = json.loads(out)["data"]
    assert (data["path"], data["weights"], data["micro_batch"]) == (["data/wiki", "data/books"], [3.0, 1.0], 2)
    assert json.loads(out)["sources"]["data.weights"] == f"config file {toml}"
    code, out, _ = run_cli(capsys, "--config", toml, "--out", "o", "--data-weights", "1,1", "--print-config")
    assert json.loads(out)["data"]["weights"] == [1.0, 1.0]  # the command line wins, field by field
    toml.write_text('[[data.datasets]]\npath = "a"\nwieght = 3\n')
    assert "unknown config key 'data.datasets[0].wieght' (known: path, weight)" in one_error_line(
        *run_cli(capsys, "--config", toml, "--out", "o")[:3:2])  # fmt: skip
    toml.write_text('[data]\npath = "a"\n[[data.datasets]]\npath = "b"\n')
    assert "data.datasets replaces data.path" in one_error_line(*run_cli(capsys, "--config", toml, "--out", "o")[:3:2])
    toml.write_text('[data]\npath = ["a", "b"]\nweights = [1, 0]\n')  # the fields themselves work too
    code, out, _ = run_cli(capsys, "--config", toml, "--out", "o", "--print-config")
    assert json.loads(out)["data"]["path"] == ["a", "b"] and json.loads(out)["data"]["weights"] == [1.0, 0.0]


def test_resume_with_other_datasets_or_weights_is_refused(capsys, wiki, books, tmp_path):
    run = ["--out", tmp_path / "run", *TINY, "--max-steps", "2"]
    code, _, err = run_cli(capsys, "--data", wiki, "--data", books, "--data-weights", "3,1", *run)
    assert code == 0, err
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    for data in (["--data", wiki, "--data", books, "--data-weights", "1,1"], ["--data", books, "--data", wiki,
                 "--data-weights", "1,3"], ["--data", wiki]):  # fmt: skip
        line = one_error_line(*run_cli(capsys, *data, *run, "--max-steps", "3", "--resume")[:3:2])
        assert f"step-00000002: checkpoint was trained on {wiki} (weight 3) + {books} (weight 1)" in line
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    code, _, err = run_cli(capsys, "--data", wiki, "--data", books, "--data-weights", "0.75,0.25", *run,
                           "--max-steps", "3", "--resume")  # fmt: skip
    assert code == 0 and "resumed from" in err, err  # the same ratio, written otherwise


def test_a_corrupt_shard_of_one_dataset_stops_the_run_naming_it(capsys, wiki, tmp_path):
    books = make_dataset(tmp_path / "books", rows=24, mask_epochs=1, valid_rows=0, shards_per_epoch=2, seed=1)
    shard = books / "epoch-0" / "part-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size
    shard.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "--data", wiki, "--data", books, "--out", tmp_path / "run", *TINY, "--max-steps",
                           "4")  # fmt: skip
    line = one_error_line(code, err)
    assert f"{shard}: content hash differs" in line


def test_a_blend_of_one_dataset_is_the_dataset(wiki):
    ds = Dataset(wiki)
    alone, blended = TrainLoader(ds, 8, 4, 0, 1, seed=2), TrainLoader(open_blend([wiki]), 8, 4, 0, 1, seed=2)
    for b in (0, 5, 6, 13):
        x, y = alone.make_step(b), blended.make_step(b)
        assert (x.epoch, x.index, x.rows_by_dataset) == (y.epoch, y.index, [8 * (b + 1)])
        for p, q in zip(x.micro_batches, y.micro_batches, strict=True):
            assert (p.input_ids == q.input_ids).all()


def test_datasets_in_object_storage_share_one_cache_whose_budgets_add_up(wiki, books, tmp_path, capsys):
    """Both datasets at fsspec URLs (memory://, in this process): one cache, whose limit is the sum of their budgets
    (wiki: two mask epochs, since a global batch of a blend may hold the end of one and the start of the next; books
    has one mask epoch; each plus its validation shards). At exactly that limit the stream runs through 30 steps
    (both datasets cross epochs) with the rows of the same blend read from the local directories."""
    import fsspec

    fs = fsspec.filesystem("memory")
    urls = []
    for root in (wiki, books):
        for path in root.rglob("*"):
            if path.is_file():
                fs.pipe_file(f"/blend23/{root.name}/{path.relative_to(root).as_posix()}", path.read_bytes())
        urls.append(f"memory://blend23/{root.name}")
    sizes = [json.loads((root / "manifest.json").read_text())["shards"] for root in (wiki, books)]
    need = sum(e["bytes"] for shards in sizes for e in shards["train"] + shards["valid"])  # wiki's 2 + books' 1 epochs
    with pytest.raises(DatasetError) as refused:
        open_blend(urls, [3, 2], storage=Storage(cache_dir=tmp_path / "cache", cache_limit=need - 1))
    assert f"the blend's datasets ({urls[0]}: " in str(refused.value) and f"; {urls[1]}: " in str(refused.value)
    capsys.readouterr()
    blend = open_blend(urls, [3, 2], storage=Storage(cache_dir=tmp_path / "cache", cache_limit=need))
    cache = blend.datasets[0].cache
    assert cache is blend.datasets[1].cache and cache.limit == need
    err = capsys.readouterr().err
    assert all(f"data: {url} through the cache {tmp_path / 'cache'} (budget " in err for url in urls), err
    local = TrainLoader(open_blend([wiki, books], [3, 2]), 8, 4, 0, 1, seed=5)
    loader = TrainLoader(blend, 8, 4, 0, 1, seed=5)
    stream = iter(loader)
    for b in range(30):
        step = next(stream)
        held = sum(p.stat().st_size for p in (tmp_path / "cache" / "objects").iterdir())
        assert held <= need
        for x, y in zip(step.micro_batches, local.make_step(b).micro_batches, strict=True):
            assert (x.input_ids == y.input_ids).all()
    loader.close()
    blend.close()
    assert not list((tmp_path / "cache" / "holds").iterdir())
