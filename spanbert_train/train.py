"""The training loop: one Trainer with small named steps (setup → resume → train_step / evaluate / save).

The same code runs on CPU, one GPU, or under torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the
environment; nccl on CUDA, gloo on CPU). Loss (SPEC §4): per objective, the CE SUMS of every
micro-batch divided by the target counts of the whole GLOBAL batch, which the loader knows from the
data before the forward pass — so the gradient does not depend on how the batch is split over ranks
and accumulation steps. Optimisation: SPEC §5 (spanbert_train.optim).
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from spanbert_train.checkpoint import (
    latest_good,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from spanbert_train.config import TrainConfig, dataset_paths
from spanbert_train.data import Dataset, TrainLoader, check_batch_geometry, open_blend
from spanbert_train.dist import raise_on_every_rank, setup_distributed, shutdown_distributed
from spanbert_train.errors import CheckpointError, ConfigError, TrainingError
from spanbert_train.evaluate import blend_results, dataset_word_starts, evaluate_model, unigram_entropy
from spanbert_train.export import load_hf_weights, model_config_from_hf
from spanbert_train.metrics import MetricsLogger
from spanbert_train.model import ModelConfig, SpanBertForPreTraining
from spanbert_train.optim import build_optimizer, build_scheduler, warmup_steps
from spanbert_train.remote_data import Storage


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_kernels(kernels: str, device: torch.device) -> str:
    """'auto' → the Triton kernels on CUDA, the plain-PyTorch references elsewhere (DESIGN §9)."""
    if kernels == "auto":
        return "triton" if device.type == "cuda" else "reference"
    return kernels


def model_config(cfg: TrainConfig, dataset: Dataset) -> ModelConfig:
    """The preset plus overrides, with the vocabulary of the dataset; mismatches are user errors."""
    overrides = dict(cfg.model.overrides)
    vocab = overrides.pop("vocab_size", None)
    if vocab is not None and vocab != dataset.vocab_size:
        raise ConfigError(
            f"model.vocab_size ({vocab}) is incompatible with the dataset's vocabulary of {dataset.vocab_size} "
            f"({dataset.root / 'manifest.json'}); drop the override or use a matching dataset"
        )
    try:
        if cfg.model.init_from:  # the checkpoint's architecture, not the preset's (issue 6)
            mc = model_config_from_hf(cfg.model.init_from, **overrides)
            if mc.vocab_size != dataset.vocab_size:
                raise ConfigError(
                    f"{cfg.model.init_from}: vocab_size {mc.vocab_size} does not match the dataset's "
                    f"{dataset.vocab_size} ({dataset.root / 'manifest.json'}); build the data with that tokenizer"
                )
        else:
            pad = {"pad_token_id": dataset.special_ids["pad"]}  # the dataset's PAD (HF config.json; 0 for BERT's)
            mc = ModelConfig.from_preset(cfg.model.preset, **{**pad, **overrides}).with_vocab(dataset.vocab_size)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if mc.max_position_embeddings < dataset.max_seq_len:
        raise ConfigError(
            f"model.max_position_embeddings ({mc.max_position_embeddings}) is shorter than the dataset's rows "
            f"({dataset.max_seq_len} slots)"
        )
    return mc


class Trainer:
    """Owns the model, optimiser, loader and logger of one run; `run()` trains to max_steps or SIGTERM."""

    def __init__(self, cfg: TrainConfig, on_step: Callable[[Trainer, dict], None] | None = None):
        self.cfg = cfg.validate()
        self.on_step = on_step  # called on every rank after every step (tests use it to stop a run)
        self.dist = setup_distributed()
        self.device = self.dist.device
        self.out = Path(cfg.out)
        self.stop_requested = False  # agreed by all ranks (through train_step's all-reduce)
        self._stop_local = False  # set by SIGTERM or request_stop() on this rank
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.skipped_nonfinite = 0
        self.last_saved: Path | None = None
        self.bad_data_votes = 0.0  # ranks whose data for the next step failed its checks (from train_step)
        self._word_start = None  # the dataset's word-start table, read at the first evaluation
        self._setup()

    # ------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg, d = self.cfg, self.dist
        # One dataset or a blend (spanbert_train.blend); URLs go through one local cache (spanbert_train.remote_data).
        self.blend = open_blend(cfg.data.path, cfg.data.weights, cfg.data.verify, Storage.from_config(cfg.data))
        self.dataset = self.blend.datasets[0]  # tokenizer, vocabulary and row length: the same for all of them
        check_batch_geometry(self.blend, cfg.data.global_batch_size, cfg.data.micro_batch, d.world)
        self.model_cfg = model_config(cfg, self.dataset)
        self.kernels = resolve_kernels(cfg.kernels, self.device)
        seed_everything(cfg.seed)  # identical initial weights on every rank
        try:
            self.model = SpanBertForPreTraining(self.model_cfg, kernels=self.kernels).to(self.device)
        except ValueError as e:
            raise ConfigError(f"kernels: {e}") from None
        if cfg.model.init_from:  # a resumed run overwrites these weights from its checkpoint below
            try:
                self.say(str(load_hf_weights(self.model, cfg.model.init_from, self.dataset.vocab_size)))
            except ValueError as e:
                raise ConfigError(str(e)) from None
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.warmup = warmup_steps(cfg.optim, cfg.max_steps)
        self.scheduler = build_scheduler(self.optimizer, self.warmup, cfg.max_steps)
        start = self._resume_or_start()
        self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if d.world > 1 else None
        self.loader = TrainLoader(
            self.blend, cfg.data.global_batch_size, cfg.data.micro_batch, d.rank, d.world, cfg.seed,
            start=start, prefetch=cfg.data.prefetch, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        self.rows_by_dataset = self._rows_by_dataset(self.loader.order.consumed(self.loader.position))
        self.accum = cfg.data.global_batch_size // (cfg.data.micro_batch * d.world)
        self.logger = MetricsLogger(self.out, cfg.max_steps, self.step, cfg.tensorboard) if d.main else None
        self._announce()

    def _resume_or_start(self) -> int | tuple[int, int]:
        """Restore the latest good checkpoint when --resume; return the loader position to start from (the global
        batch, or (epoch, batch) of a single dataset from a checkpoint of before blends)."""
        found = latest_good(self.out, warn=self.say) if self.cfg.resume else None
        if found is None:
            if not self.cfg.resume and list_checkpoints(self.out):
                raise ConfigError(f"{self.out} already holds checkpoints; pass --resume or choose a new --out")
            seed_everything(self.cfg.seed + self.dist.rank)  # distinct dropout per rank
            return 0
        path, meta = found
        if meta["model_config"] != self.model_cfg.to_dict():
            raise ConfigError(f"{path}: checkpoint was trained with another model config; resume with the same one")
        trained_with, now = meta.get("tokenizer_sha256"), self.dataset.manifest["tokenizer"].get("sha256")
        if trained_with and now and trained_with != now:  # same vocab size is not enough: ids must mean the same
            raise ConfigError(
                f"{path}: checkpoint was trained on data of another tokenizer than {self.dataset.root}'s; "
                "resume with the run's dataset"
            )
        saved = meta.get("datasets") or [{"path": p, "weight": 1} for p in dataset_paths(meta.get("config"))[:1]]
        self.blend.check_resume(saved, path)
        saved_gbs = meta["loader"]["global_batch_size"]
        if saved_gbs != self.cfg.data.global_batch_size:
            raise ConfigError(
                f"data.global_batch_size ({self.cfg.data.global_batch_size}) differs from the checkpoint's "
                f"({saved_gbs}, {path}); resume with the same global batch size"
            )
        try:
            load_checkpoint(path, meta, self.model, self.optimizer, self.scheduler)
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
        self.step = int(meta["step"])
        self.skipped_nonfinite = int(meta.get("skipped_nonfinite", 0))
        if len(meta["rng"]) == self.dist.world:
            set_rng_state(meta["rng"][self.dist.rank])
        else:  # another rank count: the data order is unchanged, dropout streams are fresh
            seed_everything(self.cfg.seed + 7919 * self.step + self.dist.rank)
        self.last_saved = path
        loader = meta["loader"]
        where = f"epoch {loader['epoch']}, batch {loader['batch']}" if "epoch" in loader else ", ".join(
            f"{d['path']}: epoch {d.get('epoch', 0)}, row {d.get('row', 0)}" for d in loader["datasets"])
        self.say(f"resumed from {path} (step {self.step}, {where})")
        return int(loader["global_batch"]) if "global_batch" in loader else (int(loader["epoch"]), int(loader["batch"]))

    def _rows_by_dataset(self, counts) -> dict[str, int]:
        return {name: int(c) for name, c in zip(self.blend.names, counts, strict=True)}

    def _announce(self) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        entropy = unigram_entropy([ds.manifest for ds in self.blend.datasets], self.blend.weights)
        resolved = self.cfg.to_dict() | {"resolved_model": self.model_cfg.to_dict(),
                                         "dataset_unigram_entropy": entropy}  # fmt: skip
        (self.out / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        self.say("config: " + json.dumps(resolved))
        tokens = self.cfg.data.global_batch_size * self.dataset.max_seq_len
        gbs, micro, world = self.cfg.data.global_batch_size, self.cfg.data.micro_batch, self.dist.world
        self.say(
            f"device {self.device} × {world} rank(s) | kernels {self.kernels} | "
            f"{self.model.num_parameters() / 1e6:.1f}M parameters | global batch {gbs} rows ({tokens} slots) = "
            f"{world} rank(s) × {self.accum} accumulation × {micro} | warm-up {self.warmup}/{self.cfg.max_steps} steps"
        )
        if len(self.blend.datasets) > 1:
            self.say(self.blend.summary(gbs))

    def say(self, text: str) -> None:
        if self.dist.main:
            if getattr(self, "logger", None) is not None:
                self.logger.info(text)
            else:
                print(text, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------- steps
    def autocast(self):
        """bf16 autocast on CUDA (SPEC §5, the modern fp16 equivalent); plain fp32 on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.dist.world > 1:
            dist.all_reduce(t)
        return t

    def train_step(self, data) -> dict:
        """Forward/backward every micro-batch, all-reduce the statistics, clip, step. Returns the metrics row."""
        self.model.train()
        net = self.ddp or self.model
        stats = torch.zeros(6, device=self.device)
        last = len(data.micro_batches) - 1
        for i, batch in enumerate(data.micro_batches):
            batch = batch.to(self.device, non_blocking=True)
            # DDP all-reduces gradients only on the last micro-batch (no_sync on the others).
            sync = contextlib.nullcontext() if (self.ddp is None or i == last) else self.ddp.no_sync()
            with sync:
                with self.autocast():
                    parts = net(batch)
                loss = parts.objective(data.mlm_targets, data.sbo_targets, self.cfg.sbo_weight)
                # DDP AVERAGES gradients over ranks; the SPEC §4 loss is their SUM, hence × world.
                (loss * self.dist.world).backward()
            stats += parts.detached()
        votes = torch.tensor([float(self._stop_local), float(self._next_data_bad())], device=self.device)
        # One collective: statistics + "someone got SIGTERM" + "someone's next batch is bad" (bad data stops all).
        stats = self.all_reduce(torch.cat([stats, votes]))
        clip = self.cfg.optim.clip_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        values = stats.tolist()  # the step's single host sync
        mlm_sum, mlm_n, mlm_ok, sbo_sum, sbo_n, sbo_ok, stop_votes, self.bad_data_votes = values
        grad_norm = float(grad_norm)
        loss_mlm, loss_sbo = mlm_sum / max(mlm_n, 1), sbo_sum / max(sbo_n, 1)
        lr = self.scheduler.get_last_lr()[0]
        finite = np.isfinite(loss_mlm + loss_sbo) and np.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
        else:  # skip the update; the data and the schedule still move on
            self.skipped_nonfinite += 1
            self.nonfinite_in_a_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.stop_requested = stop_votes > 0
        return {
            "step": self.step + 1, "epoch": data.epoch, "loss": loss_mlm + self.cfg.sbo_weight * loss_sbo,
            "loss_mlm": loss_mlm, "loss_sbo": loss_sbo,
            "acc_mlm": mlm_ok / max(mlm_n, 1), "acc_sbo": sbo_ok / max(sbo_n, 1),
            "lr": lr, "grad_norm": grad_norm, "tokens": data.tokens,
            "skipped_nonfinite": self.skipped_nonfinite, "finite": bool(finite),
            "rows_by_dataset": self._rows_by_dataset(data.rows_by_dataset),
        }  # fmt: skip

    def evaluate(self) -> dict | None:
        """Held-out losses and accuracies (spanbert_train.evaluate): the same `eval_rows` rows of each dataset for any
        launch; a blend's row holds the weighted mean and each dataset's figures (`datasets`)."""
        results = {}
        for name, dataset in zip(self.blend.names, self.blend.datasets, strict=True):
            if not dataset.valid:
                continue
            if self._word_start is None:  # one tokenizer for all the datasets
                self._word_start = dataset_word_starts(dataset)
            result = evaluate_model(
                self.model, dataset, split="valid", max_rows=self.cfg.eval_rows,
                micro_batch=self.cfg.data.micro_batch, rank=self.dist.rank, world=self.dist.world, device=self.device,
                autocast=self.autocast if self.device.type == "cuda" else None, word_start=self._word_start,
            )  # fmt: skip
            if result is not None and result["targets"] > 0:
                results[name] = {"loss": self._loss(result), **result}
        if not results:
            return None
        if len(self.blend.datasets) == 1:
            result = next(iter(results.values()))
        else:
            result = blend_results(results, dict(zip(self.blend.names, self.blend.weights, strict=True)))
            result = {"loss": self._loss(result), **result}
        return {"step": self.step, "split": "valid", **result, "rows_by_dataset": self.rows_by_dataset}

    def _loss(self, result: dict) -> float:
        return result["loss_mlm"] + (self.cfg.sbo_weight * result["loss_sbo"] if result["sbo_targets"] else 0.0)

    def save(self) -> None:
        """Checkpoint the current step on rank 0 with every rank's RNG state; all ranks wait for it."""
        states = [rng_state()]
        if self.dist.world > 1:
            states = [None] * self.dist.world
            dist.all_gather_object(states, rng_state())
        if self.dist.main:
            meta = {
                "config": self.cfg.to_dict(), "model_config": self.model_cfg.to_dict(),
                "loader": self.loader.state_dict(), "world_size": self.dist.world,
                "skipped_nonfinite": self.skipped_nonfinite,
                "tokenizer_sha256": self.dataset.manifest["tokenizer"].get("sha256"),
                "datasets": self.blend.describe(),
            }  # fmt: skip
            self.last_saved = save_checkpoint(self.out, self.step, self.model, self.optimizer, self.scheduler,
                                              meta, states, self.cfg.keep_last)  # fmt: skip
            self.say(f"saved {self.last_saved}")
        if self.dist.world > 1:
            dist.barrier()

    # -------------------------------------------------------------------------------------- loop
    def run(self) -> list[dict]:
        """Train until max_steps (or SIGTERM: finish the step, save, return). Returns the metric rows logged."""
        cfg, rows, saved_at = self.cfg, [], self.step if self.last_saved else None
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        tic = time.perf_counter()
        try:
            if self.step < cfg.max_steps:  # the first step's data: one extra all-reduce, once per run
                flag = torch.tensor([float(self.loader.peek_error() is not None)], device=self.device)
                self._stop_on_bad_data(float(self.all_reduce(flag).item()))
            for data in self.loader if self.step < cfg.max_steps else ():  # a finished run reads no data
                if self.step >= cfg.max_steps:
                    break
                row = self.train_step(data)
                self.rows_by_dataset = row["rows_by_dataset"]
                if not self.stop_requested:  # on SIGTERM the step is saved first; a resumed run meets the data
                    self._stop_on_bad_data(self.bad_data_votes)
                self.step += 1
                toc = time.perf_counter()
                row["tokens_per_s"], tic = row.pop("tokens") / max(toc - tic, 1e-9), toc
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps or self.stop_requested \
                        or not row["finite"]:
                    rows.append(row)
                    if self.logger:
                        self.logger.log(row)
                self._check_nonfinite()
                if self.logger:
                    self.logger.advance(self.step)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._log_eval(rows)
                if (cfg.save_every and self.step % cfg.save_every == 0) or self.stop_requested:
                    self.save()
                    saved_at = self.step
                if self.on_step:
                    self.on_step(self, row)
                if self.stop_requested:
                    self.say(f"stopped at step {self.step} on request (SIGTERM); resume with --resume")
                    return rows
                if self.step >= cfg.max_steps:
                    break
            if not (cfg.eval_every and self.step % cfg.eval_every == 0):
                self._log_eval(rows)
            if saved_at != self.step:
                self.save()
            return rows
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _log_eval(self, rows: list[dict]) -> None:
        row = self.evaluate()
        if row is not None:
            rows.append(row)
            if self.logger:
                self.logger.log(row)

    def _check_nonfinite(self) -> None:
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite:
            where = self.last_saved or "none (no checkpoint was written yet)"
            raise TrainingError(
                f"step {self.step}: loss or gradient non-finite for {self.nonfinite_in_a_row} steps in a row "
                f"(max_nonfinite); last good checkpoint: {where}; lower --lr or check the data"
            )

    # ------------------------------------------------------------------------------- bad data (issue 16)
    def _next_data_bad(self) -> bool:
        """Whether this rank's data for the NEXT step failed its checks (waits for the prefetched step)."""
        return self.step + 1 < self.cfg.max_steps and self.loader.peek_error() is not None

    def _stop_on_bad_data(self, votes: float) -> None:
        """When any rank voted that its next data is bad, all ranks raise now, together; nothing is saved."""
        if votes:
            raise_on_every_rank(self.loader.peek_error(), self.dist.world)

    def request_stop(self) -> None:
        """Ask for a clean stop: the step in flight (or the next one) finishes, a checkpoint is saved, run() returns.

        Every rank learns of it through train_step's all-reduce, so all ranks stop after the same step."""
        self._stop_local = True

    def _on_sigterm(self, signum, frame) -> None:
        self.request_stop()

    def close(self) -> None:
        """Stop the loader's threads and let go of DDP, which holds the process group (see spanbert_train.dist)."""
        self.ddp = None
        self.loader.close()
        self.blend.close()
        if self.logger:
            self.logger.close()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def train(cfg: TrainConfig, on_step: Callable[[Trainer, dict], None] | None = None) -> list[dict]:
    """Train one run as configured; returns the metric rows (training and validation) of this process.

    However it ends, the loader's threads are stopped and the process group is freed before this returns or raises
    (spanbert_train.dist). On an error every rank raises together (spanbert_train.agree), and torchrun SIGTERMs the
    ranks still running as soon as one has exited: SIGTERM is ignored while this rank cleans up after the same
    error, so that it too gets to print its one line and exit with its own status."""
    trainer, previous = None, None
    try:
        trainer = Trainer(cfg, on_step)
        return trainer.run()
    except BaseException:
        if _main_thread():
            previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
    finally:
        if trainer is not None:
            trainer.close()
        shutdown_distributed()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
