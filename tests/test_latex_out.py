"""LaTeX out: a loss prints as its definition reads (lossdsl.latex_out), for Jupyter and `lossdsl show`."""

from __future__ import annotations

import re

import pytest

import lossdsl
from lossdsl import from_latex, stdlib
from lossdsl.latex_out import name_tex, number_tex


def balanced(tex: str) -> bool:
    """Braces nest, and every \\left, \\begin has its \\right, \\end (what a LaTeX renderer would reject)."""
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return (depth == 0 and tex.count(r"\left") == tex.count(r"\right")
            and tex.count(r"\begin{") == tex.count(r"\end{"))


def test_a_formula_prints_as_written_not_as_the_stabilised_ir():
    loss = lossdsl.parse("-alpha*(1-p)^gamma*log(p)")
    assert loss.latex() == r"\mathcal{L} = -\alpha \left(1 - p\right)^{\gamma} \log\left(p\right)"
    assert "Piecewise" not in loss.latex() and loss._repr_latex_() == f"$\\displaystyle {loss.latex()}$"


def test_statements_are_aligned_rows_with_the_loss_last():
    tex = stdlib.get("info_nce").latex()
    assert tex.startswith(r"\begin{aligned} s_{i,j} &= \frac{\sum_{d} ")
    assert tex.endswith(r"\mathcal{L}_{\text{info\_nce}} &= -s_{i,i} + \operatorname{logsumexp}_{j}\left(s_{i,j}"
                        r"\right) \end{aligned}")


def test_branches_reductions_and_weighted_means():
    huber = stdlib.get("huber_loss").latex()
    assert r"\begin{cases} 0.5 \left(\min\left(e, \delta\right)\right)^{2} & \text{if } e < \delta \\ " \
           r"\delta \left(e - 0.5 \delta\right) & \text{otherwise} \end{cases}" in huber
    ce = stdlib.get("cross_entropy").latex()
    assert r"\left[\log\operatorname{softmax}_{c}\left(\mathrm{input}\right)\right]_{n,\mathrm{target}}" in ce
    assert r"\text{reduced by a mean weighted by }" in ce
    supcon = stdlib.get("supcon_loss").latex()
    assert r"\sum_{j \neq i} \left[y_{j} = y_{i}\right]" in supcon


@pytest.mark.parametrize("name", stdlib.names())
def test_every_stdlib_loss_prints_balanced_latex(name):
    tex = stdlib.get(name).latex()
    assert balanced(tex), tex
    assert tex.startswith((r"\mathcal{L}", r"\begin{aligned}")) and "At(" not in tex


def test_latex_in_and_out_agree_on_a_paper_formula():
    loss = from_latex(r"\mathcal{L}_{Sq} = \frac{1}{2} \alpha (x - y)^2")
    assert loss.latex() == r"\mathcal{L}_{\text{sq}} = \frac{1}{2} \alpha \left(x - y\right)^{2}"


def test_names_and_numbers():
    assert [name_tex(n) for n in ("alpha", "lambda_", "y_hat", "k_pos", "p_t", "a1", "margin", "nu", "*s")] == [
        r"\alpha", r"\lambda", r"\hat{y}", "k_{+}", "p_{t}", "a_{1}", r"\mathrm{margin}", r"\mathrm{nu}", "s"]
    assert [number_tex(v) for v in (2, 0.5, 1e-5, 2.5e-8)] == ["2", "0.5", "10^{-5}", r"2.5 \cdot 10^{-8}"]


def test_a_loss_without_source_falls_back_to_the_ir():
    import dataclasses

    import sympy as sp

    parsed = lossdsl.parse("x^2")
    loss = type(parsed)(dataclasses.replace(parsed.ir, source=""))  # the parse cache's entry stays as it is
    assert loss.latex() == sp.latex(loss.expr)
