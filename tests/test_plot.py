"""lossdsl.plot: the loss and gradient curves `lossdsl plot` draws, and the figure it writes.

tests/test_cli.py runs the command once and checks one Huber curve and one hinge curve; here `curve` is
checked against torch.nn.functional and hand-derived formulas and derivatives (over the error with target 0,
over the logit with target 1), central finite differences of the reference, the grid it evaluates on,
parameter filtering and its errors; `save` is checked by the PNG it writes and the lines it plots.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import plot, stdlib

Ref = Callable[[torch.Tensor], torch.Tensor]
POINTS = 400  # an even count: the grid on [-3, 3] misses 0, where |x| has its kink


def grid(lo: float = -3.0, hi: float = 3.0, points: int = POINTS) -> torch.Tensor:
    return torch.linspace(lo, hi, points, dtype=torch.float64)


def central_difference(f: Ref, x: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    return (f(x + h) - f(x - h)) / (2 * h)


# ---- over the error (target 0): loss vs torch, gradient vs the hand-derived derivative
ERROR_CASES = [
    ("mse_loss", {}, lambda x: F.mse_loss(x, 0 * x, reduction="none"), lambda x: 2 * x),
    ("l1_loss", {}, lambda x: F.l1_loss(x, 0 * x, reduction="none"), torch.sign),
    ("huber_loss", {"delta": 2.0}, lambda x: F.huber_loss(x, 0 * x, reduction="none", delta=2.0),
     lambda x: x.clamp(-2.0, 2.0)),
    ("smooth_l1_loss", {"beta": 0.5}, lambda x: F.smooth_l1_loss(x, 0 * x, reduction="none", beta=0.5),
     lambda x: (x / 0.5).clamp(-1.0, 1.0)),
    ("log_cosh_loss", {}, lambda x: torch.log(torch.cosh(x)), torch.tanh),
]


@pytest.mark.parametrize("name, params, ref, dref", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_curves_match_torch_and_hand_derivatives(name: str, params: dict, ref: Ref, dref: Ref) -> None:
    c = plot.curve(stdlib.get(name), points=POINTS, params=params)
    assert c.name == name and c.over == "error"
    torch.testing.assert_close(c.x, grid(), rtol=0, atol=0)
    torch.testing.assert_close(c.loss, ref(c.x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c.grad, dref(c.x), rtol=1e-12, atol=1e-12)


# ---- over the logit (target 1)
def focal_at_one(x: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    p = torch.sigmoid(x)
    return -alpha * (1 - p) ** gamma * torch.log(p)


def test_logit_curve_of_bce_with_logits_is_softplus_of_minus_x() -> None:
    c = plot.curve(stdlib.get("binary_cross_entropy_with_logits"), lo=-6, hi=6, points=101)
    assert c.over == "logit"
    x = grid(-6, 6, 101)
    torch.testing.assert_close(c.loss, F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none"))
    torch.testing.assert_close(c.loss, F.softplus(-x))
    torch.testing.assert_close(c.grad, torch.sigmoid(x) - 1)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.9, 0.5), (0.5, 0.0)])
def test_logit_curve_of_sigmoid_focal_loss_matches_the_paper_formula(alpha: float, gamma: float) -> None:
    c = plot.curve(stdlib.get("sigmoid_focal_loss"), points=61, params={"alpha": alpha, "gamma": gamma})
    assert c.over == "logit"
    torch.testing.assert_close(c.loss, focal_at_one(c.x, alpha, gamma))
    fd = central_difference(lambda t: focal_at_one(t, alpha, gamma), c.x)
    torch.testing.assert_close(c.grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("margin", [0.9, 0.5, 0.0])  # none on the grid: no tie at the kink
def test_logit_curve_of_hinge_loss_follows_its_margin(margin: float) -> None:
    c = plot.curve(stdlib.get("hinge_loss"), points=POINTS, params={"margin": margin})
    torch.testing.assert_close(c.loss, (margin - c.x).clamp(min=0))
    torch.testing.assert_close(c.grad, -(c.x < margin).double())


def test_forcing_the_logit_axis_puts_the_target_at_one() -> None:
    c = plot.curve(stdlib.get("mse_loss"), over="logit", points=41)
    assert c.over == "logit"
    torch.testing.assert_close(c.loss, (c.x - 1) ** 2)
    torch.testing.assert_close(c.grad, 2 * (c.x - 1))


def test_a_one_input_loss_is_drawn_over_its_only_input() -> None:
    c = plot.curve(lossdsl.parse("softplus(2*x)"), lo=-4, hi=4, points=33)
    assert c.over == "error"
    torch.testing.assert_close(c.loss, F.softplus(2 * c.x))
    torch.testing.assert_close(c.grad, 2 * torch.sigmoid(2 * c.x))


# ---- the grid, and the gradient as finite differences of the reference
@settings(max_examples=25, deadline=None)
@given(lo=st.floats(-8.0, 7.0), width=st.floats(0.01, 10.0), points=st.integers(2, 60))
def test_curve_evaluates_on_the_requested_grid(lo: float, width: float, points: int) -> None:
    hi = lo + width
    c = plot.curve(stdlib.get("log_cosh_loss"), lo=lo, hi=hi, points=points)
    assert c.x.dtype == c.loss.dtype == c.grad.dtype == torch.float64
    assert c.x.shape == c.loss.shape == c.grad.shape == (points,)
    assert not (c.x.requires_grad or c.loss.requires_grad or c.grad.requires_grad)
    torch.testing.assert_close(c.x, grid(lo, hi, points), rtol=0, atol=0)
    ref = lambda t: torch.log(torch.cosh(t))  # noqa: E731
    torch.testing.assert_close(c.loss, ref(c.x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c.grad, central_difference(ref, c.x), rtol=1e-6, atol=1e-8)


# ---- parameters: the CLI hands every loss the same -p values; each takes only its own
def test_parameters_a_loss_does_not_declare_are_ignored() -> None:
    c = plot.curve(stdlib.get("mse_loss"), points=21, params={"delta": 0.1, "gamma": 5.0})
    torch.testing.assert_close(c.loss, c.x**2)
    h = plot.curve(stdlib.get("huber_loss"), points=21, params={"delta": 0.5, "beta": 9.0})
    torch.testing.assert_close(h.loss, F.huber_loss(h.x, 0 * h.x, reduction="none", delta=0.5))


def test_a_declared_parameter_is_still_checked() -> None:
    with pytest.raises(lossdsl.ParameterError, match="delta"):
        plot.curve(stdlib.get("huber_loss"), params={"delta": -1.0})


# ---- which axis
@pytest.mark.parametrize("text, expected", [
    ("loss f(x, y):\n    (x - y)^2\n", "error"),
    ("loss f(x: logits, y):\n    softplus(-x)*y\n", "logit"),
    ("loss f(x, y: binary):\n    softplus(-x)*y\n", "logit"),
    ("loss f(x, y: sign):\n    relu(1 - x*y)\n", "logit"),
    ("loss f(x: prob, y):\n    (x - y)^2\n", "error"),
    ("loss f(x: positive, y):\n    x - y*log(x)\n", "error"),
    ("loss f(x: logits):\n    softplus(-x)\n", "logit"),
])
def test_axis_is_picked_by_the_declared_kinds(text: str, expected: str) -> None:
    loss = lossdsl.parse(text)
    assert plot.axis_for(loss) == expected
    for forced in ("error", "logit"):
        assert plot.axis_for(loss, forced) == forced


def test_error_axis_with_a_discrete_target_is_refused() -> None:
    with pytest.raises(lossdsl.KindError, match="--over logit"):
        plot.curve(stdlib.get("hinge_loss"), over="error")
    with pytest.raises(lossdsl.KindError, match="binary target"):
        plot.curve(lossdsl.parse("loss f(x, y: binary):\n    softplus(-x)*y\n"), over="error")


# ---- errors
@pytest.mark.parametrize("name", ["mse_loss_weighted", "rmse_loss", "gan_g_loss", "focal_loss"])
def test_non_elementwise_losses_are_refused_naming_their_inputs(name: str) -> None:
    loss = stdlib.get(name)
    with pytest.raises(lossdsl.KindError, match="elementwise") as caught:
        plot.curve(loss)
    assert all(i.name in str(caught.value) for i in loss.inputs)


def test_a_callable_input_is_refused() -> None:
    loss = lossdsl.parse("loss f(g: fn, x):\n    g(x)^2\n")
    with pytest.raises(lossdsl.KindError, match="elementwise"):
        plot.curve(loss)


@pytest.mark.parametrize("lo, hi, points", [(1.0, 1.0, 10), (2.0, -2.0, 10), (-1.0, 1.0, 1), (-1.0, 1.0, 0)])
def test_bad_range_or_point_count_is_a_parameter_error(lo: float, hi: float, points: int) -> None:
    with pytest.raises(lossdsl.ParameterError, match="range"):
        plot.curve(stdlib.get("mse_loss"), lo=lo, hi=hi, points=points)


def test_two_points_is_enough() -> None:
    c = plot.curve(stdlib.get("mse_loss"), lo=-1, hi=2, points=2)
    assert c.x.tolist() == [-1.0, 2.0] and c.loss.tolist() == [1.0, 4.0] and c.grad.tolist() == [-2.0, 4.0]


# ---- save
def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every matplotlib Figure plot.save writes, kept for inspection (the file is still written)."""
    figure = pytest.importorskip("matplotlib.figure")
    kept: list = []
    original = figure.Figure.savefig

    def savefig(self, *args: object, **kwargs: object) -> None:
        kept.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(figure.Figure, "savefig", savefig)
    return kept


