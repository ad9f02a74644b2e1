"""lossdsl.chunked: a pipeline loss of a linear layer's output, chunk by chunk, against the unchunked torch loss."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.chunked import linear_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from measure import peak_bytes  # the benchmarks' allocator-event peak

D = torch.float64


def _layer(n: int = 37, d: int = 16, v: int = 50, dtype: torch.dtype = D):
    gen = torch.Generator().manual_seed(0)
    h, w, b = (torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_() for shape in ((n, d), (v, d), (v,)))
    y = torch.randint(v, (n,), generator=gen)
    y[3] = -100
    return h, w, b, y


def _assert_same(out, ref, leaves) -> None:
    torch.testing.assert_close(out, ref)
    for got, want in zip(torch.autograd.grad(1.7 * out, leaves), torch.autograd.grad(1.7 * ref, leaves), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk", [8, 37, 1000])
def test_cross_entropy_matches_torch_with_weights_and_ignore_index(reduction: str, chunk: int) -> None:
    h, w, b, y = _layer()
    cw = torch.rand(50, dtype=D)
    out = linear_loss("cross_entropy", chunk=chunk, reduction=reduction, weight=cw)(h, w, y, bias=b)
    ref = F.cross_entropy(h @ w.T + b, y, weight=cw, reduction=reduction)
    _assert_same(out, ref, (h, w, b))


def test_label_smoothing_and_no_bias() -> None:
    h, w, _, y = _layer()
    out = linear_loss("cross_entropy_smoothed", chunk=10, label_smoothing=0.1)(h, w, y)
    _assert_same(out, F.cross_entropy(h @ w.T, y, label_smoothing=0.1), (h, w))


def test_a_users_loss_with_a_z_term() -> None:
    """Any row-independent loss: cross-entropy plus PaLM's z-loss, written in the language."""
    src = "loss zce(x[n, c], y[n]: index(c); z = 0.01):\n    -log_softmax_c(x)[n, y] + z * logsumexp_c(x)^2"
    h, w, b, y = _layer()
    y = y.clamp(min=0)
    out = linear_loss(lossdsl.parse(src), chunk=6)(h, w, y, bias=b)
    logits = h @ w.T + b
    ref = (F.cross_entropy(logits, y, reduction="none") + 0.01 * torch.logsumexp(logits, 1) ** 2).mean()
    _assert_same(out, ref, (h, w, b))


def test_sequence_hidden_states_need_no_reshape() -> None:
    """[batch, sequence, D] hidden states and [batch, sequence] targets, as a language model has them."""
    h, w, b, y = _layer(n=24)
    h3 = h.detach().reshape(4, 6, 16).requires_grad_()
    out = linear_loss("cross_entropy", chunk=5)(h3, w, y.reshape(4, 6), bias=b)
    ref = F.cross_entropy((h3 @ w.T + b).reshape(24, 50), y)
    _assert_same(out, ref, (h3, w, b))


def test_all_rows_ignored_is_nan_with_zero_gradients_like_torch() -> None:
    h, w, b, _ = _layer(n=5)
    y = torch.full((5,), -100)
    out = linear_loss("cross_entropy", chunk=2)(h, w, y, bias=b)
    ref = F.cross_entropy(h @ w.T + b, y)
    assert out.isnan() and ref.isnan()
    for got, want in zip(torch.autograd.grad(out, (h, w, b)), torch.autograd.grad(ref, (h, w, b)), strict=True):
        assert torch.equal(got, want) and not want.any()


def test_half_precision_is_accumulated_in_float32() -> None:
    h, w, _, y = _layer(n=64, d=32, v=300)
    out = linear_loss("cross_entropy", chunk=16)(*(t.detach().bfloat16().requires_grad_() for t in (h, w)), y)
    ref = F.cross_entropy(h.detach() @ w.detach().T, y)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_never_holds_the_full_logits() -> None:
    h = torch.randn(512, 32, requires_grad=True)
    w = torch.randn(4096, 32, requires_grad=True)
    y = torch.randint(4096, (512,))
    logits_bytes = 512 * 4096 * 4
    chunked = linear_loss("cross_entropy", chunk=32)  # [32, 4096]: 0.5 MB a block

    def run_chunked() -> None:
        torch.autograd.grad(chunked(h, w, y), (h, w))

    def full() -> None:
        torch.autograd.grad(F.cross_entropy(h @ w.T, y), (h, w))

    cpu = torch.device("cpu")
    assert peak_bytes(full, cpu) > 2 * logits_bytes
    assert peak_bytes(run_chunked, cpu) < logits_bytes / 2


@pytest.mark.parametrize("name", ["info_nce", "ohem_cross_entropy"])
def test_a_loss_that_couples_rows_is_refused(name: str) -> None:
    """info_nce's logsumexp runs over the batch, OHEM ranks every row against all others."""
    with pytest.raises(lossdsl.LossError, match=r"couples the rows of .* not independent"):
        linear_loss(name)


@pytest.mark.parametrize("src", [
    "loss a(x[n, c], y[n]: index(c)):\n    -log_softmax_c(x)[n, y] / N",  # the size of the rows' axis
    "loss a(x[n, c]):\n    x[n, 0] - x[0, 0]",  # another row
    "loss a(x[n, c], t[c, n]):\n    sum_c(x * t)",  # an input holding the rows' axis second
])
def test_row_coupling_by_size_other_row_or_layout_is_refused(src: str) -> None:
    with pytest.raises(lossdsl.LossError, match=r"couples the rows|cannot be cut"):
        linear_loss(lossdsl.parse(src))


def test_bad_calls_are_clear_errors() -> None:
    h, w, _, y = _layer()
    ce = linear_loss("cross_entropy")
    with pytest.raises(lossdsl.LossError, match="takes h, weight and 1 more input"):
        ce(h, w)
    with pytest.raises(lossdsl.LossError, match=r"must start with h's leading shape \(37,\)"):
        ce(h, w, y[:10])
    with pytest.raises(lossdsl.LossError, match="only h, weight and bias get gradients"):
        linear_loss("cross_entropy_probs")(h, w, torch.rand(37, 50, dtype=D, requires_grad=True))
    with pytest.raises(lossdsl.ParameterError, match="'mean' or 'sum'"):
        linear_loss("cross_entropy", reduction="none")
    with pytest.raises(lossdsl.InputError, match="class index 77 outside"):
        ce(h, w, torch.full((37,), 77))

