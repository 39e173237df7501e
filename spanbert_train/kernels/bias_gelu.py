"""Fused bias add + exact (erf) GeLU, forward and backward (FFN intermediate and head transforms, SPEC §3, §5).

Forward reads ``x`` once and writes ``gelu(x + b)``; backward reads ``x`` and ``dy`` once, writes ``dx`` and
reduces ``db`` per row block in the same pass, so neither ``x + b`` nor the GeLU derivative is ever stored.
All arithmetic is fp32 whatever the storage dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import bias_gelu_reference

__all__ = ["bias_gelu", "bias_gelu_reference"]

_INV_SQRT2 = tl.constexpr(0.7071067811865476)  # jit code may only read constexpr globals
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _bias_gelu_fwd_kernel(x_ptr, b_ptr, y_ptr, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    col_ok = cols < n_cols
    mask = (rows[:, None] < n_rows) & col_ok[None, :]
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]  # int64: 16k x 4096 tokens x features is close to 2^31
    u = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = 0.5 * u * (1.0 + tl.math.erf(u * _INV_SQRT2))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd_kernel(
    dy_ptr, x_ptr, b_ptr, dx_ptr, db_part_ptr, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr
):
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    col_ok = cols < n_cols
    mask = (rows[:, None] < n_rows) & col_ok[None, :]
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    u = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # d/du [u * Phi(u)] = Phi(u) + u * phi(u)
    dgelu = 0.5 * (1.0 + tl.math.erf(u * _INV_SQRT2)) + u * _INV_SQRT_2PI * tl.exp(-0.5 * u * u)
    dx = dy * dgelu
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    # masked-out rows loaded dy = 0, so they add nothing to the partial bias gradient
    tl.store(db_part_ptr + pid_m * n_cols + cols, tl.sum(dx, axis=0), mask=col_ok)


def _blocks(n_rows: int, n_cols: int) -> tuple[int, int]:
    """Tile sizes: up to 128 features wide, 16-64 rows tall, so one tile is a few thousand elements."""
    block_f = min(128, triton.next_power_of_2(n_cols))
    block_m = max(1, min(64, 4096 // block_f, triton.next_power_of_2(n_rows)))
    return block_m, block_f


def _check(x: torch.Tensor, bias: torch.Tensor) -> None:
    if x.dim() < 1 or bias.dim() != 1 or x.shape[-1] != bias.shape[0]:
        raise ValueError(f"bias_gelu: x (..., F) and bias (F,) expected, got {tuple(x.shape)} and {tuple(bias.shape)}")
    if not (x.is_floating_point() and bias.is_floating_point()):
        raise ValueError(f"bias_gelu: floating-point inputs expected, got {x.dtype} and {bias.dtype}")
    if x.device != bias.device:
        raise ValueError(f"bias_gelu: x on {x.device} but bias on {bias.device}")


def _forward(x2: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    n_rows, n_cols = x2.shape
    y = torch.empty_like(x2)
    block_m, block_f = _blocks(n_rows, n_cols)
    grid = (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_f))
    _bias_gelu_fwd_kernel[grid](x2, bias, y, n_rows, n_cols, BLOCK_M=block_m, BLOCK_F=block_f)
    return y


def _backward(dy2: torch.Tensor, x2: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n_rows, n_cols = x2.shape
    dx = torch.empty_like(x2)
    block_m, block_f = _blocks(n_rows, n_cols)
    grid = (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_f))
    db_part = torch.empty((grid[0], n_cols), dtype=torch.float32, device=x2.device)  # one row per row block
    _bias_gelu_bwd_kernel[grid](dy2, x2, bias, dx, db_part, n_rows, n_cols, BLOCK_M=block_m, BLOCK_F=block_f)
    return dx, db_part.sum(dim=0).to(bias.dtype)


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (M, F)
        bias = bias.contiguous()
        ctx.save_for_backward(x2, bias)
        return _forward(x2, bias).view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x2, bias = ctx.saved_tensors
        dx, db = _backward(dy.reshape(x2.shape).contiguous(), x2, bias)
        return dx.view(dy.shape), db


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Exact GeLU of ``x + bias`` in one Triton pass; ``x`` (..., F), ``bias`` (F,); output has ``x``'s dtype.

    Raises:
        ValueError: mismatched shapes, non-float dtypes or devices.
    """
    _check(x, bias)
    return _BiasGelu.apply(x, bias)
