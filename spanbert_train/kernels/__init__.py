"""Fused Triton kernels, each beside a plain-PyTorch reference of the same function.

``get_ops(kind)`` hands the model one namespace of the three fused ops so it never branches on the backend:

- ``linear_cross_entropy(hidden (N,H), weight (V,H), bias (V,), labels (N,), ignore_index=-100)``
  -> ``(loss_sum fp32 scalar, count int64 scalar, correct int64 scalar)``; only ``loss_sum`` is differentiable.
- ``bias_gelu(x (...,F), bias (F,))`` -> exact erf GeLU of ``x + bias``.
- ``residual_dropout_layernorm(x, bias, residual, ln_weight, ln_bias, p, eps, training)``
  -> ``LayerNorm(dropout(x + bias) + residual)``.

``"reference"`` is plain PyTorch and imports nothing else; ``"triton"`` imports its kernel modules, and with them
Triton, only when asked for, so the trainer runs where Triton is not installed. The trainer resolves ``"auto"``
(Triton on CUDA, reference elsewhere) and logs its choice (DESIGN §9).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .reference import bias_gelu_reference, linear_cross_entropy_reference, residual_dropout_layernorm_reference

KINDS = ("reference", "triton")


@dataclass(frozen=True)
class Ops:
    """One backend's implementation of the fused ops (see the module docstring for their signatures)."""

    kind: str
    linear_cross_entropy: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    bias_gelu: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    residual_dropout_layernorm: Callable[..., torch.Tensor]


def get_ops(kind: str) -> Ops:
    """Return the fused ops of backend ``kind`` ("reference" or "triton").

    Raises:
        ValueError: unknown ``kind``, or "triton" where it cannot run (Triton missing, or neither CUDA nor
            ``TRITON_INTERPRET=1``).
    """
    if kind == "reference":
        return Ops(kind, linear_cross_entropy_reference, bias_gelu_reference, residual_dropout_layernorm_reference)
    if kind == "triton":
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "kernels='triton' needs a CUDA device (or TRITON_INTERPRET=1 set before import, for tests); "
                "use kernels='reference' or 'auto' on this machine"
            )
        try:
            from .bias_gelu import bias_gelu
            from .linear_cross_entropy import linear_cross_entropy
            from .residual_dropout_layernorm import residual_dropout_layernorm
        except ImportError as err:
            raise ValueError(f"kernels='triton' needs the triton package ({err}); use kernels='reference'") from err
        return Ops(kind, linear_cross_entropy, bias_gelu, residual_dropout_layernorm)
    raise ValueError(f"unknown kernels kind {kind!r}: expected one of {KINDS} ('auto' is resolved by the trainer)")
