"""lossdsl.verify: passes on correct gradients, catches injected faults; the input strategies' domains."""

from __future__ import annotations

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import gradient, ir
from lossdsl.strategies import DOMAINS, inputs, sample, tensors

CE = "loss ce(x[n, c]: logits, y[n]: index(c)):\n    -log_softmax_c(x)[n, y]"
DICE = """loss dice(p[n, c, *s]: prob, g[n, c, *s]: binary; eps = 1e-5 > 0):
    1 - (2*sum_{*s}(p*g) + eps) / (sum_{*s}(p^2) + sum_{*s}(g^2) + eps)"""
CENTER = """loss center(f[n, d], y[n]: index(k); c[k, d]: learnable = 0):
    0.5 * sum_d((f[n, d] - c[y, d])^2)"""

PREFIX = "loss cum(x[n, k], y[n, k]):\n    sum_k(y * sum_{m <= k}(x[n, m])^2 + max_{m >= k}(x[n, m]))"


@pytest.mark.parametrize("text", [CE, DICE, CENTER, "softplus(x) - x*y", PREFIX])
def test_correct_gradients_pass(text):
    report = lossdsl.verify(text, trials=2)
    assert report.passed and bool(report)
    assert report.trials == 2
    for check in report.checks:
        assert check.rel_autograd <= 1e-9 and check.rel_fd <= 1e-5
    assert "PASS" in str(report)


def test_learnable_parameters_are_checked_too():
    report = lossdsl.verify(CENTER)
    assert [c.name for c in report.checks] == ["f", "c"]
    assert report["c"].abs_fd > 0  # finite differences were taken through the parameter


def test_injected_fault_in_a_reverse_rule_is_caught(monkeypatch):
    wrong = lambda d, a, adj: d.push(a.body, adj)  # log_softmax treated as the identity  # noqa: E731
    monkeypatch.setitem(gradient.RULES, ir.LogSoftmax, wrong)
    report = lossdsl.verify(CE)
    assert not report.passed
    assert report["x"].rel_autograd > 0.1 and report["x"].rel_fd > 0.1
    assert "FAIL" in str(report)


def test_injected_fault_in_an_elementwise_derivative_is_caught(monkeypatch):
    monkeypatch.setattr(ir.softplus, "fdiff", lambda self, argindex=1: 1.01 * ir.sigmoid(self.args[0]))
    report = lossdsl.verify("softplus(x) - x*y")
    assert not report.passed and report["x"].rel_autograd > 1e-4 and report["y"].passed


def test_injected_fault_in_simplification_is_caught(monkeypatch):
    assert lossdsl.verify("(x - y)^3 + x^2").passed
    monkeypatch.setitem(gradient.LOCAL_RULES, sp.Pow, [lambda e: e.base if e.exp == 2 else None])  # u^2 → u
    assert not lossdsl.verify("(x - y)^3 + x^2").passed


@settings(max_examples=10, deadline=None)
@given(st.data())
def test_verify_accepts_inputs_drawn_by_the_strategies(data):
    loss = lossdsl.parse(DICE)
    drawn = data.draw(inputs(loss))
    report = lossdsl.verify(loss, inputs=drawn)
    assert report.passed and report.trials == 1


@pytest.mark.parametrize("kind", sorted(DOMAINS))
def test_sampled_values_lie_in_the_kind_domain(kind):
    gen = torch.Generator().manual_seed(0)
    t = sample(kind, (400,), gen, classes=5)
    spec = DOMAINS[kind]
    if spec[0] == "float":
        assert t.dtype == torch.float64 and spec[1] <= t.min() and t.max() <= spec[2]
    elif spec[0] == "choice":
        assert set(t.tolist()) == set(spec[1])
    else:
        high = 4 if spec[2] is None else spec[2]
        assert t.dtype == torch.int64 and t.min() >= spec[1] and t.max() <= high


@settings(max_examples=20, deadline=None)
@given(tensors("index", (3, 4), classes=6), tensors("prob", (5,)))
def test_hypothesis_tensors_have_the_shape_and_domain(labels, probs):
    assert labels.shape == (3, 4) and labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 6
    assert probs.shape == (5,) and probs.min() >= 0.05 and probs.max() <= 0.95
