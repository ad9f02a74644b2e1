"""Each stability rule: it fires on its example, it does not fire where its precondition fails, and it
preserves the value: the naive formula in mpmath (lossdsl.mpeval, independent of torch) against the rewritten
formula in mpmath and against the rewritten module in float64."""

from __future__ import annotations

import math
import re

import mpmath
import pytest
import torch

import lossdsl
from lossdsl import ir, rewrite
from lossdsl.rewrite import RULES, fired
from lossdsl.stability import computed, reference

mp = mpmath.mp


def sample(loss: ir.LossIR, lo: float, hi: float, seed: int, n: int = 3) -> dict[str, torch.Tensor]:
    """Inputs by kind (axis k of the loss has size n + k); real inputs uniform in the rule's range [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    axes = list(dict.fromkeys(loss.axis_of.values()))
    size = {a: n + k for k, a in enumerate(axes)}
    out = {}
    for i in loss.inputs:
        shape = tuple(size[loss.axis_of[a]] for a in i.axes) if i.axes is not None else (n + 2,)
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        if i.kind == "index":
            out[i.name] = torch.randint(0, size[loss.axis_of[i.kind_arg]], shape, generator=g)
        elif i.kind == "binary":
            out[i.name] = (u < 0.5).double()
        elif i.kind == "prob":
            out[i.name] = 0.01 + 0.98 * u
        elif i.kind == "positive":
            out[i.name] = 0.1 + u
        else:
            out[i.name] = lo + (hi - lo) * u
    return out


def close(a, b, rel: float) -> bool:
    if not mp.isfinite(b):
        return True  # the naive value is NaN/inf there: the rewrite may (and should) differ
    with mp.workdps(60):
        return abs(mp.mpf(a) - b) <= rel * max(abs(b), mp.mpf(1e-300)) + mp.mpf(1e-300)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rule_fires(rule):
    assert rule.name in fired(lossdsl.parse(rule.fires).ir)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rule_does_not_fire_outside_its_precondition(rule):
    loss = lossdsl.parse(rule.not_fires).ir
    assert rule.name not in fired(loss)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rule_preserves_value(rule):
    loss = lossdsl.parse(rule.fires).ir
    naive = rewrite.naive(loss)
    assert naive.expr != loss.expr
    for seed in range(2):
        inputs = sample(loss, *rule.sample, seed)
        want, _, unsettled = reference(naive, {}, inputs, torch.float64, grad=False, oracle=loss)
        got, _ = computed(loss, {}, inputs, torch.float64)
        finite = [w for w in want if mp.isfinite(w)]
        assert len(finite) >= len(want) // 2, "the sample should mostly lie where the naive formula is finite"
        assert unsettled == len(want) - len(finite), "the naive formula in mpmath must reach the rewritten value"
        assert all(close(x, w, 1e-12) for x, w in zip(got, want, strict=True)), (rule.name, got, want)


def test_rules_are_data():
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    required = {"log_sigmoid", "log_one_minus_sigmoid", "log_one_plus_exp", "log1p", "expm1", "logsumexp",
                "softmax", "log_of_softmax", "logaddexp", "log_cosh", "xlogx", "xlog_ratio", "norm_at_zero",
                "sqrt_at_zero", "prob_log_clamp", "empty_ratio", "frac_pow_at_zero"}
    assert required <= set(names)
    assert all(r.precondition and r.pattern and r.result for r in RULES)


def test_notes_say_where():
    src = "loss l(x, y: binary):\n    ls = log(sigmoid(x))\n    -y * ls\n"
    notes = [n for n in lossdsl.parse(src).ir.notes if n.get("rule")]
    assert notes == [{"pass": "stability", "rule": "log_sigmoid", "where": "ls", "before": "log(sigmoid(x))",
                      "after": "logsigmoid(x)"}]


def test_prob_clamp_matches_torch_bce_at_0_and_1():
    p = torch.tensor([0.0, 1.0, 1e-50, 0.3, 1.0 - 1e-16], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    mod = lossdsl.compile("loss b(p: prob, y: binary):\n    -(y*log(p) + (1 - y)*log(1 - p))\n", reduction="none")
    got = mod(p, y)
    want = torch.nn.functional.binary_cross_entropy(p.detach(), y, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    got.sum().backward()
    assert torch.isfinite(p.grad).all()



def test_stdlib_bce_clamps_each_log_once():
    """The stdlib writes max(log(p), -100) as torch documents it; the prob_log rule already clamps the log,
    so implied_clamp drops the outer max: two clamps in the source, not four, same values and gradients."""
    loss = lossdsl.stdlib.get("binary_cross_entropy")
    assert "implied_clamp" in fired(loss.ir)
    assert loss.to_source().split("\nclass ")[-1].count(".clamp(") == 2  # the class, not the prelude
    p = torch.tensor([0.0, 1.0, 1e-50, 1e-6, 0.3, 1 - 1e-6, 1 - 1e-16, 0.5], dtype=torch.float64,
                     requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5], dtype=torch.float64)
    got = torch.autograd.grad(loss.compile()(p, y), p)[0]
    q = p.detach().clone().requires_grad_()
    want = torch.autograd.grad(torch.nn.functional.binary_cross_entropy(q, y), q)[0]
    torch.testing.assert_close(loss.compile()(p, y), torch.nn.functional.binary_cross_entropy(q, y), rtol=1e-12,
                               atol=0)
    unclamped = p * (1 - p) > 1e-12  # torch divides by max(p (1 - p), 1e-12); a clamped log has gradient 0
    torch.testing.assert_close(got[unclamped], want[unclamped], rtol=1e-9, atol=0)
    assert torch.isfinite(got).all() and got[2] == 0

def test_empty_masks_give_a_finite_dice():
    mod = lossdsl.compile(RULES[[r.name for r in RULES].index("empty_ratio")].fires, reduction="none")
    p = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    g = torch.zeros(2, 4, dtype=torch.float64)
    out = mod(p, g)
    assert out.tolist() == [0.0, 0.0]  # empty prediction of an empty mask: Dice 1, loss 0
    out.sum().backward()
    assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("formula, kind, point", [("sqrt(v)", "prob", 0.0), ("(1 - v)^0.5", "prob", 1.0),
                                                   ("sqrt(abs(v))", "real", 0.0), ("v^0.3", "prob", 0.0)])
def test_roots_at_zero_have_finite_gradient(formula, kind, point):
    loss = lossdsl.parse(f"loss l(v: {kind}):\n    {formula}\n").ir
    v = {"v": torch.tensor([point, 0.25], dtype=torch.float64)}
    _, grads = computed(loss, {}, v, torch.float64)
    assert grads["v"][0] == 0 and grads["v"][1] != 0  # 0 at the root, the true derivative away from it
    _, naive = computed(rewrite.naive(loss), {}, v, torch.float64)
    assert not math.isfinite(naive["v"][0]) and naive["v"][1] == grads["v"][1]  # plain torch: inf at the root


def test_focal_power_keeps_torch_semantics_for_integer_gamma():
    src = "loss f(p: prob; gamma = 2.0 >= 0):\n    -(1 - p)^gamma * log(p)\n"
    p = torch.tensor([0.2, 1.0, 0.999], dtype=torch.float64, requires_grad=True)
    for gamma in (0.0, 1.0, 2.0, 0.5):
        mod = lossdsl.compile(src, gamma=gamma, reduction="none")
        want = -(1 - p.detach()) ** gamma * torch.log(p.detach())
        torch.testing.assert_close(mod(p), want, rtol=1e-14, atol=0)
        (g,) = torch.autograd.grad(mod(p).sum(), p)
        assert torch.isfinite(g).all()


SUPCON_PAPER = """loss s(z[i, d], y[i]: int; tau = 0.1 > 0):
    c[i, j] = sum_d(z[i, d] * z[j, d]) / tau
    -sum_{j != i}([y[j] == y[i]] * log(exp(c[i, j]) / sum_{k != i}(exp(c[i, k]))))
