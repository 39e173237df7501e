"""Fine-tune an exported model for extractive QA on SQuAD and report EM/F1: a probe of the pre-trained encoder.

`spanbert-train finetune-qa --model DIR --train TRAIN.json --dev DEV.json --out RUN` loads OUR encoder
from a Hugging Face BERT directory (one written by `spanbert-train export`, or any BERT checkpoint with a
WordPiece tokenizer), puts BERT's start/end span head on it, fine-tunes on the training windows and writes
RUN/predictions.json (question id -> answer text) and RUN/metrics.json (EM/F1 and the settings).

Runs on CPU, on one GPU, or under `torchrun` (DDP: every rank trains on its share of each batch; the
evaluation runs on rank 0 only). Defaults follow BERT's SQuAD recipe: lr 3e-5, 2 epochs, batch 32,
windows of 384 tokens with stride 128, linear warm-up over 10% of the steps then linear decay.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from spanbert_train.attention import build_layout, compute_dtype
from spanbert_train.dist import setup_distributed, shutdown_distributed
from spanbert_train.export import ExportError, load_hf_weights, model_config_from_hf
from spanbert_train.model import BertModel, SpanBertForPreTraining
from spanbert_train.qa.squad import (
    Features,
    WindowConfig,
    load_squad,
    make_features,
    plain_tokenizer,
    predict_answers,
    squad_metrics,
)


@dataclass
class QAConfig:
    """Fine-tuning options; defaults are BERT's SQuAD recipe."""

    epochs: float = 2.0  # passes over the training windows (fractions allowed)
    lr: float = 3e-5  # peak learning rate of AdamW
    batch_size: int = 32  # training windows per optimizer step, over all ranks
    max_seq_len: int = 384  # window length in tokens
    doc_stride: int = 128  # step between context windows, in tokens
    max_query_len: int = 64  # questions are cut to this many tokens
    max_answer_len: int = 30  # longest answer span considered at prediction, in tokens
    n_best: int = 20  # start/end candidates per window at prediction
    version_2: bool = False  # SQuAD 2.0: questions may have no answer
    null_threshold: float = 0.0  # predict "" when null score - best span score exceeds this (v2)
    warmup_fraction: float = 0.1  # share of the steps spent warming up linearly
    weight_decay: float = 0.01  # decoupled, not on biases and LayerNorm weights
    dropout: float | None = None  # hidden and attention dropout during fine-tuning; None = the model's own
    eval_batch_size: int = 64  # windows per forward pass at evaluation
    seed: int = 42

    def validate(self) -> QAConfig:
        if not self.epochs > 0 or not self.lr > 0:
            raise ValueError("--epochs and --lr must be > 0")
        for name in ("batch_size", "max_answer_len", "n_best", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError("warmup_fraction must lie in [0, 1)")
        self.window().validate()
        return self

    def window(self) -> WindowConfig:
        return WindowConfig(self.max_seq_len, self.doc_stride, self.max_query_len)


# ------------------------------------------------------------------------------------------------- model


def padded_layout(attention_mask: torch.Tensor, backend: str, dtype: torch.dtype):
    """Attention layout for right-padded rows (B, T): each row's tokens one sequence, its padding another."""
    B, T = attention_mask.shape
    lengths = attention_mask.sum(dim=1)  # (B,)
    pos = torch.arange(T, device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), pos[None, :] < lengths[:, None]):
        raise ValueError("attention_mask must be right padding: ones, then zeros")
    example_ids = 2 * torch.arange(B, device=pos.device)[:, None] + (pos[None, :] >= lengths[:, None])  # (B, T)
    seqlens = torch.stack([lengths, T - lengths], dim=1).flatten()
    seqlens = seqlens[seqlens > 0]
    cu_seqlens = F.pad(seqlens.cumsum(0), (1, 0)).to(torch.int32)
    return build_layout(backend, example_ids, cu_seqlens, int(seqlens.max()), dtype)


def encode_padded(bert: BertModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  token_type_ids: torch.Tensor | None = None, attention: str = "auto") -> torch.Tensor:  # fmt: skip
    """(B, T, H) final hidden states of our encoder for ordinary right-padded input, as HF BertModel takes it.

    Unlike pre-training (all segment ids 0, SPEC §1), fine-tuning may use segment ids: BERT's QA input
    marks the context with type 1, so the embeddings are summed here with the token-type table.
    """
    emb = bert.embeddings
    B, T = input_ids.shape
    position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
    types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    x = emb.word_embeddings(input_ids) + emb.position_embeddings(position_ids) + emb.token_type_embeddings(types)
    x = emb.dropout(emb.LayerNorm(x))  # (B, T, H)
    weight = emb.word_embeddings.weight
    layout = padded_layout(attention_mask, attention, compute_dtype(weight.device, weight.dtype))
    return bert.encoder(x, layout)


