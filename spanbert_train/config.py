"""The trainer's options: one dataclass per concern, defaults reproducing SPEC §4–§5.

A run's configuration is resolved in layers — the dataclass defaults, then a `--config` file
(TOML; YAML when PyYAML is installed), then the command-line options actually given, and last the
model preset's *recipe* (RECIPES: peak lr, warm-up, total updates and global batch of SPEC §5) for
each of those four values that none of the layers set — and validated once. `TrainConfig.sources`
records where every value came from. Every error names the dotted field (`optim.lr must be > 0`), so
the CLI can print it as one line. The resolved configuration is printed at start, saved as
RUN_DIR/config.json and stored in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spanbert_train.errors import ConfigError
from spanbert_train.weights import blend_weights

KERNEL_CHOICES = ("auto", "triton", "reference")
MODEL_PRESETS = ("tiny", "small", "base", "large")
VERIFY_CHOICES = ("sha256", "size")


@dataclass
class DataConfig:
    path: list[str] = field(default_factory=list)
    """The dataset directory (or URL) written by `spanbert-data build`; repeat --data to mix several (data.weights)."""
    weights: list[float] = field(default_factory=list)
    """Share of each dataset's rows in every global batch, in --data order (e.g. 3,1); empty: equal shares."""
    global_batch_size: int | None = None
    """Rows per optimizer step, over all ranks and accumulation steps; default: the preset's recipe (RECIPES)."""
    micro_batch: int = 8
    """Rows per forward/backward on one rank; global_batch_size / (ranks × micro_batch) accumulation steps."""
    prefetch: int = 2
    """Optimizer steps of batches prepared ahead by the loader's background thread."""
    verify: str = "sha256"
    """'sha256': hash each shard against the manifest before its first row is used (ahead of need); 'size': skip it."""
    cache_dir: str = ""
    """Local cache of a remote dataset's shards (default: $SPANBERT_CACHE, else ~/.cache/spanbert)."""
    cache_limit: float = 0.0
    """GB the cache may hold (0 = two mask epochs plus the validation shards, within free disk); >= one epoch's."""
    storage_options: dict = field(default_factory=dict)
    """fsspec options for a remote dataset (e.g. {"endpoint_url": ...}); never written to config.json or checkpoints."""


@dataclass
class ModelSpec:
    preset: str = "base"
    """Model size preset: tiny, small, base or large (SPEC §5)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields replacing the preset's values, e.g. {num_layers = 2, hidden_dropout = 0.0}."""
    init_from: str = ""
    """A Hugging Face BERT directory to continue pre-training from (its config replaces the preset)."""


@dataclass
class OptimConfig:
    lr: float | None = None
    """Peak learning rate reached at the end of warm-up; default: the preset's recipe (RECIPES, SPEC §5)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam β1, β2 (SPEC §5)."""
    eps: float = 1e-8
    """Adam ε (SPEC §5)."""
    weight_decay: float = 0.01
    """Decoupled weight decay, not applied to biases and LayerNorm weights (SPEC §5, as BERT)."""
    warmup_steps: int | None = None
    """Linear warm-up steps; default: the preset's recipe (RECIPES), at most 10% of max_steps."""
    clip_grad_norm: float = 1.0
    """Global gradient-norm clipping threshold (SPEC §5); 0 disables clipping."""