"""


def test_a_ratio_read_at_a_summed_index_stays_quadratic():
    """log(exp(s[i, j]) / sum_k exp(s[i, k])) with j summed outside: shifting by s[i, j] would build an
    [i, j, k] temporary, so the rule keeps s[i, j] - logsumexp_k s[i, k] (overflow-free, O(n^2))."""
    loss = lossdsl.parse(SUPCON_PAPER)
    assert fired(loss.ir) == ["log_softmax"]
    assert "softplus" not in str(loss.ir.expr) and "logsigmoid" not in str(loss.ir.expr)
    assert not any(len(spec.split("->")[1]) > 2 for spec in re.findall(r"einsum\('([^']*)'", loss.to_source()))
    z = (torch.randn(5, 3, dtype=torch.float64) * 30).requires_grad_(True)
    y = torch.tensor([0, 1, 0, 1, 1])
    got = lossdsl.compile(SUPCON_PAPER, reduction="none")(z, y)
    s = z @ z.t() / 0.1
    lp = s - torch.logsumexp(s.masked_fill(torch.eye(5, dtype=torch.bool), -math.inf), 1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~torch.eye(5, dtype=torch.bool)
    torch.testing.assert_close(got, -(lp * pos).sum(1), rtol=1e-12, atol=1e-12)


def test_lse_minus_member_keeps_quadratic_cost():
    src = "loss s(c[i, j], y[i, j]: binary):\n    sum_j(y * (logsumexp_k(c[i, k]) - c[i, j]))\n"
    assert "lse_minus_member" not in fired(lossdsl.parse(src).ir)


def test_rules_reach_into_the_branches_of_a_where():
    assert fired(lossdsl.parse("where(x > 0, log(sigmoid(x)), 0)").ir) == ["log_sigmoid"]


@pytest.mark.parametrize("name", ["stirling", "poisson_nll_loss_full", "kl_div"])
def test_unused_branches_and_xlogy_at_zero_have_finite_gradients(name):
    """Stirling's term where(t > 1, t log t - t + log(2 pi t)/2, 0) and KL's xlogy(p, p) at p = 0: torch's
    own functions give NaN gradients for the target there; the guarded forms give finite ones, same values."""
    t = torch.tensor([-2.0, 0.0, 0.5, 1.0, 3.0, 40.0], dtype=torch.float64, requires_grad=True)
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)
    mod = lossdsl.stdlib.get(name).compile(reduction="none")
    args = (t,) if name == "stirling" else (x, t)
    out = mod(*args)
    (g,) = torch.autograd.grad(out[1:].sum(), t)  # t = -2 is outside KL's domain (NaN value, as in torch)
    assert torch.isfinite(g[1:]).all()
    if name == "poisson_nll_loss_full":
        want = torch.nn.functional.poisson_nll_loss(x, t.detach(), full=True, reduction="none")
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
