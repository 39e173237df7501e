"""Plain-PyTorch references of the fused ops: the meaning of each kernel, and the CPU path.

These need nothing but torch, so the trainer works where Triton is missing. Each Triton file in this package
(``linear_cross_entropy.py``, ``bias_gelu.py``, ``residual_dropout_layernorm.py``) re-exports its twin from here
and its tests compare outputs and every gradient against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, summed over the non-ignored rows.

    Args:
        hidden: (N, H) decoder inputs (the MLM or SBO head outputs at target positions, SPEC §3).
        weight: (V, H) the tied word-embedding matrix.
        bias: (V,) the decoder's own bias.
        labels: (N,) int64 target ids; rows equal to ``ignore_index`` count for nothing.

    Returns:
        ``(loss_sum, count, correct)``: fp32 scalar sum of per-row CE in nats (differentiable), int64 number of
        non-ignored rows, int64 number of those whose argmax logit equals the label.
    """
    logits = F.linear(hidden, weight, bias)  # (N, V)
    loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    valid = labels != ignore_index
    count = valid.sum()
    correct = ((logits.argmax(dim=-1) == labels) & valid).sum()
    return loss_sum, count, correct


def bias_gelu_reference(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GeLU of ``x + bias``; ``bias`` (F,) broadcasts over the last dimension of ``x`` (..., F)."""
    # bias in x's dtype: under bf16 autocast the (tokens, FFN) activation stays bf16, as a GEMM with bias would.
    return F.gelu(x + bias.to(x.dtype), approximate="none")


def residual_dropout_layernorm_reference(
    x: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    p: float,
    eps: float,
    training: bool,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The post-LN sublayer output ``LayerNorm(dropout(x + bias) + residual)`` over the last dimension.

    ``keep_mask`` (bool, shape of ``x``), when given, replaces torch's own dropout draw: kept elements are scaled
    by ``1 / (1 - p)``, the rest zeroed. Tests pass the mask the Triton kernel draws for a given seed
    (``residual_dropout_layernorm.dropout_keep_mask``) so both paths drop the same elements.
    """
    z = x + bias.to(x.dtype)
    if training and p > 0.0:
        z = z * keep_mask / (1.0 - p) if keep_mask is not None else F.dropout(z, p=p, training=True)
    return F.layer_norm(z + residual, (x.shape[-1],), ln_weight, ln_bias, eps)
