"""Per-preset optimisation defaults (SPEC §5): the README's commands resolve to the paper's recipes, and the
resolved configuration says where every value came from."""

from __future__ import annotations

import json

import pytest

from spanbert_train.cli import main
from spanbert_train.config import RECIPES, TrainConfig


def print_config(capsys, tmp_path, *argv) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *map(str, argv), "--print-config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return json.loads(out)


def recipe(cfg: dict) -> tuple:
    return cfg["optim"]["lr"], cfg["optim"]["warmup_steps"], cfg["max_steps"], cfg["data"]["global_batch_size"]


def test_readme_commands_give_the_papers_recipes(capsys, tmp_path):
    # README: `spanbert-train --data data/wiki --out runs/base --model base` (and no --model: base too)
    base = print_config(capsys, tmp_path, "--model", "base")
    assert recipe(base) == (5e-4, 10_000, 300_000, 2048)  # SPEC §5 base: ≈ 2,048 sequences, 300k updates, 5e-4
    assert recipe(print_config(capsys, tmp_path)) == recipe(base)
    large = print_config(capsys, tmp_path, "--model", "large")
    assert recipe(large) == (1e-4, 10_000, 2_400_000, 256)  # SPEC §5: 256 × 512 rows, 2.4M updates, 1e-4, 10k
    for key in ("optim.lr", "optim.warmup_steps", "max_steps", "data.global_batch_size"):
        assert large["sources"][key] == "recipe large (SPEC §5, the paper's BERT-large run)", key
    assert large["sources"]["model.preset"] == "command line"
    assert large["sources"]["optim.weight_decay"] == "default"


def test_given_values_win_and_say_so(capsys, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("max_steps = 5000\n[data]\nglobal_batch_size = 512\n")
    cfg = print_config(capsys, tmp_path, "--config", toml, "--model", "large", "--lr", "2e-4")
    assert recipe(cfg) == (2e-4, 500, 5000, 512)  # warm-up: the recipe's 10k capped at 10% of 5,000 updates
    src = cfg["sources"]
    assert src["optim.lr"] == "command line" and src["max_steps"] == f"config file {toml}"
    assert src["data.global_batch_size"] == f"config file {toml}"
    assert src["optim.warmup_steps"].startswith("recipe large") and "capped at 10%" in src["optim.warmup_steps"]
    cfg = print_config(capsys, tmp_path, "--model", "tiny", "--warmup-steps", "7", "--max-steps", "20")
    assert cfg["optim"]["warmup_steps"] == 7 and cfg["sources"]["optim.warmup_steps"] == "command line"


def test_every_preset_has_a_complete_recipe_and_code_built_configs_resolve():
    for preset, values in RECIPES.items():
        cfg = TrainConfig(out="o")
        cfg.model.preset, cfg.data.path = preset, "d"
        cfg.validate()
        assert cfg.optim.lr == values["optim.lr"] and cfg.max_steps == values["max_steps"]
        assert cfg.data.global_batch_size == values["data.global_batch_size"]
        assert cfg.sources["optim.lr"].startswith(f"recipe {preset}")
    given = TrainConfig(out="o", max_steps=30)
    given.data.path = "d"
    given.validate()
    assert given.sources["max_steps"] == "given" and given.optim.warmup_steps == 3
