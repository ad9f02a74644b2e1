"""LaTeX input: the textbook formulas (shared/references/common-losses-formulas.md) read into losses that
agree numerically with the stdlib definitions.

The issue's twelve and the stdlib loss each is checked against: cross-entropy → cross_entropy (on softmax and
one-hot), focal → sigmoid_focal_loss (with RetinaNet's definition of alpha_t added), Huber cases → huber_loss,
log-cosh → log_cosh_loss, Dice → dice_loss, IoU → jaccard_loss, Tversky → tversky_loss, triplet → triplet_loss,
contrastive → contrastive_loss (given the distance d, as the formula is), InfoNCE → info_nce (per query),
KL → kl_div, center → center_loss; also BCE, hinge, MSE and NLL.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import LatexError, from_latex, stdlib

torch.manual_seed(0)
D = torch.float64

# The formulas as the textbook prints them (focal: plus the definition of alpha_t from the RetinaNet paper).
CE = r"\mathcal{L} = -\frac{1}{N}\sum_{i=1}^{N}\sum_{c=1}^{C} y_{i,c} \log(p_{i,c})"
BCE = r"\mathcal{L} = -\frac{1}{N}\sum_{i=1}^{N} \left[ y_i \log(\sigma(x_i)) + (1-y_i)\log(1-\sigma(x_i)) \right]"
FOCAL = r"""\mathcal{L}_{FL} = -\frac{1}{N}\sum_{i=1}^{N} \alpha_t (1 - p_t)^\gamma \log(p_t), \quad
p_t =
\begin{cases}
p_i & \text{if } y_i=1 \\
1-p_i & \text{if } y_i=0
\end{cases}, \quad
\alpha_t = \begin{cases} \alpha & \text{if } y_i = 1 \\ 1 - \alpha & \text{otherwise} \end{cases}"""
HINGE = r"\mathcal{L} = \max(0, 1 - y \cdot f(x)), \quad y \in \{-1, +1\}"
MSE = r"\mathcal{L} = \frac{1}{N}\sum_{i=1}^{N} (y_i - \hat{y}_i)^2"
HUBER = r"""\mathcal{L}_\delta =
\begin{cases}
\frac{1}{2}(y - \hat{y})^2 & \text{if } |y-\hat{y}| \leq \delta \\
\delta |y - \hat{y}| - \frac{1}{2}\delta^2 & \text{otherwise}
\end{cases}"""
LOG_COSH = (r"\mathcal{L} = \frac{1}{N}\sum_{i=1}^{N} \log(\cosh(y_i - \hat{y}_i)), \quad "
            r"\cosh(x)=\frac{e^x + e^{-x}}{2}")
DICE = r"\mathcal{L}_{Dice} = 1 - \frac{2\sum_i p_i g_i + \epsilon}{\sum_i p_i^2 + \sum_i g_i^2 + \epsilon}"
IOU = r"\mathcal{L}_{IoU} = 1 - \frac{\sum_i p_i g_i}{\sum_i p_i + \sum_i g_i - \sum_i p_i g_i + \epsilon}"
TVERSKY = (r"\mathcal{L}_{Tversky} = 1 - \frac{\sum p_i g_i}{\sum p_i g_i + \beta \sum p_i(1-g_i) + "
           r"\gamma \sum (1-p_i)g_i + \epsilon}")
TRIPLET = r"\mathcal{L} = \max( \|f(a)-f(p)\|_2 - \|f(a)-f(n)\|_2 + \text{margin},\ 0 )"
CONTRASTIVE = r"\mathcal{L} = (1-y) \cdot d^2 + y \cdot \max(\text{margin} - d,\ 0)^2, \quad y \in \{0,1\}"
INFO_NCE = r"\mathcal{L} = -\log \frac{\exp(q \cdot k_+ / \tau)}{\sum_{i=0}^{K} \exp(q \cdot k_i / \tau)}"
KL = r"KL(P\|Q) = \sum_i P(i) \log \frac{P(i)}{Q(i)}"
CENTER = r"\mathcal{L}_c = \frac{1}{2} \sum_{i=1}^{m} \|x_i - c_{y_i}\|_2^2"
NLL = r"\mathcal{L} = -\frac{1}{N}\sum_{i=1}^{N} \log(p_{i, y_i})"


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.to(D), b.to(D), rtol=1e-9, atol=1e-9)


def test_cross_entropy_matches_stdlib_on_softmax_and_one_hot():
    x, labels = torch.randn(6, 4, dtype=D), torch.randint(0, 4, (6,))
    got = from_latex(CE).compile()(y=F.one_hot(labels, 4).to(D), p=x.softmax(1))
    close(got, stdlib.cross_entropy()(x, labels))


def test_binary_cross_entropy_matches_stdlib_and_is_stable_for_large_logits():
    x, y = torch.tensor([-80.0, -2.0, 0.5, 90.0], dtype=D), torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=D)
    loss = from_latex(BCE)
    close(loss.compile()(y=y, x=x), stdlib.binary_cross_entropy_with_logits()(x, y))
    assert "logsigmoid" in loss.lossdsl_source  # log(sigma(x)) read in its stable form


def test_focal_with_cases_matches_stdlib_sigmoid_focal():
    x, y = torch.randn(10, dtype=D), torch.randint(0, 2, (10,)).to(D)
    loss = from_latex(FOCAL)
    assert loss.name == "fl" and [i.name for i in loss.inputs] == ["p", "y"]
    got = loss.compile(alpha=0.25, gamma=2.0)(p=torch.sigmoid(x), y=y)
    close(got, stdlib.sigmoid_focal_loss(alpha=0.25, gamma=2.0)(x, y))


def test_hinge_reads_f_of_x_as_the_model_output_and_skips_the_gloss():
    x, y = torch.randn(8, dtype=D), torch.tensor([1.0, -1.0] * 4, dtype=D)
    loss = from_latex(HINGE)
    assert [i.name for i in loss.inputs] == ["y", "f_x"]
    assert any("gloss" in n for n in loss.latex_notes)
    close(loss.compile(reduction="none")(y=y, f_x=x), stdlib.hinge_loss(reduction="none")(x, y))


def test_mse_and_log_cosh_match_stdlib():
    a, b = torch.randn(7, dtype=D), 3 * torch.randn(7, dtype=D)
    close(from_latex(MSE).compile()(y=a, y_hat=b), stdlib.mse_loss()(b, a))
    close(from_latex(LOG_COSH).compile()(y=a, y_hat=b), stdlib.log_cosh_loss()(b, a))


def test_huber_cases_match_stdlib_on_both_branches():
    a = torch.tensor([0.0, 0.3, -0.9, 2.0, -5.0], dtype=D)
    b = torch.zeros(5, dtype=D)
    got = from_latex(HUBER).compile(delta=1.5, reduction="none")(y=a, y_hat=b)
    close(got, stdlib.huber_loss(delta=1.5, reduction="none")(a, b))


@pytest.mark.parametrize(("formula", "name", "params"), [
    (DICE, "dice_loss", {}),
    (IOU, "jaccard_loss", {}),
    (TVERSKY, "tversky_loss", {"beta": 0.3, "gamma": 0.7}),
])
def test_segmentation_overlaps_match_stdlib(formula, name, params):
    p, g = torch.rand(30, dtype=D), (torch.rand(30) > 0.5).to(D)
    got = from_latex(formula).compile(epsilon=1e-5, **params)(p=p, g=g)
    ref = getattr(stdlib, name)(eps=1e-5, reduction="none", **params)(p.view(1, 1, -1), g.view(1, 1, -1))
    close(got, ref.reshape(()))


def test_triplet_norms_give_feature_axes_and_match_stdlib():
    a, p, n = (torch.randn(5, 3, dtype=D) for _ in range(3))
    loss = from_latex(TRIPLET)
    assert [(i.name, len(i.axes)) for i in loss.inputs] == [("f_a", 1), ("f_p", 1), ("f_n", 1)]
    module = loss.compile(margin=1.0)
    got = torch.stack([module(f_a=a[r], f_p=p[r], f_n=n[r]) for r in range(5)])
    close(got, stdlib.triplet_loss(reduction="none")(a, p, n))


def test_contrastive_matches_stdlib_given_the_distance():
    a, b, y = torch.randn(6, 4, dtype=D), torch.randn(6, 4, dtype=D), torch.tensor([0.0, 1.0] * 3, dtype=D)
    d = (a - b).norm(dim=1)
    got = from_latex(CONTRASTIVE).compile(margin=2.0, reduction="none")(y=y, d=d)
    close(got, stdlib.contrastive_loss(margin=2.0, reduction="none")(a, b, y))


def test_info_nce_with_vectors_matches_stdlib_per_query():
    q, k = F.normalize(torch.randn(5, 8, dtype=D), dim=1), F.normalize(torch.randn(5, 8, dtype=D), dim=1)
    loss = from_latex(INFO_NCE, vectors=["q", "k"])
    assert "logsumexp" in loss.lossdsl_source
    module = loss.compile(tau=0.07)
    got = torch.stack([module(q=q[r], k_pos=k[r], k=k) for r in range(5)])
    close(got, stdlib.info_nce(temperature=0.07, reduction="none")(q, k))


def test_kl_of_function_notation_matches_stdlib_kl_div():
    p, q = torch.rand(6, dtype=D).softmax(0), torch.rand(6, dtype=D).softmax(0)
    p[2] = 0.0  # 0 log 0 = 0, as the stdlib's xlogy
    got = from_latex(KL).compile()(P=p, Q=q)
    close(got, stdlib.kl_div(reduction="sum")(q.log(), p))
    close(got, F.kl_div(q.log(), p, reduction="sum"))


def test_center_loss_gathers_the_centre_of_each_label():
    x, y, c = torch.randn(6, 3, dtype=D), torch.tensor([0, 2, 1, 2, 0, 1]), torch.randn(3, 3, dtype=D)
    loss = from_latex(CENTER)
    assert "y[i]: index(k)" in loss.lossdsl_source
    ref = stdlib.center_loss(k=3, reduction="sum").to(D)
    ref(x, y)  # the centres are sized by the first call
    with torch.no_grad():
        ref.centers.copy_(c)
    close(loss.compile()(x=x, c=c, y=y), ref(x, y))


def test_nll_gathers_by_label_like_stdlib_nll_loss():
    p, y = torch.rand(5, 4, dtype=D).softmax(1), torch.randint(0, 4, (5,))
    close(from_latex(NLL).compile()(p=p, y=y), stdlib.nll_loss()(p.log(), y))


def test_same_ir_as_the_language_and_a_name_from_the_left_side():
    from_tex = from_latex(r"\mathcal{L}_{Sq} = \frac{1}{2} \alpha (x - y)^2")
    typed = lossdsl.parse("loss sq(x, y; alpha):\n    0.5 * alpha * (x - y)^2")
    assert from_tex.name == "sq"
    assert (from_tex.expr - typed.expr).simplify() == 0


@pytest.mark.parametrize(("tex", "ref"), [
    (r"[1 - y x]_+", lambda x, y: torch.relu(1 - y * x)),
    (r"\mathbb{1}[x > y] \cdot \sqrt{x^2 + 1}", lambda x, y: (x > y).to(D) * torch.sqrt(x**2 + 1)),
    (r"2\alpha x y + e^{-x}", lambda x, y: 2 * 0.5 * x * y + torch.exp(-x)),
    (r"\frac12 \tanh(x) \times \exp y", lambda x, y: 0.5 * torch.tanh(x) * torch.exp(y)),
    (r"\frac{1}{2}e^2, \quad e = x - y", lambda x, y: 0.5 * (x - y) ** 2),  # e is a variable here, not Euler's
])
def test_small_forms(tex, ref):
    x, y = torch.randn(6, dtype=D), torch.randn(6, dtype=D)
    module = from_latex(tex, inputs=["x", "y"], params={"alpha": 0.5}).compile(reduction="none")
    close(module(x=x, y=y), ref(x, y))


@pytest.mark.parametrize(("tex", "message", "column"), [
    (r"\mathcal{L} = \int p(x) dx", "cannot read \\int", 15),
    (r"\mathcal{L} = \|\nabla_x D(x)\|", "cannot read \\nabla", 17),
    (r"\mathcal{L} = (x - y", "expected ')'", 21),
    (r"\mathcal{L} = x + ", "ends too early", 18),
    (r"\mathcal{L} = \sum p", "without a subscript", 15),
])
def test_unreadable_formulas_give_a_caret_error(tex, message, column):
    with pytest.raises(LatexError) as info:
        from_latex(tex)
    text = str(info.value)
    assert message in text and info.value.column == column
    assert "^" in text.splitlines()[-1]


def test_losses_and_gradients_render_as_latex_in_jupyter():
    loss = from_latex(r"\mathcal{L}_{Sq} = \frac{1}{2} \alpha (x - y)^2")
    shown = loss._repr_latex_()
    assert shown.startswith("$\\displaystyle ") and shown.endswith("$") and "\\alpha" in shown
    grad = loss.grad("x")._repr_latex_()
    assert grad.startswith("$\\displaystyle \\frac{\\partial L}{\\partial x}") and "\\alpha" in grad


def test_indexed_greek_is_a_per_index_parameter_and_greek_in_a_norm_is_a_tensor():
    loss = from_latex(r"\mathcal{L}_{perc} = \sum_{l} \lambda_l \|\phi_l - \psi_l\|_2^2")
    assert "loss perc(phi[l, d], psi[l, d]; lambda_[l]):" in loss.lossdsl_source
    phi, psi, lam = torch.randn(3, 5, dtype=D), torch.randn(3, 5, dtype=D), torch.tensor([1.0, 0.5, 2.0], dtype=D)
    close(loss.compile(lambda_=lam)(phi=phi, psi=psi), (lam * ((phi - psi) ** 2).sum(1)).sum())
    assert "lambda_1" in from_latex(r"\lambda_1 L_{task} + \lambda_2 L_{reg}").lossdsl_source


def test_words_underbraces_and_indexed_words():
    tex = r"L_{Attention} = \underbrace{\sum_{i,j} M_{ij} \cdot (Prediction_{ij} - Target_{ij})^2}_{\text{masked}}"
    loss = from_latex(tex)
    assert loss.name == "attention" and [i.name for i in loss.inputs] == ["M", "Prediction", "Target"]
    m, p, t = torch.rand(3, 4, dtype=D), torch.randn(3, 4, dtype=D), torch.randn(3, 4, dtype=D)
    close(loss.compile()(M=m, Prediction=p, Target=t), (m * (p - t) ** 2).sum())


def test_expectations_are_means_and_nested_applications_are_network_outputs():
    tex = r"\min_G \max_D V(D, G) = \mathbb{E}_{x \sim p_{data}(x)}[\log D(x)] + \mathbb{E}_{z}[\log(1 - D(G(z)))]"
    loss = from_latex(tex)
    assert [i.name for i in loss.inputs] == ["D_x", "D_G_z"]
    real, fake = torch.rand(6, 2, dtype=D), torch.rand(6, 2, dtype=D)
    close(loss.compile()(D_x=real, D_G_z=fake), real.log().mean() + (1 - fake).log().mean())


def test_an_index_used_as_a_value_is_its_position():
    loss = from_latex(r"\sum_{i=1}^{N} i \, x_i")
    x = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    close(loss.compile()(x=x), torch.tensor(0 * 1.0 + 1 * 2.0 + 2 * 3.0, dtype=D))


def test_every_stdlib_loss_and_ir_renders_as_latex():
    """Powers of reductions, normalisers and sizes used to crash SymPy's printer (dice, contrastive); a gather
    prints as an evaluation bar, not as `At(...)`."""
    import sympy as sp

    for name in stdlib.names():
        loss = stdlib.get(name)
        assert loss._repr_latex_().startswith("$\\displaystyle "), name
        ir_tex = sp.latex(loss.expr)
        assert "At" not in ir_tex and "FnCall" not in ir_tex, name
    assert r"\right|_{c = {target}_{*n}}" in sp.latex(stdlib.get("cross_entropy").expr)
    for name, wrt in (("dice_loss", "p"), ("gram_distance", "f")):
        assert stdlib.get(name).grad(wrt)._repr_latex_().startswith("$\\displaystyle \\frac{\\partial L}")


def test_a_tensor_weight_on_a_log_reads_as_xlogy_and_a_parameter_weight_as_a_product():
    ce = from_latex(r"-\sum_{c} y_{c} \log p_{c}")
    assert "xlogy(y[c], p[c])" in ce.lossdsl_source
    y, p = torch.tensor([0.0, 1.0, 0.0], dtype=D), torch.tensor([0.0, 0.5, 0.5], dtype=D)
    close(ce.compile()(y=y, p=p), torch.tensor(0.5, dtype=D).log().neg())  # 0 log 0 = 0, not nan
    assert "(w * log((1 + x)))" in from_latex(r"w \log(1 + x)", params={"w": 10.0}).lossdsl_source
