"""Self-attention over packed rows: every example attends only to itself (SPEC §1, DESIGN §7).

A training row holds several examples back to back, then padding. Two exact ways to keep attention
inside an example are offered, chosen once per forward pass by :func:`build_layout`:

- ``"varlen"`` (CUDA, fp16/bf16): flash attention over the flattened ``B*T`` token stream, cut into
  sequences by ``cu_seqlens`` (each example one sequence, each row's padding tail one more). No mask
  is materialised and no work is spent across example boundaries. It calls
  ``torch.nn.attention.varlen.varlen_attn`` (torch >= 2.10) without dropout, and the aten flash op under
  it (``_flash_attention_forward``, which has an autograd formula) with dropout, or always on older torch.
- ``"sdpa"`` (any device and dtype): ``F.scaled_dot_product_attention`` with a block-diagonal boolean
  mask built from ``example_ids``. This is the CPU path and the fp32 path, and the reference the
  varlen path is tested against.

Padding attends among itself (it is its own group), so no query row is ever fully masked and no NaN
can appear; its outputs are never read by a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # public API since torch 2.10; absent on older builds
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - depends on the installed torch
    varlen_attn = None
# The aten op varlen_attn wraps; its first ten arguments are the same from torch 2.5 to 2.13 at least.
_FLASH_OP = getattr(torch.ops.aten, "_flash_attention_forward", None)

BACKENDS = ("auto", "varlen", "sdpa")
_HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class PackedLayout:
    """How the examples of one batch are laid out, prepared once and shared by every layer.

    Attributes:
        backend: ``"varlen"`` or ``"sdpa"`` (never ``"auto"``: that is resolved when building).
        cu_seqlens: (N+1,) int32 sequence boundaries in the flattened ``B*T`` stream (varlen).
        max_seqlen: longest sequence in ``cu_seqlens`` (varlen).
        mask: (B, 1, T, T) bool, True where query and key share an example (sdpa), else None.
    """

    backend: str
    cu_seqlens: torch.Tensor
    max_seqlen: int
    mask: torch.Tensor | None


def varlen_available(device: torch.device) -> bool:
    """True when the flash varlen kernel can run on ``device`` with this torch build."""
    return (varlen_attn is not None or _FLASH_OP is not None) and device.type == "cuda"


def varlen_implementation() -> str:
    """Which torch functions the ``varlen`` backend calls with this torch build (for logs and reports)."""
    if varlen_attn is not None:
        return "torch.nn.attention.varlen.varlen_attn (no dropout), aten._flash_attention_forward (dropout)"
    if _FLASH_OP is not None:
        return "aten._flash_attention_forward (torch.nn.attention.varlen missing in this torch)"
    return "none: this torch has no flash varlen op"


def compute_dtype(device: torch.device, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype attention inputs will have: the autocast dtype when autocast is on, else the parameters'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return param_dtype


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turn ``"auto"`` into a concrete backend and refuse combinations that cannot run.

    ``auto`` picks ``varlen`` on CUDA in fp16/bf16 (flash attention has no fp32 kernel) and ``sdpa``
    everywhere else.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "varlen" if varlen_available(device) and dtype in _HALF_DTYPES else "sdpa"
    if backend == "varlen":
        if not varlen_available(device):
            raise ValueError(
                f"attention backend 'varlen' needs CUDA and torch's flash varlen op (device {device}, "
                f"torch {torch.__version__}); use 'sdpa' or 'auto'"
            )
        if dtype not in _HALF_DTYPES:
            raise ValueError(
                f"attention backend 'varlen' runs only in fp16/bf16 but the model computes in {dtype}; "
                "enable bf16 autocast or use attention 'sdpa'"
            )
    return backend


def build_layout(
    backend: str,
    example_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    dtype: torch.dtype,
) -> PackedLayout:
    """Prepare what the chosen backend needs for one batch (the mask is built once, not per layer)."""
    resolved = resolve_backend(backend, example_ids.device, dtype)
    mask = None
    if resolved == "sdpa":
        mask = (example_ids[:, :, None] == example_ids[:, None, :]).unsqueeze(1)  # (B, 1, T, T)
    return PackedLayout(backend=resolved, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, mask=mask)


def packed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, dropout_p: float
) -> torch.Tensor:
    """Scaled dot-product attention restricted to each example, with attention-probability dropout.

    Args:
        q, k, v: (B, T, nh, hd) projections of the packed rows.
        layout: from :func:`build_layout` for this batch.
        dropout_p: dropout on the attention probabilities (pass 0.0 in eval mode).

    Returns:
        (B, T, nh, hd) attention output.
    """
    B, T, nh, hd = q.shape
    if layout.backend == "varlen":
        flat = (B * T, nh, hd)
        qf, kf, vf = q.reshape(flat), k.reshape(flat), v.reshape(flat)  # (B*T, nh, hd)
        if dropout_p == 0.0 and varlen_attn is not None:
            out = varlen_attn(qf, kf, vf, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen, layout.max_seqlen)
        else:
            # varlen_attn hard-codes dropout 0.0; the aten op under it takes dropout_p and has an
            # autograd formula that replays the same Philox mask in backward (SPEC §5: attention dropout 0.1).
            out = _FLASH_OP(
                qf, kf, vf, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen, layout.max_seqlen,
                dropout_p, False, False,
            )[0]
        return out.view(B, T, nh, hd)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=layout.mask, dropout_p=dropout_p
    )  # (B, nh, T, hd)
    return out.transpose(1, 2)
