"""The SpanBERT model: a BERT encoder (SPEC §5) with the MLM and SBO heads (SPEC §3).

Parameter names are those of ``transformers.BertForMaskedLM`` (``bert.embeddings.*``,
``bert.encoder.layer.N.*``, ``cls.predictions.*``), plus the SBO head under ``cls.sbo.*``, so that
export is a save without renaming: drop ``cls.sbo.*`` and ``BertForMaskedLM`` loads the state dict
strictly. There is no ``bert.pooler``: SpanBERT drops next-sentence prediction (SPEC §1), a pooler
would never be trained, and ``BertForMaskedLM`` has none.

Every row of a batch may hold several examples; attention stays inside each example
(:mod:`spanbert_train.attention`) and positions restart per example (:mod:`spanbert_train.batch`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from spanbert_data.config import SBO_OFFSETS
from spanbert_train.attention import BACKENDS, build_layout, compute_dtype, packed_attention
from spanbert_train.batch import Batch
from spanbert_train.heads import LossParts, PreTrainingHeads
from spanbert_train.kernels import get_ops


@dataclass(frozen=True)
class ModelConfig:
    """Shape and regularisation of the model; defaults are the paper's BERT-large (SPEC §5)."""

    vocab_size: int | None = None  # from the dataset's manifest (tokenizer.vocab_size); required to build
    num_layers: int = 24  # transformer layers
    hidden_size: int = 1024  # H
    num_heads: int = 16  # attention heads; must divide hidden_size
    intermediate_size: int = 4096  # FFN width
    max_position_embeddings: int = 512  # learned absolute positions 0..511 (SPEC §1)
    type_vocab_size: int = 2  # kept for BERT compatibility; every token uses type 0 (SPEC §1)
    hidden_dropout: float = 0.1  # after embeddings, attention output and FFN (SPEC §5)
    attention_dropout: float = 0.1  # on attention probabilities (SPEC §5)
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02  # std of every Linear and Embedding at init (SPEC §5)
    sbo_position_size: int = 200  # size of the SBO relative-position embedding p (SPEC §3)
    sbo_num_offsets: int = SBO_OFFSETS  # SBO targets only for the first 15 tokens of a span (SPEC §3)
    pad_token_id: int = 0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ModelConfig:
        """A preset (``tiny``, ``small``, ``base``, ``large``) with any field overridden, validated."""
        if name not in PRESETS:
            raise ValueError(f"model preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"model field(s) {unknown} do not exist; known fields: {sorted(known)}")
        return cls(**{**PRESETS[name], **overrides}).validate()

    def validate(self) -> ModelConfig:
        """Raise ValueError naming the first invalid field; return self for chaining."""
        positive = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "max_position_embeddings",
                    "type_vocab_size", "sbo_position_size", "sbo_num_offsets")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size <= 0):
            raise ValueError(f"model.vocab_size must be a positive integer, got {self.vocab_size!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must lie in [0, 1), got {getattr(self, name)!r}")
        for name in ("layer_norm_eps", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)!r}")
        return self

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        """This config with ``vocab_size`` set (it comes from the data, not the preset)."""
        return replace(self, vocab_size=vocab_size).validate()

    def to_dict(self) -> dict:
        """Plain dict of every field (for logs and checkpoints)."""
        return asdict(self)

    def to_hf_config(self) -> dict:
        """The ``config.json`` of the equivalent ``transformers.BertForMaskedLM``."""
        return {
            "architectures": ["BertForMaskedLM"],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "gelu",  # HF's "gelu" is the exact erf form
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": True,
        }


PRESETS: dict[str, dict] = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),  # CPU tests
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),  # BERT-small (L4/H512/A8)
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),  # SPEC §5 base
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),  # SPEC §5 paper run
}


REFERENCE_OPS = get_ops("reference")  # plain PyTorch; for modules built outside a model (e.g. a re-loaded SBO head)


# --- the encoder (HF BERT module names) -------------------------------------------------------------------

class BertEmbeddings(nn.Module):
    """Word + learned position + token-type-0 embeddings, then LayerNorm and dropout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # All segment ids are 0 (SPEC §1), so the token-type table contributes its row 0 everywhere.
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        x = x + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))  # (B, T, H)


class BertSelfAttention(nn.Module):
    """Query/key/value projections and attention confined to each packed example."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_dropout

    def forward(self, x: torch.Tensor, layout) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = (proj(x).view(B, T, self.num_heads, self.head_dim) for proj in (self.query, self.key, self.value))
        out = packed_attention(q, k, v, layout, self.dropout_p if self.training else 0.0)  # (B, T, nh, hd)
        return out.reshape(B, T, H)


class BertResidualOutput(nn.Module):
    """Linear, dropout, residual add, LayerNorm (HF ``attention.output`` and ``output``)."""

    def __init__(self, in_features: int, config: ModelConfig, ops) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.ops.residual_dropout_layernorm(
            F.linear(x, self.dense.weight), self.dense.bias, residual, self.LayerNorm.weight, self.LayerNorm.bias,
            self.dropout_p, self.LayerNorm.eps, self.training,
        )


class BertAttention(nn.Module):
    def __init__(self, config: ModelConfig, ops) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidualOutput(config.hidden_size, config, ops)

    def forward(self, x: torch.Tensor, layout) -> torch.Tensor:
        return self.output(self.self(x, layout), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: ModelConfig, ops) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.bias_gelu(F.linear(x, self.dense.weight), self.dense.bias)


