"""AdamW with BERT's weight-decay exclusions and the linear warm-up / linear decay schedule (SPEC §5)."""

from __future__ import annotations

import torch
from torch import nn

from spanbert_train.config import OptimConfig

DEFAULT_WARMUP = 10_000  # SPEC §5: linear warm-up over 10,000 updates


def warmup_steps(cfg: OptimConfig, max_steps: int) -> int:
    """The warm-up length: as configured, else 10,000 steps or 10% of max_steps when that is shorter."""
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, max_steps)
    return min(DEFAULT_WARMUP, max(1, max_steps // 10))


def lr_factor(step: int, warmup: int, max_steps: int) -> float:
    """Multiplier of the peak lr for the update at 0-based `step`: rises linearly to 1 over `warmup`
    updates (the first update already gets 1/warmup, not 0), then falls linearly to 0 at `max_steps`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and embeddings decay; biases and LayerNorm weights (every 1-D tensor) do not,
    as in BERT's `["bias", "LayerNorm.weight"]` exclusion list."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the SPEC §5 hyper-parameters; the fused (single-kernel) implementation on CUDA."""
    if cfg.lr is None:  # the preset's recipe fills it when the TrainConfig is resolved
        raise ValueError("optim.lr is not set: resolve the TrainConfig (TrainConfig.validate) or give lr")
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=device.type == "cuda",
    )


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR over `lr_factor`; its state_dict is plain numbers (saved as JSON in checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, max_steps))
