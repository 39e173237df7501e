"""Fused ``LayerNorm(dropout(x + bias) + residual)``: the post-LN sublayer output (SPEC §5), forward and backward.

One program normalises a tile of whole rows (BLOCK_M x H) held in registers. The dropout mask is never stored: it is
``tl.rand(seed, element index) >= p``, drawn again from the same seed in backward. Forward saves only the
pre-norm sum ``s`` (in the input dtype, as torch's LayerNorm saves its input) and per-row mean and 1/std.
Backward walks rows with a fixed number of programs, each accumulating its share of the column gradients
(bias, LN weight, LN bias) in fp32 registers; a small (programs, H) buffer is summed afterwards.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .reference import residual_dropout_layernorm_reference

__all__ = ["dropout_keep_mask", "residual_dropout_layernorm", "residual_dropout_layernorm_reference"]


@triton.jit
def _keep(seed, offs, p):
    # drawn per flat element index, so the mask never depends on how rows are blocked
    return tl.rand(seed, offs) >= p


@triton.jit
def _fwd_kernel(
    x_ptr, b_ptr, r_ptr, w_ptr, lnb_ptr, y_ptr, s_ptr, mean_ptr, rstd_ptr,
    n_rows, n_cols, seed, p, scale, eps,
    HAS_DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_H)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    ok = row_ok[:, None] & col_ok[None, :]
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]  # (BLOCK_M, BLOCK_H)
    z = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    z += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_DROPOUT:
        z = tl.where(_keep(seed, offs, p), z * scale, 0.0)
    s = z + tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    s = s.to(s_ptr.dtype.element_ty)  # backward sees exactly the saved (rounded) value, as torch's LayerNorm does
    tl.store(s_ptr + offs, s, mask=ok)
    s = s.to(tl.float32)
    mean = tl.sum(s, axis=1) / n_cols
    d = tl.where(ok, s - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    lnb = tl.load(lnb_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * w[None, :] + lnb[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _bwd_kernel(
    dy_ptr, s_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dr_ptr, dbias_part_ptr, dw_part_ptr, dlnb_part_ptr,
    n_rows, n_cols, seed, p, scale,
    HAS_DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    # column-gradient partials stay 2-D across row blocks and are reduced over rows once, at the end
    dbias_acc = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    dlnb_acc = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    for i in range(0, tl.cdiv(tl.cdiv(n_rows, BLOCK_M) - pid, n_programs)):
        rows = (pid + i * n_programs) * BLOCK_M + tl.arange(0, BLOCK_M)  # row blocks pid, pid + P, ...
        row_ok = rows < n_rows
        ok = row_ok[:, None] & col_ok[None, :]
        offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
        dy = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        xhat = tl.where(ok, (s - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w  # gradient w.r.t. xhat
        # ds = rstd * (g - mean(g) - xhat * mean(g * xhat)), row by row
        g_mean = tl.sum(g, axis=1) / n_cols
        gx_mean = tl.sum(g * xhat, axis=1) / n_cols
        ds = (g - g_mean[:, None] - xhat * gx_mean[:, None]) * rstd[:, None]
        tl.store(dr_ptr + offs, ds.to(dr_ptr.dtype.element_ty), mask=ok)
        if HAS_DROPOUT:
            ds = tl.where(_keep(seed, offs, p), ds * scale, 0.0)
        tl.store(dx_ptr + offs, ds.to(dx_ptr.dtype.element_ty), mask=ok)
        dbias_acc += ds
        dw_acc += dy * xhat
        dlnb_acc += dy
    part = pid * n_cols + cols
    tl.store(dbias_part_ptr + part, tl.sum(dbias_acc, axis=0), mask=col_ok)
    tl.store(dw_part_ptr + part, tl.sum(dw_acc, axis=0), mask=col_ok)
    tl.store(dlnb_part_ptr + part, tl.sum(dlnb_acc, axis=0), mask=col_ok)


@triton.jit
def _mask_kernel(out_ptr, n, seed, p, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, _keep(seed, offs, p).to(tl.int8), mask=offs < n)


_MAX_H = 16384  # whole rows live in registers; BERT-large's H is 1024
_TILE = 4096  # elements per (rows x H) tile: 4 rows of BERT-large, 128 rows of a tiny test model


class _Launch(NamedTuple):
    block_m: int
    block_h: int
    num_warps: int


def _launch(n_cols: int) -> _Launch:
    if n_cols > _MAX_H:
        raise ValueError(
            f"residual_dropout_layernorm: hidden size {n_cols} > {_MAX_H} does not fit one row per program"
        )
    block_h = triton.next_power_of_2(n_cols)
    block_m = max(1, _TILE // block_h)
    return _Launch(block_m, block_h, num_warps=8 if block_m * block_h >= 4096 else 4)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def dropout_keep_mask(seed: int, shape: tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The keep mask (bool, ``shape``) the kernels draw for ``seed`` and drop probability ``p``; for tests."""
    out = torch.empty(shape, dtype=torch.int8, device=device)
    if out.numel():
        _mask_kernel[(triton.cdiv(out.numel(), _TILE),)](out, out.numel(), seed, p, BLOCK=_TILE)
    return out.bool()