class BertLayer(nn.Module):
    """One post-LN transformer layer: attention sublayer, then the GeLU feed-forward sublayer."""

    def __init__(self, config: ModelConfig, ops) -> None:
        super().__init__()
        self.attention = BertAttention(config, ops)
        self.intermediate = BertIntermediate(config, ops)
        self.output = BertResidualOutput(config.intermediate_size, config, ops)

    def forward(self, x: torch.Tensor, layout) -> torch.Tensor:
        a = self.attention(x, layout)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, config: ModelConfig, ops) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, ops) for _ in range(config.num_layers))

    def forward(self, x: torch.Tensor, layout) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, layout)
        return x


class BertModel(nn.Module):
    """``bert``: embeddings and encoder, no pooler."""

    def __init__(self, config: ModelConfig, ops) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config, ops)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, layout) -> torch.Tensor:
        return self.encoder(self.embeddings(input_ids, position_ids), layout)


class SpanBertForPreTraining(nn.Module):
    """BERT encoder + MLM head + SBO head, consuming a packed :class:`~spanbert_train.batch.Batch`.

    Args:
        config: the model shape; ``config.vocab_size`` must be set.
        kernels: which implementation of the three fused operations to use, as named by
            ``spanbert_train.kernels.get_ops``: ``"reference"`` (plain PyTorch) or ``"triton"``.
        attention: ``"auto"`` (flash varlen on CUDA in fp16/bf16, masked SDPA otherwise), ``"varlen"``
            or ``"sdpa"``.
    """

    def __init__(self, config: ModelConfig, kernels: str = "reference", attention: str = "auto") -> None:
        super().__init__()
        config.validate()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set: take it from the dataset manifest (ModelConfig.with_vocab)")
        if attention not in BACKENDS:
            raise ValueError(f"attention must be one of {BACKENDS}, got {attention!r}")
        self.config = config
        self.kernels = kernels
        self.attention = attention
        ops = get_ops(kernels)
        self.bert = BertModel(config, ops)
        self.cls = PreTrainingHeads(config, self.bert.embeddings.word_embeddings, ops)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """SPEC §5: every Linear and Embedding N(0, 0.02), biases 0, LayerNorm γ 1 β 0 (head biases 0 too)."""
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            return
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(getattr(module, "bias", None), nn.Parameter):
            nn.init.zeros_(module.bias)  # Linear biases and the decoders' own (cls.predictions.bias, cls.sbo.bias)

    def encode(self, batch: Batch) -> torch.Tensor:
        """(B, T, H) final hidden states of the packed rows."""
        B, T = batch.input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"batch rows have {T} slots but model.max_position_embeddings is "
                             f"{self.config.max_position_embeddings}")
        weight = self.bert.embeddings.word_embeddings.weight
        dtype = compute_dtype(weight.device, weight.dtype)
        layout = build_layout(self.attention, batch.example_ids, batch.cu_seqlens, batch.max_seqlen, dtype)
        return self.bert(batch.input_ids, batch.position_ids, layout)

    def forward(self, batch: Batch) -> LossParts:
        """Loss sums, counts and correct counts of both objectives (SPEC §4 normalises globally)."""
        return self.cls(self.encode(batch).flatten(0, 1), batch)

    @torch.no_grad()
    def mlm_logits(self, batch: Batch) -> torch.Tensor:
        """(M, V) MLM logits at the batch's MLM targets (evaluation, tests)."""
        return self.cls.predictions.logits(self.encode(batch).flatten(0, 1), batch.mlm_index)

    @torch.no_grad()
    def sbo_logits(self, batch: Batch) -> torch.Tensor:
        """(S, V) SBO logits of the batch's SBO targets (evaluation, tests)."""
        return self.cls.sbo.logits(self.encode(batch).flatten(0, 1), batch.sbo_left, batch.sbo_right,
                                   batch.sbo_offsets, self.bert.embeddings.word_embeddings.weight)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Distinct parameters (tied ones counted once); ``non_embedding`` leaves out the three embedding tables."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= sum(p.numel() for p in self.bert.embeddings.parameters() if p.dim() == 2)
        return total

    def estimate_flops_per_token(self, attn_len: float | None = None, mlm_per_token: float = 0.15,
                                 sbo_per_token: float = 0.147) -> float:
        """Training FLOPs (forward + backward = 3x forward) per non-padding token, for MFU.

        Counts matrix multiplies only (2 FLOPs per multiply-add). ``attn_len`` is the mean length of the
        example a token attends over (default ``max_position_embeddings``: full 512-token blocks);
        ``mlm_per_token`` and ``sbo_per_token`` are targets per token (SPEC §2: 77/512 ≈ 0.15 MLM,
        SBO ≈ 98% of MLM), because both heads run only at their targets.
        """
        c = self.config
        H, V, L = c.hidden_size, c.vocab_size, c.num_layers
        attn_len = c.max_position_embeddings if attn_len is None else attn_len
        layer = 2 * (4 * H * H + 2 * H * c.intermediate_size) + 2 * 2 * attn_len * H  # projections + QKᵀ and AV
        mlm = 2 * (H * H + H * V)
        sbo = 2 * ((2 * H + c.sbo_position_size) * H + H * H + H * V)
        return 3.0 * (L * layer + mlm_per_token * mlm + sbo_per_token * sbo)
