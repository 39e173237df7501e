"""Triton bias + GeLU against its plain-PyTorch reference: output and both gradients (runs under TRITON_INTERPRET)."""

import pytest
import torch

from spanbert_train.kernels import get_ops
from spanbert_train.kernels.bias_gelu import bias_gelu, bias_gelu_reference

# max-norm relative error allowed per dtype; fp16 is compared with an fp32 reference of the same (rounded) inputs
TOL = {torch.float32: 1e-4, torch.float16: 2e-3}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)).item()


def run(fn, x, b, dy):
    x = x.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    y = fn(x, b)
    y.backward(dy)
    return y.detach(), x.grad, b.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (3, 5, 37), (2, 129), (65, 7)])
def test_matches_reference(shape, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (3 * torch.randn(shape, generator=gen)).to(dtype)  # wide enough to reach both erf tails
    b = torch.randn(shape[-1], generator=gen).to(dtype)
    dy = torch.randn(shape, generator=gen).to(dtype)
    got = run(bias_gelu, x, b, dy)
    want = run(bias_gelu_reference, x.float(), b.float(), dy.float())
    for name, g, w in zip(("y", "dx", "db"), got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape, name
        assert rel_err(g, w) < TOL[dtype], name


def test_get_ops_triton_uses_kernel():
    ops = get_ops("triton")
    x, b = torch.randn(4, 9), torch.randn(9)
    assert ops.kind == "triton"
    torch.testing.assert_close(ops.bias_gelu(x, b), bias_gelu_reference(x, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "x, b",
    [
        (torch.randn(4, 9), torch.randn(8)),
        (torch.randn(4, 9), torch.randn(3, 3)),
        (torch.randint(0, 3, (4, 9)), torch.randint(0, 3, (9,))),
    ],
)
def test_rejects_bad_inputs(x, b):
    with pytest.raises(ValueError, match="bias_gelu"):
        bias_gelu(x, b)