def test_save_writes_a_png_with_one_line_per_curve_in_each_panel(tmp_path: Path, saved_figures: list) -> None:
    names = ["mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "log_cosh_loss"]
    curves = [plot.curve(stdlib.get(n), points=50) for n in names]
    out = plot.save(curves, str(tmp_path / "cmp.png"))
    assert out == tmp_path / "cmp.png" and isinstance(out, Path)
    assert png_size(out) == (1000, 400)  # figsize 10 x 4 inches at 100 dpi
    (fig,) = saved_figures
    ax_loss, ax_grad = fig.axes
    assert ax_loss.get_title() == "loss" and ax_grad.get_title() == "gradient d loss / d error"
    assert ax_loss.get_xlabel() == ax_grad.get_xlabel() == "error (prediction − target)"
    for ax, field in ((ax_loss, "loss"), (ax_grad, "grad")):
        assert [line.get_label() for line in ax.get_lines()] == names
        assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--", "-.", ":", "-"]
        for line, c in zip(ax.get_lines(), curves, strict=True):
            assert line.get_xdata().tolist() == c.x.tolist()
            assert line.get_ydata().tolist() == getattr(c, field).tolist()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == names


def test_save_labels_the_logit_axis(tmp_path: Path, saved_figures: list) -> None:
    curves = [plot.curve(stdlib.get(n), points=20) for n in ("binary_cross_entropy_with_logits", "hinge_loss")]
    plot.save(curves, tmp_path / "logits.png")
    (fig,) = saved_figures
    assert fig.axes[1].get_title() == "gradient d loss / d logit"
    assert fig.axes[0].get_xlabel() == "logit (target = 1)"
    assert png_size(tmp_path / "logits.png") == (1000, 400)


def test_save_without_matplotlib_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import raise ImportError
    with pytest.raises(lossdsl.ParameterError, match=r"pip install 'lossdsl\[examples\]'"):
        plot.save([plot.curve(stdlib.get("mse_loss"), points=5)], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
