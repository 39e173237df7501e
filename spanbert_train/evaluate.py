"""Held-out evaluation that does not depend on how it is launched (`spanbert-train evaluate`, and the
periodic evaluation of a training run).

Which rows: the whole split, or with ``max_rows = N`` the first N rows of a permutation of all the
split's rows seeded by a fixed constant (:func:`eval_rows`). Every row is equally likely to be in it,
whatever the packing order (rows are written longest examples first, docs/FORMAT.md), and it is the
same subset for every run, rank count and micro-batch size, so numbers of different runs compare.

How: the rows are cut into W contiguous parts, one per rank, and each rank into micro-batches; every
target's cross-entropy is computed in the model's precision, then summed in float64 together with the
counts, the sums are all-reduced, and the means are taken once at the end. In fp32 the result is the
same for any rank count and micro-batch size up to the last bits of the matrix products (≈ 1e-7
relative); under bf16 autocast (the default on CUDA during training) to about 1e-3.

Several datasets (a blend, spanbert_train.blend) are evaluated one by one, each exactly as alone; `blend_results`
adds their weighted mean (the blend's weights, renormalised over the datasets that have held-out rows).

MLM accuracy is also reported by the length of the *merged span* a target belongs to, in words
(1, 2, …, 9, ≥ 10): a merged span is a maximal run of adjacent MLM targets (SPEC §2), and its words are
the word starts among its original tokens, plus one when it begins inside a word. Word starts are the
build's (spanbert_data/words.py): the shards' `mlm_word_starts` column, or for WordPiece the table of the
dataset's tokenizer.json (a token starts a word unless it carries the continuation prefix).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model
from tokenizers import Tokenizer

from spanbert_data.location import is_url
from spanbert_data.packing import WORD_STARTS
from spanbert_data.words import CONTINUATION, target_word_starts, word_start_table
from spanbert_train.config import ConfigError, dataset_paths
from spanbert_train.data import Dataset, open_blend, to_batch
from spanbert_train.dist import setup_distributed, shutdown_distributed
from spanbert_train.errors import ExportError
from spanbert_train.export import checkpoint_model_config, resolve_checkpoint
from spanbert_train.model import SpanBertForPreTraining
from spanbert_train.shard import RowSource
from spanbert_train.weights import parse_weights

EVAL_SEED = 20200724  # fixed, so every run on a dataset evaluates the same rows (the paper's TACL date)
SPAN_WORD_BUCKETS = 10  # merged spans of 1, 2, ..., 9 and >= 10 words
SPLITS = ("valid", "train")
_TARGET_CHUNK = 4096  # targets whose logits are materialised at once (bounds memory: chunk × vocab floats)


def eval_rows(n_rows: int, max_rows: int = 0) -> np.ndarray:
    """The rows to evaluate, ascending: all of them, or the first `max_rows` of a fixed-seed permutation.

    The subset depends only on (n_rows, max_rows): never on the run, the ranks or the batch size.
    """
    if max_rows < 0:
        raise ConfigError(f"max_rows must be >= 0 (got {max_rows})")
    if max_rows == 0 or max_rows >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    chosen = np.random.default_rng([EVAL_SEED, n_rows]).permutation(n_rows)[:max_rows]
    return np.sort(chosen).astype(np.int64)  # ascending: shard-local reads; sums do not depend on order


def bucket_label(i: int) -> str:
    return str(i + 1) if i + 1 < SPAN_WORD_BUCKETS else f">={SPAN_WORD_BUCKETS}"


def dataset_word_starts(dataset: Dataset) -> np.ndarray:
    """bool[vocab]: which ids start a word by the WordPiece rule (SPEC §2), from the tokenizer.json copied beside the
    manifest. Only used for shards without `mlm_word_starts` (WordPiece's: every other family stores them)."""
    name = dataset.manifest["tokenizer"].get("file", "tokenizer.json")
    try:
        text = dataset.root.read_bytes(name)
        if text is None:
            raise ValueError("not found")
        tok = Tokenizer.from_str(text.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception
        raise ConfigError(f"{dataset.root / name}: cannot read the dataset's tokenizer ({e}); "
                          "run `spanbert-data verify`") from None
    prefix = getattr(tok.model, "continuing_subword_prefix", None) or CONTINUATION
    return word_start_table(tok.get_vocab(with_added_tokens=True), prefix, size=dataset.vocab_size)


def unigram_entropy(manifest: dict | list[dict], weights: list | None = None) -> float | None:
    """Entropy (nats) of the dataset's token distribution: the loss of a model that ignores the context. For a blend
    (a list of manifests and their weights): of the mixture of the datasets' distributions in those proportions."""
    manifests, weights = ([manifest], [1]) if isinstance(manifest, dict) else (manifest, weights)
    mixture = None
    for m, w in zip(manifests, weights, strict=True):
        counts = np.asarray(m.get("unigram_counts") or [], dtype=np.float64)
        if w and counts.sum() <= 0:
            return None
        if w:
            part = counts / counts.sum() * (w / sum(weights))
            mixture = part if mixture is None else mixture + part
    p = mixture[mixture > 0]
    return float(-(p * np.log(p)).sum())


def heldout_unigram_cross_entropy(dataset: Dataset) -> float | None:
    """Cross-entropy (nats) of the held-out MLM targets under the corpus's unigram distribution (add-½ smoothed):
    what a model that ignores the context scores on exactly these targets (None without a held-out split)."""
    source = RowSource(dataset.valid)
    if len(source) == 0:
        return None
    counts = np.asarray(dataset.manifest["unigram_counts"], dtype=np.float64)
    smoothed = (counts + 0.5) / (counts + 0.5).sum()
    labels = source.gather(np.arange(len(source)))["mlm_labels"][1].astype(np.int64)
    return float(-np.log(smoothed[labels]).mean()) if len(labels) else None


def span_words(offsets: np.ndarray, positions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per MLM target, the number of words its merged span touches (runs of adjacent slots within a row); `starts`:
    per target, does its original token start a word (words.target_word_starts)."""
    pos = positions.astype(np.int64)
    if pos.size == 0:
        return np.zeros(0, dtype=np.int64)
    row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    new_run = np.ones(pos.size, dtype=bool)
    new_run[1:] = (pos[1:] != pos[:-1] + 1) | (row[1:] != row[:-1])
    run = np.cumsum(new_run) - 1
    starts = np.asarray(starts, dtype=bool)
    words = np.bincount(run, weights=starts).astype(np.int64) + ~starts[new_run]  # + 1 when it begins mid-word
    return words[run]


@dataclass
class Sums:
    """float64 sums of one evaluation; `vector()` / `from_vector()` carry them through one all-reduce."""

    values: np.ndarray  # [rows, mlm_loss, mlm_n, mlm_ok, sbo_loss, sbo_n, sbo_ok, n_by_words..., ok_by_words...]

    @classmethod
    def zeros(cls) -> Sums:
        return cls(np.zeros(7 + 2 * SPAN_WORD_BUCKETS, dtype=np.float64))

    def result(self) -> dict:
        v = self.values
        rows, mlm_loss, mlm_n, mlm_ok, sbo_loss, sbo_n, sbo_ok = v[:7]
        n_words, ok_words = v[7 : 7 + SPAN_WORD_BUCKETS], v[7 + SPAN_WORD_BUCKETS :]
        out = {
            "loss_mlm": mlm_loss / mlm_n if mlm_n else float("nan"),
            "loss_sbo": sbo_loss / sbo_n if sbo_n else float("nan"),
            "acc_mlm": mlm_ok / mlm_n if mlm_n else float("nan"),
            "acc_sbo": sbo_ok / sbo_n if sbo_n else float("nan"),
            "rows": int(rows), "targets": int(mlm_n), "sbo_targets": int(sbo_n),
            "acc_mlm_by_span_words": {bucket_label(i): (ok_words[i] / n_words[i] if n_words[i] else None)
                                      for i in range(SPAN_WORD_BUCKETS)},
            "targets_by_span_words": {bucket_label(i): int(n_words[i]) for i in range(SPAN_WORD_BUCKETS)},
        }  # fmt: skip
        return out


MEAN_KEYS = ("loss_mlm", "loss_sbo", "acc_mlm", "acc_sbo")


def blend_results(results: dict[str, dict], weights: dict[str, float]) -> dict:
    """The evaluation of a blend from each dataset's (`results`: name -> evaluate_model's dict): losses and accuracies
    averaged with the blend's `weights`, renormalised over the datasets that have a value (NaN when none of weight
    > 0 has); rows and target counts summed; MLM accuracy by span length averaged likewise per length. Each
    dataset's own figures stay under `datasets`."""

    def mean(values) -> float | None:
        pairs = [(weights[n], v) for n, v in values if v is not None and not np.isnan(v) and weights[n] > 0]
        total = sum(w for w, _ in pairs)
        return sum(w * v for w, v in pairs) / total if total else None

    out = {key: mean((n, r[key]) for n, r in results.items()) for key in MEAN_KEYS}
    out = {key: float("nan") if v is None else v for key, v in out.items()}
    for key in ("rows", "targets", "sbo_targets"):
        out[key] = sum(r[key] for r in results.values())
    out["acc_mlm_by_span_words"] = {b: mean((n, r["acc_mlm_by_span_words"][b]) for n, r in results.items())
                                    for b in map(bucket_label, range(SPAN_WORD_BUCKETS))}  # fmt: skip
    out["targets_by_span_words"] = {b: sum(r["targets_by_span_words"][b] for r in results.values())
                                    for b in map(bucket_label, range(SPAN_WORD_BUCKETS))}  # fmt: skip
    out["weights"] = {n: weights[n] for n in results}
    out["datasets"] = results
    return out


def _target_stats(logits_fn, n: int, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target cross-entropy (fp32) and correctness, computing logits `_TARGET_CHUNK` targets at a time."""
    losses, correct = [], []
    for lo in range(0, n, _TARGET_CHUNK):
        logits = logits_fn(slice(lo, min(lo + _TARGET_CHUNK, n))).float()
        lab = labels[lo : lo + _TARGET_CHUNK]
        losses.append(F.cross_entropy(logits, lab, reduction="none"))
        correct.append(logits.argmax(dim=-1) == lab)
    if not losses:
        empty = torch.zeros(0, device=labels.device)
        return empty, empty.bool()
    return torch.cat(losses), torch.cat(correct)


def _batch_stats(model, batch):
    """Per-target CE and correctness of both objectives for one micro-batch (one encoder pass)."""
    hidden = model.encode(batch).flatten(0, 1)  # (B*T, H)
    embedding = model.bert.embeddings.word_embeddings.weight
    mlm_loss, mlm_ok = _target_stats(lambda s: model.cls.predictions.logits(hidden, batch.mlm_index[s]),
                                     batch.mlm_index.numel(), batch.mlm_labels)  # fmt: skip
    sbo_loss, sbo_ok = _target_stats(
        lambda s: model.cls.sbo.logits(hidden, batch.sbo_left[s], batch.sbo_right[s], batch.sbo_offsets[s], embedding),
        batch.sbo_index.numel(),
        batch.sbo_labels,
    )
    return mlm_loss, mlm_ok, sbo_loss, sbo_ok


@torch.no_grad()
def evaluate_model(model, dataset: Dataset, *, split: str = "valid", max_rows: int = 0, micro_batch: int = 8,
                   rank: int = 0, world: int = 1, device: torch.device | None = None,
                   autocast=None, word_start: np.ndarray | None = None) -> dict | None:  # fmt: skip
    """Evaluate `model` (a SpanBertForPreTraining, not DDP-wrapped) on `split`; every rank must call it.

    Returns the result dict (`loss_mlm, loss_sbo, acc_mlm, acc_sbo, rows, targets, acc_mlm_by_span_words`,
    ...) on every rank, or None when the split has no rows. `autocast` is a context-manager factory
    (None: plain fp32).
    """
    sums = evaluation_sums(model, dataset, split=split, max_rows=max_rows, micro_batch=micro_batch, rank=rank,
                           world=world, device=device, autocast=autocast, word_start=word_start)  # fmt: skip
    if sums is None:
        return None
    if world > 1:
        t = torch.from_numpy(sums.values).to(device or next(model.parameters()).device)
        dist.all_reduce(t)  # float64 sums: the reduction order changes nothing visible
        sums = Sums(t.cpu().numpy())
    return sums.result()


@torch.no_grad()
def evaluation_sums(model, dataset: Dataset, *, split: str = "valid", max_rows: int = 0, micro_batch: int = 8,
                    rank: int = 0, world: int = 1, device: torch.device | None = None,
                    autocast=None, word_start: np.ndarray | None = None) -> Sums | None:  # fmt: skip
    """This rank's float64 sums (its contiguous part of the evaluated rows); no collective."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    if micro_batch <= 0:
        raise ConfigError(f"micro_batch must be > 0 (got {micro_batch})")
    shards = dataset.valid if split == "valid" else dataset.epochs[0]
    source = RowSource(shards) if shards else None
    if source is None or len(source) == 0:
        return None
    device = device or next(model.parameters()).device
    if word_start is None and WORD_STARTS[0] not in shards[0].columns:  # else the shards carry them
        word_start = dataset_word_starts(dataset)
    rows = eval_rows(len(source), max_rows)
    mine = rows[rank * len(rows) // world : (rank + 1) * len(rows) // world]
    was_training = model.training
    model.eval()
    sums = Sums.zeros()
    try:
        for lo in range(0, len(mine), micro_batch):
            cols = source.gather(mine[lo : lo + micro_batch])
            words = span_words(*cols["mlm_positions"], target_word_starts(cols, word_start))
            batch = to_batch(cols).to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                mlm_loss, mlm_ok, sbo_loss, sbo_ok = _batch_stats(model, batch)
            ok = mlm_ok.cpu().numpy()
            bucket = np.minimum(words, SPAN_WORD_BUCKETS) - 1
            v = sums.values
            v[:7] += [len(cols["input_ids"]), mlm_loss.double().sum().item(), ok.size, ok.sum(),
                      sbo_loss.double().sum().item(), sbo_ok.numel(), sbo_ok.sum().item()]  # fmt: skip
            v[7 : 7 + SPAN_WORD_BUCKETS] += np.bincount(bucket, minlength=SPAN_WORD_BUCKETS)
            v[7 + SPAN_WORD_BUCKETS :] += np.bincount(bucket, weights=ok, minlength=SPAN_WORD_BUCKETS)
    finally:
        model.train(was_training)
    return sums


# ------------------------------------------------------------------------------------------- the command
def evaluate_checkpoint(source: str | Path, data: str | Path | list | None = None, split: str = "valid",
                        max_rows: int = 0, micro_batch: int = 8, precision: str = "fp32",
                        weights: list | None = None) -> dict:  # fmt: skip
    """`spanbert-train evaluate`: load a checkpoint (or a run's latest good one) and evaluate it on `data`: one dataset,
    or several with `weights` (as --data-weights; default equal), by default the run's own datasets and weights.

    Several datasets: each one's figures under `datasets` and their weighted mean (blend_results) at the top.
    Runs on one process or under torchrun (each rank takes its part; rank 0 gets the same dict as all).
    """
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be fp32 or bf16 (got {precision!r})")
    try:
        ckpt, meta = resolve_checkpoint(source)
    except ExportError as e:
        raise ConfigError(str(e)) from None
    if data:
        paths = [str(data)] if isinstance(data, str | Path) else [str(p) for p in data]
    else:
        paths = dataset_paths(meta.get("config"))
        weights = ((meta.get("config") or {}).get("data") or {}).get("weights") if weights is None else weights
    for where in paths:
        if not is_url(where) and not (Path(where) / "manifest.json").is_file():
            raise ConfigError(f"{where}: no dataset there (no manifest.json); pass --data DATASET_DIR")
    if not paths:
        raise ConfigError(f"{ckpt}: its configuration names no dataset; pass --data DATASET_DIR")
    # object storage: the shards go through the default local cache (spanbert_train.remote_data)
    blend = open_blend(paths, weights or [], for_training=False)
    trained_with = meta.get("tokenizer_sha256")
    if trained_with and trained_with != blend.datasets[0].manifest["tokenizer"].get("sha256"):
        blend.close()
        raise ConfigError(f"{paths[0]}: built with another tokenizer than the run's; evaluate on data of the same one")
    d = setup_distributed()
    results = {}
    try:
        try:
            model = SpanBertForPreTraining(checkpoint_model_config(meta, blend.datasets[0].vocab_size),
                                           kernels="reference")  # fmt: skip
        except ExportError as e:
            raise ConfigError(f"{ckpt}: {e}") from None
        try:
            load_model(model, str(ckpt / "model.safetensors"), strict=True)
        except (SafetensorError, RuntimeError) as e:
            raise ConfigError(f"{ckpt / 'model.safetensors'}: cannot be loaded into the checkpoint's model "
                              f"({e})") from None  # fmt: skip
        model.to(d.device)
        autocast = None
        if precision == "bf16":
            autocast = lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)  # noqa: E731
        for name, dataset in zip(blend.names, blend.datasets, strict=True):
            result = evaluate_model(model, dataset, split=split, max_rows=max_rows, micro_batch=micro_batch,
                                    rank=d.rank, world=d.world, device=d.device, autocast=autocast)  # fmt: skip
            if result is not None:
                results[name] = result
    finally:
        blend.close()
        shutdown_distributed()
    if not results:
        raise ConfigError(f"{', '.join(paths)}: the {split} split has no rows (build with --valid-fraction > 0)")
    head = {"checkpoint": str(ckpt), "step": meta.get("step"), "split": split, "max_rows": max_rows,
            "precision": precision, "world_size": d.world}  # fmt: skip
    if len(paths) == 1:
        return {**head, "data": paths[0], **results[paths[0]]}
    return {**head, "data": paths, **blend_results(results, dict(zip(blend.names, blend.weights, strict=True)))}


@click.command("evaluate")
@click.argument("source", metavar="RUN_OR_CHECKPOINT", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    multiple=True,
    help="A dataset to evaluate on (directory or URL); repeat it for several [the run's own training datasets].",
)
@click.option(
    "--data-weights",
    default=None,
    metavar="W1,W2,…",
    callback=parse_weights,
    help="Weights of the --data datasets in the mean, e.g. 3,1 [the run's weights for its own datasets, else equal].",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="valid",
    show_default=True,
    help="valid: the held-out documents; train: the rows of mask epoch 0.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Evaluate a fixed, uniformly drawn subset of this many rows (0 = the whole split).",
)
@click.option(
    "--micro-batch",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Rows per forward pass (does not change the result).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="fp32 gives the same numbers for any rank count and micro-batch; bf16 autocast is faster on GPUs.",
)
def evaluate_command(source, data, data_weights, split, max_rows, micro_batch, precision) -> None:
    """Evaluate RUN_OR_CHECKPOINT (a run's latest good checkpoint, or one checkpoint) on held-out rows.

    Prints one JSON object: loss_mlm, loss_sbo (nats), acc_mlm, acc_sbo, rows, targets, and
    acc_mlm_by_span_words (MLM accuracy by the merged span's length in words). Several datasets (a blend): each
    one's figures under "datasets" and their weighted mean at the top. Runs under torchrun too.
    """
    result = evaluate_checkpoint(source, list(data) or None, split, max_rows, micro_batch, precision, data_weights)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(result))
