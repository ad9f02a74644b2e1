"""Half-precision inputs: the module computes in float32 and returns the input's dtype; under torch.autocast
the loss still computes in float32 (autocast would otherwise run its matmuls in half precision)."""

from __future__ import annotations

import pytest
import torch

import lossdsl

CE = "loss ce(x[n, c], y[n]: index(c)):\n    -log(exp(x[n, y]) / sum_c(exp(x[n, c])))\n"
SIM = ("loss sim(q[i, d], k[j, d]; tau = 0.05 > 0):\n    s[i, j] = sum_d(q[i, d]*k[j, d]) / tau\n"
       "    -log(exp(s[i, i]) / sum_j(exp(s[i, j])))\n")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_half_inputs_return_their_dtype_with_the_float32_value(dtype, reduction):
    mod = lossdsl.compile(CE, reduction=reduction)
    x = (torch.randn(6, 5, generator=torch.Generator().manual_seed(0)) * 300).to(dtype)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    out = mod(x, y)
    assert out.dtype == dtype
    want = torch.nn.functional.cross_entropy(x.float(), y, reduction=reduction)  # computed in float32
    torch.testing.assert_close(out, want.to(dtype), rtol=0, atol=0)


def test_half_gradients_flow_back_in_the_input_dtype():
    mod = lossdsl.compile(CE)
    x = (torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) * 1e4).half().requires_grad_(True)
    mod(x, torch.tensor([0, 1, 2, 0])).backward()
    assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()
    xf = x.detach().float().requires_grad_(True)
    torch.nn.functional.cross_entropy(xf, torch.tensor([0, 1, 2, 0])).backward()
    torch.testing.assert_close(x.grad, xf.grad.half(), rtol=1e-2, atol=1e-4)


def test_plain_half_precision_torch_overflows_where_the_module_does_not():
    x = torch.tensor([[12.0, 0.0]], dtype=torch.float16) * 1000
    assert not torch.isfinite(torch.exp(x).sum())  # the naive formula in half precision
    assert torch.isfinite(lossdsl.compile(CE)(x, torch.tensor([0])))


def test_autocast_keeps_the_loss_in_float32():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    mod = lossdsl.compile(SIM)
    plain = mod(q, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = mod(q, k)
        assert torch.is_autocast_enabled("cpu")  # switched off only inside the loss
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_autocast_outputs_of_a_model_feed_the_loss():
    g = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(16, 5)
    x = torch.randn(8, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        out = lossdsl.compile(CE)(logits, torch.arange(8) % 5)
    assert out.dtype == torch.bfloat16
    out.float().backward()
    assert torch.isfinite(layer.weight.grad).all()
    want = torch.nn.functional.cross_entropy(logits.float(), torch.arange(8) % 5)
    torch.testing.assert_close(out, want.to(torch.bfloat16), rtol=0, atol=0)


def test_a_bfloat16_critic_gets_bfloat16_inputs() -> None:
    """bfloat16 inputs are computed in float32; a user's module (an `fn` input) is handed them in its own
    parameters' dtype and its result is computed on in float32. It got float32: 'mat1 and mat2 must have the
    same dtype'. (A float32 critic with bfloat16 inputs, test_generative, gets float32.)"""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(torch.bfloat16)
    real, u = torch.randn(5, 3).bfloat16(), torch.rand(5).bfloat16()
    fake = torch.randn(5, 3).bfloat16().requires_grad_(True)
    gp = lossdsl.stdlib.wgan_gp_d_loss()
    out = gp(critic, real, fake, u)
    assert out.dtype == torch.bfloat16 and torch.autograd.grad(out, fake)[0].dtype == torch.bfloat16
    wide = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    wide.load_state_dict({k: v.double() for k, v in critic.state_dict().items()})
    ref = gp(wide, real.double(), fake.detach().double(), u.double())
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=1e-2)
