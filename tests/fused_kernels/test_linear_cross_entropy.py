"""Triton fused linear + cross-entropy against its reference: loss, count, accuracy and all three gradients."""

import pytest
import torch

from spanbert_train.kernels import get_ops
from spanbert_train.kernels.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference

TOL = {torch.float32: 1e-4, torch.float16: 5e-3}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)).item()


def make_inputs(n, v, h, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen)
    weight = 0.3 * torch.randn(v, h, generator=gen)
    bias = 0.5 * torch.randn(v, generator=gen)
    labels = torch.randint(0, v, (n,), generator=gen)
    # a third of the rows predict their label, so accuracy counts something; some rows are ignored
    argmax = (hidden @ weight.T + bias).argmax(dim=1)
    labels[::3] = argmax[::3]
    labels[1::3] = -100
    return hidden.to(dtype), weight.to(dtype), bias.to(dtype), labels


def run(fn, hidden, weight, bias, labels, scale=1.7, **kwargs):
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    loss, count, correct = fn(*leaves, labels, **kwargs)
    (scale * loss).backward()  # a grad_output other than 1 checks the backward scaling
    return loss.detach(), count, correct, [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "n, v, h, chunk_rows",
    [(37, 131, 32, None), (37, 131, 32, 5), (1, 7, 13, None), (13, 300, 64, 4), (16, 257, 37, 1), (64, 101, 48, 64)],
)
def test_matches_reference(n, v, h, chunk_rows, dtype):
    inputs = make_inputs(n, v, h, dtype, seed=n + v)
    loss, count, correct, grads = run(linear_cross_entropy, *inputs, chunk_rows=chunk_rows)
    hidden, weight, bias, labels = inputs
    want_loss, want_count, want_correct, want_grads = run(
        linear_cross_entropy_reference, hidden.float(), weight.float(), bias.float(), labels
    )
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert rel_err(loss, want_loss) < TOL[dtype]
    assert count.dtype == torch.int64 and count.item() == want_count.item()
    assert correct.dtype == torch.int64
    if dtype == torch.float32:  # fp16 logits can swap near-tied maxima
        assert correct.item() == want_correct.item() > 0
    for name, g, w, x in zip(("dhidden", "dweight", "dbias"), grads, want_grads, (hidden, weight, bias), strict=True):
        assert g.dtype == x.dtype and g.shape == x.shape, name
        assert rel_err(g, w) < TOL[dtype], name


def test_all_ignored_batch_gives_zero_loss_and_zero_grads():
    hidden, weight, bias, labels = make_inputs(5, 37, 16, torch.float32, seed=0)
    labels[:] = -100
    loss, count, correct, grads = run(linear_cross_entropy, hidden, weight, bias, labels)
    assert loss.item() == 0.0 and count.item() == 0 and correct.item() == 0
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_no_grad_and_partial_grad():
    hidden, weight, bias, labels = make_inputs(9, 53, 16, torch.float32, seed=1)
    want = linear_cross_entropy_reference(hidden, weight, bias, labels)[0]
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    with torch.no_grad():
        loss = linear_cross_entropy(*leaves, labels)[0]
    assert rel_err(loss, want) < 1e-5 and loss.grad_fn is None
    h = hidden.clone().requires_grad_()
    linear_cross_entropy(h, weight, bias, labels)[0].backward()
    h_ref = hidden.clone().requires_grad_()
    linear_cross_entropy_reference(h_ref, weight, bias, labels)[0].backward()
    assert rel_err(h.grad, h_ref.grad) < 1e-4


def test_autocast_bf16_follows_reference():
    # the GEMMs run in bf16 (torch's own, not tl.dot); the kernel reads bf16 logits and reduces in fp32
    hidden, weight, bias, labels = make_inputs(11, 97, 32, torch.float32, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _, grads = run(linear_cross_entropy, hidden, weight, bias, labels)
        want, _, _, want_grads = run(linear_cross_entropy_reference, hidden, weight, bias, labels)
    assert rel_err(loss, want) < 1e-2
    for g, w in zip(grads, want_grads, strict=True):
        assert g.dtype == torch.float32 and rel_err(g, w) < 3e-2


def test_get_ops_triton_signature():
    hidden, weight, bias, labels = make_inputs(6, 29, 8, torch.float32, seed=3)
    got = get_ops("triton").linear_cross_entropy(hidden, weight, bias, labels, ignore_index=-100)
    want = linear_cross_entropy_reference(hidden, weight, bias, labels, ignore_index=-100)
    assert rel_err(got[0], want[0]) < 1e-5 and [t.item() for t in got[1:]] == [t.item() for t in want[1:]]


@pytest.mark.parametrize(
    "n, v, h, change, match",
    [
        (4, 9, 8, {"hidden": torch.randn(4, 7)}, "hidden \\(N, H\\) and weight"),
        (4, 9, 8, {"bias": torch.randn(8)}, "bias must have shape"),
        (4, 9, 8, {"labels": torch.zeros(5, dtype=torch.int64)}, "labels must be"),
        (4, 9, 8, {"labels": torch.zeros(4)}, "labels must be"),
        (4, 9, 8, {"chunk_rows": 0}, "chunk_rows"),
    ],
)
def test_rejects_bad_inputs(n, v, h, change, match):
    hidden, weight, bias, labels = make_inputs(n, v, h, torch.float32, seed=4)
    args = dict(hidden=hidden, weight=weight, bias=bias, labels=labels)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(**args)


def test_get_ops_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown kernels kind"):
        get_ops("cuda")