class SpanBertForQuestionAnswering(nn.Module):
    """Our BERT encoder with a Linear(H -> 2) head giving start and end logits per token (BERT's SQuAD head)."""

    def __init__(self, bert: BertModel, hidden_size: int, attention: str = "auto") -> None:
        super().__init__()
        self.bert = bert
        self.qa_outputs = nn.Linear(hidden_size, 2)
        nn.init.normal_(self.qa_outputs.weight, std=0.02)
        nn.init.zeros_(self.qa_outputs.bias)
        self.attention = attention

    def forward(self, input_ids, token_type_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = encode_padded(self.bert, input_ids, attention_mask, token_type_ids, self.attention)
        start, end = self.qa_outputs(hidden).float().unbind(dim=-1)  # (B, T) each
        return start, end


def load_qa_model(model_dir: str | Path, dropout: float | None = None,
                  attention: str = "auto") -> SpanBertForQuestionAnswering:  # fmt: skip
    """Our encoder with the weights of the Hugging Face BERT directory `model_dir`, plus a fresh QA head."""
    overrides = {} if dropout is None else {"hidden_dropout": dropout, "attention_dropout": dropout}
    cfg = model_config_from_hf(model_dir, **overrides)
    pre = SpanBertForPreTraining(cfg, kernels="reference", attention=attention)
    load_hf_weights(pre, model_dir)
    return SpanBertForQuestionAnswering(pre.bert, cfg.hidden_size, attention)


# ------------------------------------------------------------------------------------------------- loop


def _tensors(feats: Features, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.from_numpy(feats.input_ids[idx]).to(device),
        "token_type_ids": torch.from_numpy(feats.token_type_ids[idx]).to(device),
        "attention_mask": torch.from_numpy(feats.attention_mask[idx]).to(device),
    }


def _optimizer(model: nn.Module, cfg: QAConfig, total_steps: int):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)  # fmt: skip
    warmup = int(cfg.warmup_fraction * total_steps)

    def factor(step: int) -> float:  # linear warm-up, then linear decay to 0 at the last step
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def qa_logits(model: SpanBertForQuestionAnswering, feats: Features, batch_size: int,
              device: torch.device) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(n, T) start and end logits of every window."""
    model.eval()
    starts, ends = [], []
    for lo in range(0, len(feats), batch_size):
        with _autocast(device):
            s, e = model(**_tensors(feats, np.arange(lo, min(lo + batch_size, len(feats))), device))
        starts.append(s.float().cpu().numpy())
        ends.append(e.float().cpu().numpy())
    T = feats.input_ids.shape[1]
    return np.concatenate(starts) if starts else np.zeros((0, T)), np.concatenate(ends) if ends else np.zeros((0, T))


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def finetune_qa(model_dir: str | Path, train_path: str | Path, dev_path: str | Path, out_dir: str | Path,
                cfg: QAConfig, log=print) -> dict | None:  # fmt: skip
    """Fine-tune on `train_path`, evaluate on `dev_path`, write predictions.json and metrics.json to `out_dir`.

    Returns the metrics on rank 0 and None on the other ranks.
    """
    cfg.validate()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    tok_file = model_dir / "tokenizer.json" if (model_dir / "tokenizer.json").is_file() else model_dir / "vocab.txt"
    d = setup_distributed()
    rank, world, device = d.rank, d.world, d.device
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the number of processes ({world})")
    torch.manual_seed(cfg.seed)
    tokenizer = plain_tokenizer(tok_file)
    train_ex, dev_ex = load_squad(train_path), load_squad(dev_path)
    train_feats = make_features(train_ex, tokenizer, cfg.window())
    model = load_qa_model(model_dir, cfg.dropout).to(device)
    max_pos = model.bert.embeddings.position_embeddings.num_embeddings
    if cfg.max_seq_len > max_pos:
        raise ValueError(f"--max-seq-len {cfg.max_seq_len} exceeds the model's max_position_embeddings ({max_pos})")
    train_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    per_rank = cfg.batch_size // world
    steps_per_epoch = max(1, len(train_feats) // cfg.batch_size)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    opt, sched = _optimizer(model, cfg, total_steps)
    if rank == 0:
        log(f"finetune-qa: {len(train_ex)} questions -> {len(train_feats)} windows "
            f"({train_feats.skipped_answers} answers not found at answer_start); {world} process(es) on {device}; "
            f"{total_steps} steps of {cfg.batch_size} windows")  # fmt: skip
    try:
        t0, step, losses = time.time(), 0, []
        while step < total_steps:
            # The same permutation on every rank (seed, epoch); rank r takes slots r, r+world, … of each batch.
            perm = np.random.default_rng([cfg.seed, step // steps_per_epoch]).permutation(len(train_feats))
            for b in range(steps_per_epoch):
                if step >= total_steps:
                    break
                batch_idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                if len(batch_idx) < cfg.batch_size:  # fewer windows than one batch: repeat them
                    batch_idx = np.resize(perm, cfg.batch_size)
                idx = batch_idx[rank::world][:per_rank]
                train_model.train()
                with _autocast(device):
                    start, end = train_model(**_tensors(train_feats, idx, device))
                s_gold = torch.from_numpy(train_feats.start_positions[idx]).to(device)
                e_gold = torch.from_numpy(train_feats.end_positions[idx]).to(device)
                loss = (F.cross_entropy(start, s_gold) + F.cross_entropy(end, e_gold)) / 2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                losses.append(loss.item())
                if rank == 0 and (step % 50 == 0 or step == total_steps):
                    log(f"step {step}/{total_steps}  loss {np.mean(losses[-50:]):.4f}  {time.time() - t0:.0f}s")
    finally:
        train_model = None  # DDP holds the process group: let it go before leaving (spanbert_train.dist)
    metrics = None
    if rank == 0:
        dev_feats = make_features(dev_ex, tokenizer, cfg.window())
        start, end = qa_logits(model, dev_feats, cfg.eval_batch_size, device)
        preds = predict_answers(dev_ex, dev_feats, start, end, cfg.n_best, cfg.max_answer_len, cfg.version_2,
                                cfg.null_threshold)  # fmt: skip
        metrics = {
            **squad_metrics(preds, dev_ex),
            "dev_windows": len(dev_feats),
            "train_questions": len(train_ex),
            "train_windows": len(train_feats),
            "steps": total_steps,
            "final_train_loss": float(np.mean(losses[-50:])),
            "seconds": time.time() - t0,
            "model": str(model_dir),
            "processes": world,
            "config": asdict(cfg),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "predictions.json").write_text(json.dumps(preds, indent=1, ensure_ascii=False), encoding="utf-8")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        log(f"dev: EM {metrics['exact']:.2f}  F1 {metrics['f1']:.2f}  ({len(dev_ex)} questions) -> {out_dir}")
    if world > 1:
        dist.barrier()
    return metrics


# ------------------------------------------------------------------------------------------------- CLI


@click.command("finetune-qa")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A Hugging Face BERT directory (e.g. from `spanbert-train export`).")
@click.option("--train", "train_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="SQuAD-format training JSON (v1.1 or v2.0).")
@click.option("--dev", "dev_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="SQuAD-format evaluation JSON.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Where predictions.json and metrics.json go.")
@click.option("--epochs", type=float, default=QAConfig.epochs, show_default=True)
@click.option("--lr", type=float, default=QAConfig.lr, show_default=True)
@click.option("--batch-size", type=int, default=QAConfig.batch_size, show_default=True,
              help="Windows per step, over all ranks.")
@click.option("--max-seq-len", type=int, default=QAConfig.max_seq_len, show_default=True)
@click.option("--doc-stride", type=int, default=QAConfig.doc_stride, show_default=True)
@click.option("--max-query-len", type=int, default=QAConfig.max_query_len, show_default=True)
@click.option("--max-answer-length", type=int, default=QAConfig.max_answer_len, show_default=True)
@click.option("--version-2-with-negative", is_flag=True, help="SQuAD 2.0: allow and predict unanswerable questions.")
@click.option("--null-score-diff-threshold", type=float, default=QAConfig.null_threshold, show_default=True)
@click.option("--seed", type=int, default=QAConfig.seed, show_default=True)
def finetune_qa_command(model_dir, train_path, dev_path, out, epochs, lr, batch_size, max_seq_len, doc_stride,
                        max_query_len, max_answer_length, version_2_with_negative, null_score_diff_threshold,
                        seed):  # fmt: skip
    """Fine-tune an exported model on SQuAD-format QA and report dev EM/F1 (a probe of the encoder)."""
    cfg = QAConfig(epochs=epochs, lr=lr, batch_size=batch_size, max_seq_len=max_seq_len, doc_stride=doc_stride,
                   max_query_len=max_query_len, max_answer_len=max_answer_length, version_2=version_2_with_negative,
                   null_threshold=null_score_diff_threshold, seed=seed)  # fmt: skip
    try:
        finetune_qa(model_dir, train_path, dev_path, out, cfg, log=lambda m: click.echo(m, err=True))
    except (ValueError, ExportError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        shutdown_distributed()