@dataclass
class TrainConfig:
    out: str = ""
    """The run directory: config.json, metrics.jsonl, checkpoints/."""
    max_steps: int | None = None
    """Optimizer steps; the learning rate decays linearly to 0 here; default: the preset's recipe (RECIPES)."""
    seed: int = 1234
    """Seed of initialisation, dropout and the data order."""
    eval_every: int = 1000
    """Evaluate on the validation shards every N steps (0 = only at the end)."""
    eval_rows: int = 2048
    """Held-out rows per evaluation: a fixed uniform subset, the same for any launch (0 = the whole split)."""
    save_every: int = 1000
    """Write a checkpoint every N steps (0 = only at the end and on SIGTERM)."""
    keep_last: int = 3
    """Checkpoints kept in RUN_DIR/checkpoints (older ones are deleted)."""
    resume: bool = False
    """Continue from the latest good checkpoint in RUN_DIR (start fresh when there is none)."""
    kernels: str = "auto"
    """Fused kernels: 'auto' (triton on CUDA, else reference), 'triton' or 'reference'."""
    log_every: int = 10
    """Write a metrics row (and a console line when not on a terminal) every N steps."""
    tensorboard: bool = False
    """Also write TensorBoard events to RUN_DIR/tensorboard (needs the tensorboard package)."""
    max_nonfinite: int = 20
    """Abort after this many consecutive steps with a non-finite loss or gradient (each is skipped)."""
    sbo_weight: float = 1.0
    """Weight of the SBO loss (SPEC §4: 1.0); 0 trains MLM only (the paper's span masking without SBO)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the rows come from and how they are batched."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """Which model to train."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimiser and its schedule."""
    sources: dict[str, str] = field(default_factory=dict)
    """Where each value came from: default, recipe PRESET, config file FILE, or command line (filled on resolve)."""

    def resolve(self) -> TrainConfig:
        """Fill what no layer set from the preset's recipe and record every value's source; return self."""
        _choice(self.model, "preset", MODEL_PRESETS, prefix="model.")
        recipe = RECIPES[self.model.preset]
        defaults = TrainConfig()
        for dotted in _leaf_fields(self):
            if dotted == "sources":
                continue
            value, default = _get(self, dotted), _get(defaults, dotted)
            if dotted in RECIPE_FIELDS and value is None:
                if dotted == "optim.warmup_steps":
                    continue  # below: it depends on max_steps
                _set(self, dotted, recipe[dotted])
                self.sources[dotted] = f"recipe {self.model.preset} ({recipe['source']})"
            elif dotted not in self.sources:
                self.sources[dotted] = "default" if value == default else "given"
        if self.optim.warmup_steps is None:
            warmup, source = recipe["optim.warmup_steps"], f"recipe {self.model.preset} ({recipe['source']})"
            if isinstance(self.max_steps, int) and self.max_steps > 0 and warmup > max(1, self.max_steps // 10):
                warmup, source = max(1, self.max_steps // 10), source + ", capped at 10% of max_steps"
            self.optim.warmup_steps = warmup
            self.sources["optim.warmup_steps"] = source
        return self

    def validate(self) -> TrainConfig:
        """Resolve, then raise ConfigError naming the first invalid field; return self."""
        self.resolve()
        _positive(self, "max_steps", "log_every", "keep_last", "max_nonfinite")
        _non_negative(self, "eval_every", "eval_rows", "save_every", "seed", "sbo_weight")
        _choice(self, "kernels", KERNEL_CHOICES)
        if not self.out:
            raise ConfigError("out is required: give --out RUN_DIR")
        d = self.data
        d.path = [d.path] if isinstance(d.path, str | os.PathLike) else list(d.path)  # one dataset: one string
        d.path = [str(p) for p in d.path if str(p)]
        if not d.path:
            raise ConfigError("data.path is required: give --data DATASET_DIR")
        for i, p in enumerate(d.path):
            if p in d.path[:i]:
                raise ConfigError(f"data.path lists {p} twice; give each dataset once (data.weights sets its share)")
        d.weights = list(d.weights)
        blend_weights(d.weights, len(d.path))
        _positive(d, "global_batch_size", "micro_batch", "prefetch", prefix="data.")
        _non_negative(d, "cache_limit", prefix="data.")
        if "://" in self.out and not self.out.lower().startswith("file://"):
            raise ConfigError(
                f"out must be a local directory (got {self.out}): checkpoints are written with atomic renames, which "
                "object stores lack; copy the run directory to the bucket afterwards"
            )
        _choice(d, "verify", VERIFY_CHOICES, prefix="data.")
        _choice(self.model, "preset", MODEL_PRESETS, prefix="model.")
        if not isinstance(self.model.overrides, dict):
            raise ConfigError("model.overrides must be a table of ModelConfig fields")
        o = self.optim
        if not o.lr > 0:
            raise ConfigError("optim.lr must be > 0")
        if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
            raise ConfigError("optim.betas must be two numbers in [0, 1)")
        if not o.eps > 0:
            raise ConfigError("optim.eps must be > 0")
        _non_negative(o, "weight_decay", "clip_grad_norm", prefix="optim.")
        if o.warmup_steps is not None and o.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps must be >= 0")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        opts = d["data"]["storage_options"]  # may hold credentials: only their names are saved and printed
        d["data"]["storage_options"] = {k: "<not saved>" for k in opts}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


# Per-preset optimisation recipes: the values used when neither the config file nor the command line
# gives them. base and large are the paper's (SPEC §5); tiny and small are ours, for CPU runs and tests
# (tiny: the small batches and peak lr with which bench/pretrain_quality.py leaves the unigram plateau).
# SPEC §5's base row gives batch, updates and peak lr but no warm-up: base keeps the schedule row's 10,000.
RECIPE_FIELDS = ("optim.lr", "optim.warmup_steps", "max_steps", "data.global_batch_size")
RECIPES: dict[str, dict] = {
    "large": {"optim.lr": 1e-4, "optim.warmup_steps": 10_000, "max_steps": 2_400_000,
              "data.global_batch_size": 256, "source": "SPEC §5, the paper's BERT-large run"},
    "base": {"optim.lr": 5e-4, "optim.warmup_steps": 10_000, "max_steps": 300_000,
             "data.global_batch_size": 2048, "source": "SPEC §5, the paper's base model"},
    "small": {"optim.lr": 5e-4, "optim.warmup_steps": 1_000, "max_steps": 100_000,
              "data.global_batch_size": 256, "source": "ours: not in the paper"},
    "tiny": {"optim.lr": 1e-3, "optim.warmup_steps": 1_000, "max_steps": 20_000,
             "data.global_batch_size": 32, "source": "ours: not in the paper"},
}  # fmt: skip


def dataset_paths(saved: dict | None) -> list[str]:
    """The datasets (`data.path`) of a saved configuration (config.json, a checkpoint's meta): a list, or the
    single string of runs from before blends."""
    path = ((saved or {}).get("data") or {}).get("path") or []
    return [path] if isinstance(path, str) else [str(p) for p in path]


def _leaf_fields(obj, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _leaf_fields(value, prefix + f.name + ".")
        else:
            out.append(prefix + f.name)
    return out


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, leaf, value)


def _positive(obj, *names: str, prefix: str = "") -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{prefix}{name} must be > 0 (got {getattr(obj, name)})")


def _non_negative(obj, *names: str, prefix: str = "") -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{prefix}{name} must be >= 0 (got {getattr(obj, name)})")


def _choice(obj, name: str, choices: tuple[str, ...], prefix: str = "") -> None:
    if getattr(obj, name) not in choices:
        raise ConfigError(f"{prefix}{name} must be one of {', '.join(choices)} (got {getattr(obj, name)!r})")


# ----------------------------------------------------------------------------------------------
# Building a TrainConfig from nested dicts (config files, checkpoints) with field-named errors.


def from_dict(raw: dict, base: TrainConfig | None = None, source: str | None = None) -> TrainConfig:
    """Apply a nested dict (as in a TOML file or config.json) on top of `base` (default: the defaults).

    `source` (e.g. "config file run.toml") is recorded in `sources` for every value the dict sets."""
    cfg = base if base is not None else TrainConfig()
    _apply(cfg, raw, "", cfg.sources if source else None, source)
    return cfg


def _apply(obj, raw: dict, prefix: str, sources: dict | None = None, source: str | None = None) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in raw.items():
        name = key.replace("-", "_")
        dotted = prefix + name
        if dotted == "sources":  # a saved config.json's record of where values came from, not an input
            continue
        if dotted == "data.datasets":
            if {"path", "weights"} & set(raw):
                raise ConfigError("data.datasets replaces data.path and data.weights: give one or the other")
            obj.path, obj.weights = _dataset_tables(value)
            _record(sources, "data.path", source)
            _record(sources, "data.weights", source)
            continue
        if name not in fields:
            known = sorted(fields) + (["datasets"] if prefix == "data." else [])
            raise ConfigError(f"unknown config key {dotted!r} (known: {', '.join(known)})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if isinstance(current, ModelSpec) and isinstance(value, dict):
                # [model] holds the preset name plus any ModelConfig field to override.
                value = dict(value)
                if "preset" in value:
                    current.preset = _coerce(value.pop("preset"), f"{dotted}.preset", "str")
                    _record(sources, f"{dotted}.preset", source)
                if "init_from" in value:  # a ModelSpec field, not a ModelConfig override (--init-from)
                    current.init_from = _coerce(value.pop("init_from"), f"{dotted}.init_from", "str")
                    _record(sources, f"{dotted}.init_from", source)
                current.overrides.update(value.pop("overrides", {}))
                current.overrides.update(value)
                if value:
                    _record(sources, f"{dotted}.overrides", source)
                continue
            _apply(current, value, dotted + ".", sources, source)
        else:
            setattr(obj, name, _coerce(value, dotted, str(fields[name].type)))
            _record(sources, dotted, source)


def _dataset_tables(value) -> tuple[list[str], list[float]]:
    """`[[data.datasets]]` tables (path = "…", weight = 3) → (data.path, data.weights); weight defaults to 1."""
    if not isinstance(value, list) or not value:
        raise ConfigError("data.datasets must be a list of tables ([[data.datasets]] with path = … and weight = …)")
    paths, weights = [], []
    for i, table in enumerate(value):
        where = f"data.datasets[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table with path = … and weight = …")
        unknown = sorted(set(table) - {"path", "weight"})
        if unknown:
            raise ConfigError(f"unknown config key '{where}.{unknown[0]}' (known: path, weight)")
        if "path" not in table:
            raise ConfigError(f"{where}.path is required: the dataset directory or URL")
        paths.append(_coerce(table["path"], f"{where}.path", "str"))
        weights.append(_coerce(table.get("weight", 1), f"{where}.weight", "float"))
    return paths, weights


def _record(sources: dict | None, dotted: str, source: str | None) -> None:
    if sources is not None and source:
        sources[dotted] = source


def _coerce(value, dotted: str, annotation: str):
    """Check a value against the field's annotation (config files carry no types of their own)."""
    if "None" in annotation and value is None:
        return None
    kind = annotation.split("|")[0].strip().split("[")[0]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted} must be true or false (got {value!r})")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{dotted} must be an integer (got {value!r})")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{dotted} must be a number (got {value!r})")
        return float(value)
    if kind == "tuple":
        if not isinstance(value, list | tuple) or not all(isinstance(v, int | float) for v in value):
            raise ConfigError(f"{dotted} must be a list of numbers (got {value!r})")
        return tuple(float(v) for v in value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{dotted} must be a string (got {value!r})")
        return value
    if kind == "list":  # list[str] (data.path: one string is a list of one) or list[float] (data.weights)
        item = annotation.split("[", 1)[1].rstrip("]")
        items = [value] if isinstance(value, str | int | float) and not isinstance(value, bool) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{dotted} must be a list (got {value!r})")
        return [_coerce(v, dotted, item) for v in items]
    if kind == "dict" and not isinstance(value, dict):
        raise ConfigError(f"{dotted} must be a table (got {value!r})")
    return value


def load_config_file(path: str | Path) -> dict:
    """Read a TOML (or, with PyYAML installed, YAML) config file into a nested dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML config files need PyYAML (pip install pyyaml); or use TOML") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    else:
        try:
            import tomllib  # Python >= 3.11
        except ImportError:
            try:
                import tomli as tomllib
            except ImportError:
                raise ConfigError(f"{path}: TOML config files need Python >= 3.11 or `pip install tomli`") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a table of options")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `--model-set KEY=VALUE` option; VALUE is read as JSON when it can be (2, 0.1, true), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--model-set expects KEY=VALUE (got {text!r})")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed
