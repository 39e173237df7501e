"""Fused decoder + cross-entropy for the MLM and SBO heads (SPEC §3-4): loss, count, accuracy and gradients.

The full (targets x vocab) logits are never held: rows are taken ``chunk_rows`` at a time. For each chunk the
logits ``h W^T + b`` come from one cuBLAS GEMM (fp32 accumulation, stored in the compute dtype); then a Triton
program per row walks the vocabulary in ``BLOCK_V`` slices with an online log-sum-exp (running max and rescaled
sum in fp32), records the argmax and the target logit, and, when gradients are wanted, overwrites that row's
logits in place with ``softmax - onehot`` (zero for ignored rows). Two more GEMMs turn the chunk into its
share of ``dL/dh`` and ``dL/dW``; ``dL/db`` is a column sum. The loss is a plain sum, so these gradients are
final up to the scalar ``grad_output``: backward only scales them. Peak extra memory is one chunk of logits
plus an fp32 (V, H) accumulator, against two full (N, V) copies for the reference under bf16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import linear_cross_entropy_reference

__all__ = ["linear_cross_entropy", "linear_cross_entropy_reference"]

_CHUNK_BYTES = 128 * 2**20  # one chunk of logits; ~2.3k rows of the 28,996-entry vocab in bf16


@triton.jit
def _ce_rows_kernel(
    logits_ptr, labels_ptr, loss_ptr, correct_ptr, n_cols, ignore_index,
    WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * n_cols
    label = tl.load(labels_ptr + row).to(tl.int32)
    m = tl.full([], float("-inf"), tl.float32)  # running max
    s = tl.full([], 0.0, tl.float32)  # running sum of exp(z - m)
    best = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], 0, tl.int32)
    target = tl.full([], 0.0, tl.float32)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        z_max = tl.max(z, axis=0)
        # strict '>' keeps the first maximal index across slices, as torch.argmax does
        z_arg = start + tl.argmax(z, axis=0, tie_break_left=True)
        best_idx = tl.where(z_max > best, z_arg, best_idx)
        best = tl.maximum(best, z_max)
        m_new = tl.maximum(m, z_max)
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
        target += tl.sum(tl.where(cols == label, z, 0.0), axis=0)
    lse = m + tl.log(s)
    valid = label != ignore_index
    tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0))
    tl.store(correct_ptr + row, (valid & (best_idx == label)).to(tl.int32))
    if WRITE_GRAD:
        # d(loss_row)/d(logit_j) = softmax_j - [j == label]; nothing for an ignored row
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            ok = cols < n_cols
            z = tl.load(base + cols, mask=ok, other=0.0).to(tl.float32)
            g = tl.exp(z - lse) - tl.where(cols == label, 1.0, 0.0)
            g = tl.where(valid, g, 0.0)
            tl.store(base + cols, g.to(logits_ptr.dtype.element_ty), mask=ok)


def _check(hidden, weight, bias, labels) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: hidden (N, H) and weight (V, H) expected, "
            f"got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"linear_cross_entropy: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if labels.shape != (hidden.shape[0],) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"linear_cross_entropy: labels must be int64/int32 of shape ({hidden.shape[0]},), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if not t.is_floating_point():
            raise ValueError(f"linear_cross_entropy: {name} must be floating point, got {t.dtype}")
    if len({t.device for t in (hidden, weight, bias, labels)}) != 1:
        raise ValueError("linear_cross_entropy: hidden, weight, bias and labels must be on one device")


def _block_v(n_cols: int) -> int:
    return min(4096, triton.next_power_of_2(n_cols))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index: int, chunk_rows: int, grad_enabled: bool):
        n_rows, n_hidden = hidden.shape
        n_vocab = weight.shape[0]
        dtype, device = hidden.dtype, hidden.device
        weight_c, bias_c = weight.to(dtype), bias.to(dtype)  # no copy when the dtypes already agree
        labels = labels.contiguous()
        # needs_input_grad stays True under torch.no_grad(); evaluation must not pay for the gradient GEMMs
        want_dh, want_dw, want_db = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        want_grad = want_dh or want_dw or want_db
        loss_rows = torch.empty(n_rows, dtype=torch.float32, device=device)
        correct_rows = torch.empty(n_rows, dtype=torch.int32, device=device)
        dh = torch.empty_like(hidden) if want_dh else None
        dw = torch.zeros((n_vocab, n_hidden), dtype=torch.float32, device=device) if want_dw else None
        db = torch.zeros(n_vocab, dtype=torch.float32, device=device) if want_db else None
        for lo in range(0, n_rows, chunk_rows):
            hi = min(n_rows, lo + chunk_rows)
            h_c = hidden[lo:hi]  # (C, H)
            logits = torch.addmm(bias_c, h_c, weight_c.t())  # (C, V), becomes dlogits in place
            _ce_rows_kernel[(hi - lo,)](
                logits, labels[lo:hi], loss_rows[lo:hi], correct_rows[lo:hi], n_vocab, ignore_index,
                WRITE_GRAD=want_grad, BLOCK_V=_block_v(n_vocab), num_warps=8,
            )  # fmt: skip
            if want_dh:
                torch.mm(logits, weight_c, out=dh[lo:hi])
            if want_dw:
                if dtype == torch.float32:
                    dw.addmm_(logits.t(), h_c)
                else:  # GEMM in the compute dtype, accumulated over chunks in fp32
                    dw += torch.mm(logits.t(), h_c).float()
            if want_db:
                db += logits.sum(dim=0, dtype=torch.float32)
        ctx.save_for_backward(dh, dw, db)
        ctx.dtypes = (weight.dtype, bias.dtype)
        count = (labels != ignore_index).sum()
        correct = correct_rows.sum(dtype=torch.int64)
        ctx.mark_non_differentiable(count, correct)
        return loss_rows.sum(), count, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_count, _grad_correct):
        dh, dw, db = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        dh = dh * grad_loss.to(dh.dtype) if dh is not None else None
        dw = (dw * grad_loss).to(w_dtype) if dw is not None else None
        db = (db * grad_loss).to(b_dtype) if db is not None else None
        return dh, dw, db, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, never holding all logits.

    Same contract as ``linear_cross_entropy_reference``: returns ``(loss_sum fp32, count int64, correct int64)``,
    gradients for ``hidden``, ``weight`` and ``bias`` through ``loss_sum``. Labels must be ``ignore_index`` or in
    ``[0, V)``. Under autocast the GEMMs run in the autocast dtype, as ``F.linear`` would. ``chunk_rows``
    overrides how many rows share one logits buffer (default: ~128 MiB worth).

    Raises:
        ValueError: mismatched shapes, dtypes or devices, or ``chunk_rows < 1``.
    """
    _check(hidden, weight, bias, labels)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden = hidden.to(dtype)  # autograd carries the gradient back through the cast
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_BYTES // (hidden.element_size() * weight.shape[0]))
    elif chunk_rows < 1:
        raise ValueError(f"linear_cross_entropy: chunk_rows must be >= 1, got {chunk_rows}")
    grad_enabled = torch.is_grad_enabled()
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden.contiguous(), weight, bias, labels, ignore_index, chunk_rows, grad_enabled
        )
