"""Checkpoints: exact round trip of every state, atomic layout, latest GOOD one on resume, pruning."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from spanbert_train.checkpoint import (
    latest_good,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from spanbert_train.config import OptimConfig
from spanbert_train.errors import CheckpointError
from spanbert_train.model import ModelConfig, SpanBertForPreTraining
from spanbert_train.optim import build_optimizer, build_scheduler


def make(seed: int):
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset("tiny", num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
                                  vocab_size=120, max_position_embeddings=32)  # fmt: skip
    model = SpanBertForPreTraining(cfg)
    opt = build_optimizer(model, OptimConfig(lr=1e-3), torch.device("cpu"))
    sched = build_scheduler(opt, warmup=2, max_steps=10)
    return model, opt, sched


def take_steps(model, opt, sched, n: int) -> None:
    for _ in range(n):
        loss = sum((p.float() ** 2).sum() for p in model.parameters()) * 1e-3
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def test_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path):
    model, opt, sched = make(0)
    take_steps(model, opt, sched, 3)
    torch.manual_seed(11), np.random.seed(12), random.seed(13)
    path = save_checkpoint(tmp_path, 3, model, opt, sched, {"loader": {"epoch": 1}}, [rng_state()], keep_last=2)
    expected_rng = (torch.rand(3), np.random.rand(2), random.random())
    take_steps(model, opt, sched, 2)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    other, opt2, sched2 = make(1)
    meta = read_meta(path)
    load_checkpoint(path, meta, other, opt2, sched2)
    set_rng_state(meta["rng"][0])
    assert meta["loader"] == {"epoch": 1} and meta["step"] == 3
    got_rng = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(got_rng[0], expected_rng[0]) and np.array_equal(got_rng[1], expected_rng[1])
    assert got_rng[2] == expected_rng[2]
    take_steps(other, opt2, sched2, 2)
    for name, value in other.state_dict().items():
        assert torch.equal(value, reference[name]), name  # bit-exact continuation
    assert sched2.get_last_lr() == sched.get_last_lr()
    # tied weights stay tied after loading
    assert other.cls.predictions.decoder.weight.data_ptr() == other.bert.embeddings.word_embeddings.weight.data_ptr()


def test_metadata_is_json_and_tensors_are_safetensors(tmp_path):
    model, opt, sched = make(0)
    take_steps(model, opt, sched, 1)
    path = save_checkpoint(tmp_path, 1, model, opt, sched, {}, [rng_state()], keep_last=1)
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "optimizer.safetensors"]
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["files"]) == {"model.safetensors", "optimizer.safetensors"}
    assert not list(tmp_path.joinpath("checkpoints").glob(".tmp-*"))


def test_latest_good_skips_corrupt_and_partial_checkpoints_and_prunes(tmp_path):
    model, opt, sched = make(0)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, opt, sched, {}, [rng_state()], keep_last=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000004"]
    newest = list_checkpoints(tmp_path)[-1]
    blob = newest / "model.safetensors"
    blob.write_bytes(blob.read_bytes()[:-10])  # truncated
    (list_checkpoints(tmp_path)[1] / "optimizer.safetensors").write_bytes(
        b"x" * (list_checkpoints(tmp_path)[1] / "optimizer.safetensors").stat().st_size
    )  # same size, wrong bytes
    (tmp_path / "checkpoints" / "step-00000009").mkdir()  # a directory without meta.json
    warnings = []
    path, meta = latest_good(tmp_path, warn=warnings.append)
    assert path.name == "step-00000002" and meta["step"] == 2
    assert len(warnings) == 3
    assert any("truncated" in w for w in warnings) and any("corrupt" in w for w in warnings)
    assert any("meta.json is missing" in w for w in warnings)


def test_loading_into_another_model_shape_is_a_clear_error(tmp_path):
    model, opt, sched = make(0)
    path = save_checkpoint(tmp_path, 1, model, opt, sched, {}, [rng_state()], keep_last=1)
    torch.manual_seed(0)
    bigger = SpanBertForPreTraining(ModelConfig.from_preset("tiny", num_layers=1, hidden_size=48, num_heads=2,
                                                            intermediate_size=64, vocab_size=120))  # fmt: skip
    opt2 = build_optimizer(bigger, OptimConfig(lr=1e-3), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="does not match this checkpoint"):
        load_checkpoint(path, read_meta(path), bigger, opt2, build_scheduler(opt2, 1, 10))
