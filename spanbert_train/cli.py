"""`spanbert-train`: train with no subcommand; tools are subcommands (`spanbert-train plot RUN`).

Every launch is the same entry: `spanbert-train …`, `python -m spanbert_train …`,
`torchrun --nproc-per-node N --no-python spanbert-train …` and `torchrun -m spanbert_train …`.
This module only parses options into a TrainConfig (defaults ← --config file ← options given)
and calls spanbert_train.train.train. User errors print one line on stderr and exit with status 2.

More subcommands are added without touching the group: put "NAME": "module:click_command" in
SUBCOMMANDS, or call `register_subcommand(NAME, "module:attr")`. Training (TRAIN) and the subcommands are
found by name (`load`) only when invoked, so `spanbert-train --help` and `plot` never import torch, and no
module imports this one (tests/test_structure.py).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

import click

from spanbert_data.config import field_docs
from spanbert_data.errors import DatasetError
from spanbert_data.remote import parse_storage_options
from spanbert_train.config import (
    KERNEL_CHOICES,
    MODEL_PRESETS,
    VERIFY_CHOICES,
    DataConfig,
    ModelSpec,
    OptimConfig,
    TrainConfig,
    from_dict,
    load_config_file,
    parse_override,
)
from spanbert_train.errors import CheckpointError, ConfigError, TrainingError
from spanbert_train.weights import parse_weights

USER_ERRORS = (ConfigError, DatasetError, CheckpointError)  # one line on stderr, exit status 2

TRAIN = "spanbert_train.train:train"  # what `spanbert-train` without a subcommand runs
SUBCOMMANDS: dict[str, str] = {
    "plot": "spanbert_train.metrics:plot_command",
    "export": "spanbert_train.export:export_command",
    "finetune-qa": "spanbert_train.qa.finetune:finetune_qa_command",
    "evaluate": "spanbert_train.evaluate:evaluate_command",
}


def register_subcommand(name: str, target: str) -> None:
    """Make `spanbert-train NAME` run the click command at `target` ("package.module:attribute")."""
    SUBCOMMANDS[name] = target


def load(target: str):
    """The object at `target` ("package.module:attribute"), its module imported now."""
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used (see SUBCOMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SUBCOMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in SUBCOMMANDS:
            return load(SUBCOMMANDS[name])
        return super().get_command(ctx, name)


_DOCS = {
    **{k: v for k, v in field_docs(TrainConfig).items()},
    **{f"data.{k}": v for k, v in field_docs(DataConfig).items()},
    **{f"optim.{k}": v for k, v in field_docs(OptimConfig).items()},
    **{f"model.{k}": v for k, v in field_docs(ModelSpec).items()},
}

# option name (as click passes it) -> dotted config field
OPTION_FIELDS = {
    "data": "data.path", "out": "out", "model": "model.preset", "max_steps": "max_steps",
    "global_batch_size": "data.global_batch_size", "micro_batch": "data.micro_batch", "seed": "seed",
    "lr": "optim.lr", "warmup_steps": "optim.warmup_steps", "weight_decay": "optim.weight_decay",
    "clip_grad_norm": "optim.clip_grad_norm", "eval_every": "eval_every", "eval_rows": "eval_rows",
    "save_every": "save_every", "keep_last": "keep_last", "resume": "resume", "kernels": "kernels",
    "log_every": "log_every", "tensorboard": "tensorboard", "max_nonfinite": "max_nonfinite",
    "verify_shards": "data.verify", "prefetch": "data.prefetch", "init_from": "model.init_from",
    "cache_dir": "data.cache_dir", "cache_limit": "data.cache_limit", "storage_options": "data.storage_options",
    "sbo_weight": "sbo_weight", "data_weights": "data.weights",
}  # fmt: skip


def _json_option(ctx, param, value):
    """--storage-options JSON → dict (None when not given)."""
    if value is None:
        return None
    try:
        return parse_storage_options(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _opt(*decls, field: str, **kwargs):
    """A train option whose help is the config field's one-line doc; default None = "not given"."""
    return click.option(*decls, default=None, show_default=False, help=_DOCS[field], **kwargs)


