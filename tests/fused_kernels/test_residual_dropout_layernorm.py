"""Triton residual + dropout + LayerNorm against its reference: output and all five gradients, same dropout mask."""

import pytest
import torch

from spanbert_train.kernels import get_ops
from spanbert_train.kernels.residual_dropout_layernorm import (
    dropout_keep_mask,
    residual_dropout_layernorm,
    residual_dropout_layernorm_reference,
)

TOL = {torch.float32: 1e-4, torch.float16: 5e-3}
EPS = 1e-12  # BERT's LayerNorm epsilon (SPEC §5)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)).item()


def make_inputs(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    h = shape[-1]
    x, residual = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    bias, ln_b = torch.randn(h, generator=gen), torch.randn(h, generator=gen)
    ln_w = 1 + 0.1 * torch.randn(h, generator=gen)
    dy = torch.randn(shape, generator=gen)
    return [t.to(dtype) for t in (x, bias, residual, ln_w, ln_b)], dy.to(dtype)


def run(fn, inputs, dy, **kwargs):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*inputs, **kwargs)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in inputs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("p, training", [(0.0, True), (0.1, True), (0.5, True), (0.1, False)])
@pytest.mark.parametrize("shape", [(1, 7), (13, 37), (2, 3, 64), (4, 3), (5, 130)])
def test_matches_reference(shape, p, training, dtype):
    inputs, dy = make_inputs(shape, dtype, seed=shape[-1])
    seed = 1234 + shape[0]
    got = run(residual_dropout_layernorm, inputs, dy, p=p, eps=EPS, training=training, seed=seed)
    mask = dropout_keep_mask(seed, shape, p)
    want = run(
        residual_dropout_layernorm_reference,
        [t.float() for t in inputs],
        dy.float(),
        p=p,
        eps=EPS,
        training=training,
        keep_mask=mask,
    )
    for name, g, w in zip(("y", "dx", "dbias", "dresidual", "dln_weight", "dln_bias"), got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape, name
        assert rel_err(g, w) < TOL[dtype], name
    if training and p > 0:
        # the mask backward regenerates is the forward one: dropped elements get no gradient
        assert torch.all(got[1][~mask] == 0)


def test_mask_keeps_about_one_minus_p_and_depends_on_seed():
    p = 0.1
    a = dropout_keep_mask(7, (64, 256), p)
    assert abs(a.float().mean().item() - (1 - p)) < 0.01  # 16k draws: std of the fraction ~0.0023
    assert torch.equal(a, dropout_keep_mask(7, (64, 256), p))
    assert not torch.equal(a, dropout_keep_mask(8, (64, 256), p))
    # an element's draw depends only on its flat index, not on how the tensor is shaped
    assert torch.equal(dropout_keep_mask(7, (4, 16, 256), p).reshape(64, 256), a)


def test_default_seed_follows_torch_manual_seed():
    inputs, _ = make_inputs((6, 32), torch.float32, seed=0)
    outs = []
    for _ in range(2):
        torch.manual_seed(42)
        outs.append(residual_dropout_layernorm(*inputs, p=0.3, eps=EPS, training=True))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], residual_dropout_layernorm(*inputs, p=0.3, eps=EPS, training=True))


def test_get_ops_triton_signature():
    inputs, _ = make_inputs((3, 16), torch.float32, seed=1)
    got = get_ops("triton").residual_dropout_layernorm(*inputs, 0.1, EPS, False)
    want = residual_dropout_layernorm_reference(*inputs, 0.1, EPS, False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"residual": torch.randn(3, 15)}, "x and residual"),
        ({"bias": torch.randn(15)}, "bias must have shape"),
        ({"ln_weight": torch.ones(3, 16)}, "ln_weight must have shape"),
        ({"x": torch.ones(3, 16, dtype=torch.int64)}, "x must be floating point"),
        ({"p": 1.0}, r"p must be in \[0, 1\)"),
    ],
)
def test_rejects_bad_inputs(change, match):
    (x, bias, residual, ln_w, ln_b), _ = make_inputs((3, 16), torch.float32, seed=2)
    args = dict(x=x, bias=bias, residual=residual, ln_weight=ln_w, ln_bias=ln_b, p=0.1, eps=EPS, training=True)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        residual_dropout_layernorm(**args)