def _check(x, bias, residual, ln_weight, ln_bias, p: float) -> None:
    h = x.shape[-1] if x.dim() else -1
    if x.dim() < 1 or residual.shape != x.shape:
        raise ValueError(
            f"residual_dropout_layernorm: x and residual must share a (..., H) shape, "
            f"got {tuple(x.shape)} and {tuple(residual.shape)}"
        )
    for name, t in (("bias", bias), ("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t.shape != (h,):
            raise ValueError(f"residual_dropout_layernorm: {name} must have shape ({h},), got {tuple(t.shape)}")
    for name, t in (("x", x), ("bias", bias), ("residual", residual), ("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if not t.is_floating_point():
            raise ValueError(f"residual_dropout_layernorm: {name} must be floating point, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"residual_dropout_layernorm: {name} is on {t.device}, x on {x.device}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"residual_dropout_layernorm: dropout p must be in [0, 1), got {p}")


class _ResidualDropoutLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, residual, ln_weight, ln_bias, p: float, eps: float, training: bool, seed: int):
        n_cols = x.shape[-1]
        x2 = x.reshape(-1, n_cols).contiguous()  # (M, H)
        r2 = residual.reshape(-1, n_cols).contiguous()
        n_rows = x2.shape[0]
        has_dropout = training and p > 0.0
        y = torch.empty_like(x2)
        s = torch.empty_like(x2)
        mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        ln_weight = ln_weight.contiguous()
        cfg = _launch(n_cols)
        if n_rows:
            _fwd_kernel[(triton.cdiv(n_rows, cfg.block_m),)](
                x2, bias.contiguous(), r2, ln_weight, ln_bias.contiguous(), y, s, mean, rstd,
                n_rows, n_cols, seed, p, 1.0 / (1.0 - p), eps,
                HAS_DROPOUT=has_dropout, BLOCK_M=cfg.block_m, BLOCK_H=cfg.block_h, num_warps=cfg.num_warps,
            )  # fmt: skip
        ctx.save_for_backward(s, ln_weight, mean, rstd)
        ctx.args = (p, has_dropout, seed, x.dtype, residual.dtype, bias.dtype, ln_bias.dtype)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        s, ln_weight, mean, rstd = ctx.saved_tensors
        p, has_dropout, seed, x_dtype, r_dtype, b_dtype, lnb_dtype = ctx.args
        n_rows, n_cols = s.shape
        dy2 = dy.reshape(n_rows, n_cols).contiguous()
        dx = torch.empty((n_rows, n_cols), dtype=x_dtype, device=s.device)
        dr = torch.empty((n_rows, n_cols), dtype=r_dtype, device=s.device)
        cfg = _launch(n_cols)
        # a few programs per SM, each looping over row blocks: the (programs, H) column partials stay small
        n_prog = max(1, min(triton.cdiv(n_rows, cfg.block_m), 4 * _sm_count(s.device)))
        parts = torch.zeros((3, n_prog, n_cols), dtype=torch.float32, device=s.device)  # dbias, dln_w, dln_b
        if n_rows:
            _bwd_kernel[(n_prog,)](
                dy2, s, ln_weight, mean, rstd, dx, dr, parts[0], parts[1], parts[2],
                n_rows, n_cols, seed, p, 1.0 / (1.0 - p),
                HAS_DROPOUT=has_dropout, BLOCK_M=cfg.block_m, BLOCK_H=cfg.block_h, num_warps=cfg.num_warps,
            )  # fmt: skip
        dbias, dw, dlnb = parts.sum(dim=1)
        return (
            dx.view(dy.shape), dbias.to(b_dtype), dr.view(dy.shape), dw.to(ln_weight.dtype), dlnb.to(lnb_dtype),
            None, None, None, None,
        )  # fmt: skip


def residual_dropout_layernorm(
    x: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    p: float,
    eps: float,
    training: bool,
    seed: int | None = None,
) -> torch.Tensor:
    """``LayerNorm(dropout(x + bias) + residual)`` over the last dimension, fused; output has ``x``'s dtype.

    Args:
        x, residual: (..., H) sublayer output (before its bias) and the sublayer input.
        bias, ln_weight, ln_bias: (H,) each.
        p: drop probability in [0, 1); only applied when ``training``.
        eps: LayerNorm epsilon (1e-12 for BERT, SPEC §5).
        seed: dropout seed; by default drawn from torch's global CPU generator, so ``torch.manual_seed``
            makes runs repeatable. The same seed gives the mask ``dropout_keep_mask(seed, x.shape, p)``.

    Raises:
        ValueError: mismatched shapes, dtypes or devices, ``p`` outside [0, 1), or H > 16384.
    """
    _check(x, bias, residual, ln_weight, ln_bias, p)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item()) if training and p > 0.0 else 0
    return _ResidualDropoutLayerNorm.apply(x, bias, residual, ln_weight, ln_bias, p, eps, training, seed)
