"""The two pre-training heads (SPEC §3) and the loss parts they return (SPEC §4).

Both heads see only the hidden states they need (gathered at target or boundary positions of the
flattened ``B*T`` stream), so no ``B x T x V`` logits tensor ever exists. Both decode with the tied
input word embeddings ``E`` and a bias of their own.

The three hot operations go through an ``ops`` namespace (``spanbert_train.kernels.get_ops``)
so that fused kernels can replace the plain-PyTorch reference without touching this file:
``linear_cross_entropy`` (decoder + CE, returning sums) and ``bias_gelu``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossParts:
    """Per-batch sums of one forward pass, all 0-dim fp32 tensors.

    They are sums, not means: the trainer divides by the counts of the GLOBAL batch (all ranks and
    accumulation steps, SPEC §4), which only sums can give.
    """

    mlm_loss_sum: torch.Tensor
    mlm_count: torch.Tensor
    mlm_correct: torch.Tensor
    sbo_loss_sum: torch.Tensor
    sbo_count: torch.Tensor
    sbo_correct: torch.Tensor

    def objective(self, mlm_total: torch.Tensor | float, sbo_total: torch.Tensor | float,
                  sbo_weight: float = 1.0) -> torch.Tensor:  # fmt: skip
        """The SPEC §4 loss of this part of the batch: MLM CE sum / mlm_total + w · SBO CE sum / sbo_total.

        ``mlm_total`` and ``sbo_total`` are the target counts of the whole global batch; a total of 0
        (a batch without SBO targets) contributes 0 rather than NaN. ``sbo_weight`` w is 1.0 in SpanBERT;
        0 leaves the SBO head out of the gradient (span masking without SBO, the paper's ablation).
        """
        mlm_total = torch.as_tensor(mlm_total, dtype=torch.float32).clamp(min=1.0)
        sbo_total = torch.as_tensor(sbo_total, dtype=torch.float32).clamp(min=1.0)
        if sbo_weight == 0.0:
            return self.mlm_loss_sum / mlm_total
        return self.mlm_loss_sum / mlm_total + sbo_weight * (self.sbo_loss_sum / sbo_total)

    def detached(self) -> torch.Tensor:
        """The six parts as one detached (6,) fp32 tensor, in field order (for a single all-reduce)."""
        return torch.stack([
            self.mlm_loss_sum, self.mlm_count, self.mlm_correct, self.sbo_loss_sum, self.sbo_count, self.sbo_correct,
        ]).detach()


class PredictionHeadTransform(nn.Module):
    """Linear(H_in -> H) -> exact GeLU -> LayerNorm(eps 1e-12): the MLM transform (HF ``transform``)."""

    def __init__(self, in_features: int, hidden_size: int, layer_norm_eps: float, ops) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ops.bias_gelu(F.linear(x, self.dense.weight), self.dense.bias)
        return self.LayerNorm(x)


class MaskedLMHead(nn.Module):
    """BERT's MLM head (``cls.predictions``): transform, then the tied embeddings plus its own bias.

    Keys match ``transformers.BertForMaskedLM``: ``transform.dense``, ``transform.LayerNorm``, ``bias``,
    and ``decoder.weight`` / ``decoder.bias``, which are the word embeddings and ``bias`` themselves.
    """

    def __init__(self, hidden_size: int, layer_norm_eps: float, word_embeddings: nn.Embedding, ops) -> None:
        super().__init__()
        vocab_size = word_embeddings.num_embeddings
        self.transform = PredictionHeadTransform(hidden_size, hidden_size, layer_norm_eps, ops)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.decoder.weight = word_embeddings.weight  # tied (SPEC §3)
        self.decoder.bias = self.bias
        self.ops = ops

    def logits(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(M, V) logits at flat positions ``index`` of ``hidden`` (B*T, H); for evaluation and tests."""
        return F.linear(self.transform(hidden[index]), self.decoder.weight, self.bias)

    def forward(self, hidden: torch.Tensor, index: torch.Tensor, labels: torch.Tensor):
        """(loss_sum, count, correct) over the targets at flat positions ``index`` of ``hidden`` (B*T, H)."""
        x = self.transform(hidden.index_select(0, index))  # (M, H)
        return self.ops.linear_cross_entropy(x, self.decoder.weight, self.bias, labels)


class SpanBoundaryHead(nn.Module):
    """The SBO head (``cls.sbo``, SPEC §3): predict a span token from its two outside boundaries.

    h0 = [x[s-1]; x[e+1]; p[k]], h1 = LN(GeLU(W1 h0)), y = LN(GeLU(W2 h1)), logits = y Eᵀ + b_sbo.
    No dropout in the head. ``E`` is passed in (it belongs to the embeddings), so it is not a key here.
    """

    def __init__(self, hidden_size: int, position_size: int, num_offsets: int, vocab_size: int,
                 layer_norm_eps: float, ops) -> None:
        super().__init__()
        self.position_embeddings = nn.Embedding(num_offsets, position_size)  # p[k], k in 0..14
        self.dense_1 = nn.Linear(2 * hidden_size + position_size, hidden_size)
        self.LayerNorm_1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dense_2 = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm_2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.ops = ops

    def transform(self, hidden: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                  offsets: torch.Tensor) -> torch.Tensor:
        """(S, H) representation y of each target from the boundary states and its span offset."""
        h0 = torch.cat(
            [hidden.index_select(0, left), hidden.index_select(0, right), self.position_embeddings(offsets)], dim=-1
        )  # (S, 2H + P)
        h1 = self.LayerNorm_1(self.ops.bias_gelu(F.linear(h0, self.dense_1.weight), self.dense_1.bias))
        return self.LayerNorm_2(self.ops.bias_gelu(F.linear(h1, self.dense_2.weight), self.dense_2.bias))

    def logits(self, hidden, left, right, offsets, embedding_weight: torch.Tensor) -> torch.Tensor:
        """(S, V) logits; for evaluation and tests."""
        return F.linear(self.transform(hidden, left, right, offsets), embedding_weight, self.bias)

    def forward(self, hidden, left, right, offsets, labels, embedding_weight: torch.Tensor):
        """(loss_sum, count, correct) of the SBO targets described by flat ``left``/``right`` indices."""
        y = self.transform(hidden, left, right, offsets)
        return self.ops.linear_cross_entropy(y, embedding_weight, self.bias, labels)


class PreTrainingHeads(nn.Module):
    """``cls``: the MLM head under ``cls.predictions`` (HF names) and the SBO head under ``cls.sbo``."""

    def __init__(self, config, word_embeddings: nn.Embedding, ops) -> None:
        super().__init__()
        self.predictions = MaskedLMHead(config.hidden_size, config.layer_norm_eps, word_embeddings, ops)
        self.sbo = SpanBoundaryHead(config.hidden_size, config.sbo_position_size, config.sbo_num_offsets,
                                    config.vocab_size, config.layer_norm_eps, ops)

    def forward(self, hidden: torch.Tensor, batch) -> LossParts:
        """Loss parts of both objectives from the final hidden states ``hidden`` (B*T, H)."""
        mlm_loss, mlm_count, mlm_correct = self.predictions(hidden, batch.mlm_index, batch.mlm_labels)
        embedding = self.predictions.decoder.weight  # E, tied to the word embeddings
        sbo_loss, sbo_count, sbo_correct = self.sbo(
            hidden, batch.sbo_left, batch.sbo_right, batch.sbo_offsets, batch.sbo_labels, embedding
        )
        return LossParts(
            mlm_loss_sum=mlm_loss.float(), mlm_count=mlm_count.float(), mlm_correct=mlm_correct.float(),
            sbo_loss_sum=sbo_loss.float(), sbo_count=sbo_count.float(), sbo_correct=sbo_correct.float(),
        )
