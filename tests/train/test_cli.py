"""`spanbert-train`: bad inputs give one clear line and exit 2; config layering; plot; SIGTERM; entry points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spanbert_train.cli import main
from tests.train.dataset_fixture import make_dataset, rewrite_manifest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny", "--model-set", "num_layers=1", "--model-set", "hidden_size=32",
        "--model-set", "intermediate_size=64", "--model-set", "max_position_embeddings=64",
        "--global-batch-size", "4", "--micro-batch", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), rows=16, mask_epochs=1, valid_rows=4)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("spanbert-train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_data_dir(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--data", tmp_path / "none", "--out", tmp_path / "run", *TINY)
    assert_one_line_error(code, err, "no such dataset directory", str(tmp_path / "none"))


def test_manifest_of_another_version(capsys, tmp_path):
    root = make_dataset(tmp_path / "ds", rows=8, mask_epochs=1, valid_rows=0)
    rewrite_manifest(root, format_version=99)
    code, _, err = run_cli(capsys, "--data", root, "--out", tmp_path / "run", *TINY)
    assert_one_line_error(code, err, "format_version 99 is not supported")


def test_corrupt_shard(capsys, tmp_path):
    root = make_dataset(tmp_path / "ds", rows=8, mask_epochs=1, valid_rows=0, shards_per_epoch=1)
    shard = root / "epoch-0" / "part-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:100])
    code, _, err = run_cli(capsys, "--data", root, "--out", tmp_path / "run", *TINY)
    assert_one_line_error(code, err, str(shard), "truncated")


def test_incompatible_vocab_size(capsys, data, tmp_path):
    code, _, err = run_cli(capsys, "--data", data, "--out", tmp_path / "run", *TINY, "--model-set", "vocab_size=999")
    assert_one_line_error(code, err, "model.vocab_size (999)", "300")


def test_invalid_options_name_the_field(capsys, data, tmp_path):
    code, _, err = run_cli(capsys, "--data", data, "--out", tmp_path / "r", "--lr", "0")
    assert_one_line_error(code, err, "optim.lr must be > 0")
    code, _, err = run_cli(capsys, "--data", data, "--out", tmp_path / "r", *TINY, "--global-batch-size", "6",
                           "--micro-batch", "4")  # fmt: skip
    assert_one_line_error(code, err, "data.global_batch_size (6) must be a multiple")
    code, _, err = run_cli(capsys, "--data", data, "--out", tmp_path / "r", *TINY, "--model-set", "num_heads=5")
    assert_one_line_error(code, err, "model.hidden_size")


def test_config_file_then_options_and_unknown_keys(capsys, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('max_steps = 77\n[optim]\nlr = 3e-4\n[data]\nmicro_batch = 2\n[model]\npreset = "small"\n'
                    'num_layers = 2\n')  # fmt: skip
    code, out, _ = run_cli(capsys, "--config", toml, "--data", "d", "--out", "o", "--lr", "5e-4", "--print-config")
    assert code == 0
    cfg = json.loads(out)
    assert (cfg["max_steps"], cfg["optim"]["lr"], cfg["data"]["micro_batch"]) == (77, 5e-4, 2)
    assert cfg["model"] == {"preset": "small", "overrides": {"num_layers": 2}, "init_from": ""}
    toml.write_text("[optim]\nlrr = 1\n")
    code, _, err = run_cli(capsys, "--config", toml, "--data", "d", "--out", "o")
    assert_one_line_error(code, err, "unknown config key 'optim.lrr'")
    toml.write_text('max_steps = "many"\n')
    code, _, err = run_cli(capsys, "--config", toml, "--data", "d", "--out", "o")
    assert_one_line_error(code, err, "max_steps must be an integer")


def test_existing_run_needs_resume(capsys, data, tmp_path):
    args = ["--data", data, "--out", tmp_path / "run", *TINY, "--max-steps", "2", "--eval-rows", "4"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "already holds checkpoints; pass --resume")
    code, _, err = run_cli(capsys, *args, "--max-steps", "3", "--resume")
    assert code == 0 and "resumed from" in err and "step-00000002" in err
    # plot draws a PNG of the run's curves
    code, out, err = run_cli(capsys, "plot", tmp_path / "run")
    assert code == 0, err
    png = Path(out.strip())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_metrics_is_a_user_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "plot", tmp_path)
    assert_one_line_error(code, err, "no metrics to plot")


def test_sigterm_finishes_the_step_saves_and_exits_zero(data, tmp_path):
    """Plain `spanbert-train` entry point, as a process: SIGTERM → checkpoint of the last step, exit status 0."""
    exe = Path(sys.executable).parent / "spanbert-train"
    out = tmp_path / "run"
    cmd = [str(exe), "--data", str(data), "--out", str(out), *TINY, "--max-steps", "100000", "--log-every", "1",
           "--save-every", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped at step" in err
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    last = rows[-1]["step"]
    assert (out / "checkpoints" / f"step-{last:08d}" / "meta.json").is_file()


def test_python_dash_m_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "spanbert_train", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)  # fmt: skip
    assert result.returncode == 0
    assert "plot" in result.stdout and "--global-batch-size" in result.stdout
