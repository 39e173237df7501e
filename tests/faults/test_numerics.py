"""Non-finite losses through the `spanbert-train` entry point: skipped steps leave the weights alone, are counted
in metrics.jsonl, and too many in a row stop the run with one line naming the step and the last good checkpoint.
(tests/train/test_train.py proves the same abort in-process, through `train()`.)"""

from __future__ import annotations

from safetensors.torch import load_file

from tests.faults.helpers import metrics_rows
from tests.faults.test_bad_training_inputs import TRAIN, train_cli
from tests.train.dataset_fixture import make_dataset


def test_nonfinite_steps_are_skipped_counted_then_abort(capsys, tmp_path):
    data = make_dataset(tmp_path / "ds", rows=16, mask_epochs=1, valid_rows=0)
    out = tmp_path / "run"
    # An absurd learning rate: the first update makes the weights huge, every later loss overflows.
    result = train_cli(capsys, "--data", data, "--out", out, *TRAIN, "--max-steps", "50", "--lr", "1e30",
                       "--clip-grad-norm", "0", "--warmup-steps", "1", "--save-every", "1", "--keep-last", "5",
                       "--max-nonfinite", "3")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    rows = [r for r in metrics_rows(out) if r.get("split", "train") == "train"]
    skipped = [r for r in rows if not r["finite"]]
    assert [r["skipped_nonfinite"] for r in skipped] == [1, 2, 3]
    last_step = skipped[-1]["step"]
    last_saved = out / "checkpoints" / f"step-{last_step - 1:08d}"
    assert f"step {last_step}: loss or gradient non-finite for 3 steps in a row" in errors[0]
    assert f"last good checkpoint: {last_saved}" in errors[0]
    # A skipped step does not touch the weights: the checkpoints after each skipped step equal the one before.
    before = load_file(str(out / "checkpoints" / f"step-{skipped[0]['step'] - 1:08d}" / "model.safetensors"))
    for row in skipped[:-1]:
        after = load_file(str(out / "checkpoints" / f"step-{row['step']:08d}" / "model.safetensors"))
        assert all(before[k].equal(after[k]) for k in before), f"step {row['step']} changed the weights"