def resolve_config(options: dict, config_file: str | None, model_set: tuple[str, ...]) -> TrainConfig:
    """Defaults, then the config file, then the options actually given (those not None), then the recipe."""
    cfg = from_dict(load_config_file(config_file), source=f"config file {config_file}") if config_file \
        else TrainConfig()
    given: dict = {}
    for name, value in options.items():
        if value is None or value == ():  # not given (a repeatable option gives ())
            continue
        *parents, leaf = OPTION_FIELDS[name].split(".")
        node = given
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    if model_set:
        given.setdefault("model", {}).update(dict(parse_override(item) for item in model_set))
    return from_dict(given, base=cfg, source="command line").validate()


@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@_opt("--data", field="data.path", metavar="DIR|URL", multiple=True)
@_opt("--data-weights", field="data.weights", metavar="W1,W2,…", callback=parse_weights)
@_opt("--out", field="out", metavar="RUN_DIR")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="TOML file of options (tables [data], [optim], [model]; a blend's datasets as [[data.datasets]] "
                   "tables of path and weight); YAML with PyYAML installed.")  # fmt: skip
@click.option("--model", default=None, type=click.Choice(MODEL_PRESETS), help="Model size preset (SPEC §5). [base]")
@click.option("--model-set", "model_set", multiple=True, metavar="KEY=VALUE",
              help="Override one ModelConfig field, e.g. --model-set num_layers=2 (repeatable).")  # fmt: skip
@_opt("--init-from", field="model.init_from", metavar="HF_DIR")
@_opt("--max-steps", field="max_steps", type=int)
@_opt("--global-batch-size", field="data.global_batch_size", type=int)
@_opt("--micro-batch", field="data.micro_batch", type=int)
@_opt("--seed", field="seed", type=int)
@_opt("--lr", field="optim.lr", type=float)
@_opt("--warmup-steps", field="optim.warmup_steps", type=int)
@_opt("--weight-decay", field="optim.weight_decay", type=float)
@_opt("--clip-grad-norm", field="optim.clip_grad_norm", type=float)
@_opt("--eval-every", field="eval_every", type=int)
@_opt("--eval-rows", field="eval_rows", type=int)
@_opt("--save-every", field="save_every", type=int)
@_opt("--keep-last", field="keep_last", type=int)
@_opt("--resume/--no-resume", field="resume")
@_opt("--kernels", field="kernels", type=click.Choice(KERNEL_CHOICES))
@_opt("--log-every", field="log_every", type=int)
@_opt("--tensorboard/--no-tensorboard", field="tensorboard")
@_opt("--max-nonfinite", field="max_nonfinite", type=int)
@_opt("--verify-shards", field="data.verify", type=click.Choice(VERIFY_CHOICES))
@_opt("--prefetch", field="data.prefetch", type=int)
@_opt("--cache-dir", field="data.cache_dir", metavar="DIR")
@_opt("--cache-limit", field="data.cache_limit", type=float, metavar="GB")
@_opt("--storage-options", field="data.storage_options", metavar="JSON", callback=_json_option)
@_opt("--sbo-weight", field="sbo_weight", type=float)
@click.option("--print-config", is_flag=True, help="Print the resolved configuration as JSON and exit.")
@click.pass_context
def cli(ctx: click.Context, config_file, model_set, print_config, **options) -> None:
    """Pre-train SpanBERT on a dataset built by `spanbert-data build` (run without a subcommand to train)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = resolve_config(options, config_file, model_set)
    if print_config:
        click.echo(cfg.to_json())
        return
    load(TRAIN)(cfg)  # torch is imported only when training


def _exiting_on_error() -> None:
    """Under torchrun every rank stops on the same error together, and torchrun SIGTERMs the ranks still running
    once one has exited: ignore SIGTERM from here on, so that this rank too exits with its own status. (Only as a
    torchrun worker: an ignored SIGTERM would be inherited by any process started later by an embedding program.)"""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning user errors into one line on stderr and exit status 2."""
    try:
        code = cli.main(args=argv, prog_name="spanbert-train", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except USER_ERRORS as e:
        _exiting_on_error()
        click.echo(f"spanbert-train: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("spanbert-train: interrupted", err=True)
        sys.exit(130)
    except TrainingError as e:
        _exiting_on_error()
        click.echo(f"spanbert-train: error: {e}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
