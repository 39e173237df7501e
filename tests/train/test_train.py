"""The training loop end to end on CPU: loss falls, split-independent loss, exact resume, DDP, non-finite abort."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spanbert_train.config import DataConfig, ModelSpec, OptimConfig, TrainConfig
from spanbert_train.errors import TrainingError
from spanbert_train.model import ModelConfig, SpanBertForPreTraining
from spanbert_train.optim import lr_factor, param_groups, warmup_steps
from spanbert_train.train import train
from tests.train.dataset_fixture import make_dataset

SMALL = {"num_layers": 1, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "max_position_embeddings": 64}
NO_DROPOUT = {**SMALL, "hidden_dropout": 0.0, "attention_dropout": 0.0}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), rows=64, mask_epochs=2, valid_rows=16)


def config(data, out, max_steps=6, gbs=8, micro=4, overrides=None, **kw) -> TrainConfig:
    cfg = TrainConfig(
        out=str(out), max_steps=max_steps, seed=3, eval_every=0, save_every=0, log_every=1, kernels="reference",
        data=DataConfig(path=str(data), global_batch_size=gbs, micro_batch=micro),
        model=ModelSpec(preset="tiny", overrides=dict(overrides or SMALL)),
        optim=OptimConfig(lr=2e-3, warmup_steps=2),
    )  # fmt: skip
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def train_rows(rows):
    return [r for r in rows if r.get("split", "train") == "train"]


def test_schedule_warms_up_then_decays_to_zero():
    assert warmup_steps(OptimConfig(), 2_400_000) == 10_000  # SPEC §5
    assert warmup_steps(OptimConfig(), 1000) == 100  # 10% of a short run
    assert warmup_steps(OptimConfig(warmup_steps=7), 1000) == 7
    factors = [lr_factor(s, 4, 12) for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:] == pytest.approx([(12 - s) / 8 for s in range(4, 12)])
    assert lr_factor(12, 4, 12) == 0.0


def test_no_weight_decay_on_biases_and_layernorm():
    model = SpanBertForPreTraining(ModelConfig.from_preset("tiny", vocab_size=200))
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert any("LayerNorm.weight" in names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def test_loss_falls_and_metrics_are_written(data, tmp_path):
    rows = train(config(data, tmp_path / "run", max_steps=40, gbs=16, micro=8, eval_every=20))
    losses = [r["loss"] for r in train_rows(rows)]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = {"step", "loss", "loss_mlm", "loss_sbo", "acc_mlm", "acc_sbo", "lr", "grad_norm", "tokens_per_s",
            "skipped_nonfinite"}  # fmt: skip
    assert keys <= set(lines[0])
    assert [r["step"] for r in lines if r.get("split") == "valid"] == [20, 40]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["max_steps"] == 40 and saved["resolved_model"]["vocab_size"] == 300
    assert (tmp_path / "run" / "checkpoints" / "step-00000040" / "meta.json").is_file()


def test_loss_does_not_depend_on_accumulation_split(data, tmp_path):
    whole = train(config(data, tmp_path / "a", max_steps=3, micro=8, overrides=NO_DROPOUT))
    split = train(config(data, tmp_path / "b", max_steps=3, micro=2, overrides=NO_DROPOUT))
    for x, y in zip(train_rows(whole), train_rows(split), strict=True):
        for key in ("loss", "loss_mlm", "loss_sbo", "acc_mlm", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), key


def test_stopped_and_resumed_run_reproduces_the_losses_exactly(data, tmp_path):
    full = train_rows(train(config(data, tmp_path / "full", max_steps=8)))  # dropout on: RNG state matters

    def stop_at_3(trainer, row):
        if row["step"] == 3:
            trainer.request_stop()  # as SIGTERM does: honoured at the end of the next step

    first = train_rows(train(config(data, tmp_path / "cut", max_steps=8), on_step=stop_at_3))
    assert first[-1]["step"] == 4
    assert (tmp_path / "cut" / "checkpoints" / "step-00000004").is_dir()
    second = train_rows(train(config(data, tmp_path / "cut", max_steps=8, resume=True)))
    assert [r["step"] for r in second] == [5, 6, 7, 8]
    assert [r["loss"] for r in first + second] == [r["loss"] for r in full]  # exactly, not approximately
    logged = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r.get("split") != "valid"] == list(range(1, 9))


def test_nonfinite_steps_are_skipped_then_abort_names_step_and_checkpoint(data, tmp_path):
    cfg = config(data, tmp_path / "nan", max_steps=50, max_nonfinite=3, save_every=1)
    cfg.optim.lr, cfg.optim.clip_grad_norm = 1e30, 0.0  # weights blow up to inf after one update
    with pytest.raises(TrainingError, match=r"step \d+: loss or gradient non-finite for 3 steps in a row") as err:
        train(cfg)
    assert "checkpoints/step-" in str(err.value)
    rows = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_nonfinite"] == 3 and not math.isfinite(rows[-1]["loss"])


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "spanbert_train", *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_process_gloo_run_matches_one_process(data, tmp_path):
    args = ["--data", str(data), "--model", "tiny", "--max-steps", "3", "--global-batch-size", "8",
            "--micro-batch", "2", "--lr", "2e-3", "--warmup-steps", "1", "--eval-every", "0", "--log-every", "1",
            "--save-every", "0", *[f"--model-set={k}={v}" for k, v in NO_DROPOUT.items()]]  # fmt: skip
    two = _torchrun(2, [*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    one = train(config(data, tmp_path / "one", max_steps=3, micro=2, overrides=NO_DROPOUT,
                       optim=OptimConfig(lr=2e-3, warmup_steps=1), seed=1234))  # fmt: skip
    logged = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(train_rows(one), train_rows(logged), strict=True):
        for key in ("loss", "loss_mlm", "loss_sbo", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-5), key
    assert torch.distributed.is_initialized() is False


def test_loss_falls_on_the_example_corpus(tmp_path):
    """Real shards from the builder (examples/wiki, the test WordPiece vocab) through the whole trainer."""
    from spanbert_data.build import build_dataset
    from spanbert_data.config import BuildConfig

    data = tmp_path / "wiki"
    build_dataset(BuildConfig(corpus=REPO / "examples" / "wiki", out=data, max_seq_len=128, valid_fraction=0.05,
                              tokenizer=REPO / "tests" / "assets" / "bert-uncased-tokenizer.json", workers=1),
                  log=lambda msg: None)  # fmt: skip
    cfg = config(data, tmp_path / "run", max_steps=30, gbs=8, micro=8, eval_rows=16,
                 overrides={**SMALL, "max_position_embeddings": 128})
    cfg.optim.lr = 5e-3
    rows = train_rows(train(cfg))
    losses = [r["loss"] for r in rows]
    assert losses[0] > 18.0  # 2 × ln(30522) ≈ 20.6 at initialisation (MLM + SBO, SPEC §4)
    assert sum(losses[-5:]) / 5 < losses[0] - 3.0, losses
    # The run records its dataset's unigram entropy (the plot's reference line): H of the manifest's counts.
    counts = np.asarray(json.loads((data / "manifest.json").read_text())["unigram_counts"], dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["dataset_unigram_entropy"]
    assert recorded == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12) and 5.0 < recorded < 9.0
