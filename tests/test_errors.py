"""Every error class, with the message a user sees (position, caret, suggestion)."""

from __future__ import annotations

import pytest
import torch

import lossdsl
from lossdsl.errors import LossError, Span, closest

COMPILE_ERRORS = [
    ("loss a(x[n, c]):\n    sum_c(x +* 2)", lossdsl.LossSyntaxError, "unexpected '*'", (2, 14)),
    ("loss a(x[n, c]):\n    sum_c(x + (2)", lossdsl.LossSyntaxError, "unclosed bracket", (2, 18)),
    ("loss a(x):\n    x $ 2", lossdsl.LossSyntaxError, "unexpected character '$'", (2, 7)),
    ("loss a(x[n, c]):\n    sum_c(sigmod(x))", lossdsl.UnknownNameError, "did you mean 'sigmoid'", (2, 11)),
    ("loss a(x[n, c]):\n    -log_sofmax_c(x)", lossdsl.UnknownNameError, "did you mean 'log_softmax_c'", (2, 6)),
    ("loss a(x[n, c]):\n    sum_c(xx)", lossdsl.UnknownNameError, "unknown name 'xx'; did you mean 'x'", (2, 11)),
    ("loss a(x[n, c]):\n    sum_k(x[n, c])", lossdsl.ScopeError, "index 'k' does not occur", (2, 5)),
    ("loss a(x[n, c]):\n    s[n] = x\n    s", lossdsl.ScopeError, "index 'c' is free on the right", (2, 5)),
    ("loss a(x):\n    y = x\n    reduce mean\n    x", lossdsl.ScopeError, "`reduce` must be the last", (3, 5)),
    ("loss a(x[n, c]):\n    x\n    reduce meen", lossdsl.ScopeError, "did you mean 'mean'", (3, 5)),
    ("loss a(x[n, c]):\n    x\n    x + 1", lossdsl.ScopeError, "last line", (2, 5)),
    ("loss a(x[n, c]: logit):\n    x", lossdsl.KindError, "did you mean 'logits'", (1, 8)),
    ("loss a(x[n, c], y[n]: real):\n    x[n, y]", lossdsl.KindError, "index(axis)", (2, 10)),
    ("loss a(x[n, c], f: fn):\n    f + x", lossdsl.KindError, "is a function", (2, 5)),
    ("loss a(x[n, c]):\n    x(1)", lossdsl.KindError, "not a function", (2, 5)),
    ("loss a(x[n, c]; w: float = 1):\n    x", lossdsl.KindError, "unknown parameter type 'float'", (1, 17)),
    ("loss a(x[n, c]):\n    x[n]", lossdsl.ShapeError, "has 2 axes (n, c) but is indexed with 1", (2, 5)),
    ("loss a(x):\n    x[n]", lossdsl.ShapeError, "declared without axes", (2, 5)),
    ("loss a(x[n, c]; g = -1 >= 0):\n    x", lossdsl.ParameterError, "'g' = -1 violates its constraint g >= 0",
     (1, 17)),
    ("loss a(x[n, c]; g = 2 in [0, 1]):\n    x", lossdsl.ParameterError, "in [0, 1]", (1, 17)),
    ("loss a(x, x):\n    x", lossdsl.ScopeError, "declared twice", (1, 11)),
]


@pytest.mark.parametrize("text,cls,fragment,where", COMPILE_ERRORS)
def test_compile_time_errors_point_at_the_source(text: str, cls: type, fragment: str, where: tuple) -> None:
    with pytest.raises(cls) as info:
        lossdsl.parse(text)
    err = info.value
    assert isinstance(err, LossError)
    assert fragment in err.message
    assert (err.line, err.column) == where
    line = text.splitlines()[where[0] - 1]
    rendered = str(err)
    assert rendered.startswith(f"line {where[0]}, column {where[1]}: ")
    assert line in rendered
    caret_line = rendered.splitlines()[-1]
    assert caret_line.index("^") - 4 == where[1] - 1


def test_parameter_value_errors_at_build_time() -> None:
    src = "loss a(x; g = 1 >= 0, k: int = 1, on: bool = false):\n    x * g"
    with pytest.raises(lossdsl.ParameterError, match="'g' = -1 violates its constraint g >= 0"):
        lossdsl.compile(src, g=-1)
    with pytest.raises(lossdsl.UnknownNameError, match="has no parameter 'gg'; did you mean 'g'"):
        lossdsl.compile(src, gg=1)
    with pytest.raises(lossdsl.ParameterError, match="'k' is an int"):
        lossdsl.compile(src, k=1.5)
    with pytest.raises(lossdsl.ParameterError, match="'on' is a bool"):
        lossdsl.compile(src, on=1)
    with pytest.raises(lossdsl.ParameterError, match="reduction must be"):
        lossdsl.compile(src, reduction="avg")
    with pytest.raises(lossdsl.ParameterError, match="needs a value for parameter 'w'"):
        lossdsl.compile("loss a(x; w):\n    x * w")


def test_formula_inputs_override_must_name_used_inputs() -> None:
    with pytest.raises(lossdsl.UnknownNameError, match="'z'"):
        lossdsl.compile("x - y", inputs=["z"])


RUNTIME = "loss a(x[n, c], y[n]: index(c), p[n]: prob):\n    x[n, y] * p"


@pytest.mark.parametrize("args,fragment", [
    ((torch.zeros(3, 4), torch.zeros(4, dtype=torch.long), torch.zeros(3)),
     "input 'y' axis 0 (n) has size 4 but 'x' fixes it to 3"),
    ((torch.zeros(3, 4), torch.tensor([0, 1, 4]), torch.zeros(3)), "class index 4 outside [0, 4)"),
    ((torch.zeros(3, 4), torch.tensor([0, -1, 2]), torch.zeros(3)), "class index -1 outside [0, 4)"),
    ((torch.zeros(3, 4), torch.tensor([0, 1, 2]), torch.tensor([0, 2.0, 0])), "'p' is a probability"),
    ((torch.zeros(3, 4, 1), torch.tensor([0, 1, 2]), torch.zeros(3)), "'x' needs 2 dimensions (n, c), got 3"),
    ((torch.zeros(3, 4), torch.tensor([0, 1, 2]), torch.zeros(3, 1)), "'p' needs 1 dimension (n), got 2"),
    ((torch.zeros(3, 4), torch.tensor([0.0, 1, 2]), torch.zeros(3)), "must be an integer tensor"),
])
def test_runtime_input_errors_name_the_input_and_axis(args: tuple, fragment: str) -> None:
    module = lossdsl.compile(RUNTIME)
    with pytest.raises(lossdsl.InputError) as info:
        module(*args)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_non_tensor_inputs_are_converted_or_rejected_clearly() -> None:
    module = lossdsl.compile("(x - y)^2")
    assert module([1.0, 2.0], 0.0).item() == 2.5
    with pytest.raises(lossdsl.InputError, match="input 'x' is not a tensor"):
        module("abc", 0.0)


def test_group_shape_mismatch_names_the_group() -> None:
    module = lossdsl.compile("loss a(x[n, *s], y[n, *s]):\n    sum_{*s}(x*y)")
    with pytest.raises(lossdsl.InputError, match=r"input 'y' axes \*s has size \(3,\) but 'x' fixes it to \(2,\)"):
        module(torch.zeros(1, 2), torch.zeros(1, 3))


def test_unknown_axis_size_is_asked_for_by_keyword() -> None:
    module = lossdsl.compile("loss a(f[n, d], y[n]: index(k); c[k, d]: learnable = 0):\n    sum_d(c[y, d] * f)")
    with pytest.raises(lossdsl.InputError, match=r"pass k=\.\.\."):
        module(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_validation_can_be_switched_off_for_speed() -> None:
    module = lossdsl.compile(RUNTIME, validate=False)
    assert torch.isfinite(module(torch.zeros(3, 4), torch.tensor([0, 1, 2]), torch.tensor([0, 2.0, 0])))


def test_error_rendering_without_source_and_closest_name() -> None:
    err = LossError("bad thing", Span(1, 3, 1, 5))
    assert str(err) == "line 1, column 3: bad thing"
    assert "    ab cd\n      ^^" in str(err.with_source("ab cd"))
    assert closest("softmx", ["softmax", "sum"]) == "softmax"
    assert closest("zzz", ["softmax"]) is None


def test_a_parameter_of_a_stdlib_variant_names_the_variant() -> None:
    """torch's cross_entropy takes label_smoothing; the stdlib splits it off into variants, which the
    error names instead of a near-miss spelling (a misspelling still gets one)."""
    with pytest.raises(lossdsl.UnknownNameError, match="cross_entropy_probs and cross_entropy_smoothed take it"):
        lossdsl.stdlib.cross_entropy(label_smoothing=0.1)
    with pytest.raises(lossdsl.UnknownNameError, match="did you mean 'weight'"):
        lossdsl.stdlib.cross_entropy(wieght=1.0)


@pytest.mark.parametrize("mode", ["eager", "fused"])
def test_a_complex_input_is_refused_not_cast(mode: str) -> None:
    """Cast to the compute dtype, its imaginary part was dropped with only torch's UserWarning."""
    module = lossdsl.stdlib.get("mse_loss").compile(mode=mode)
    with pytest.raises(lossdsl.InputError, match=r"input 'target' is complex \(torch.complex128\)"):
        module(torch.randn(3), torch.randn(3, dtype=torch.complex128))


def test_a_host_parameter_the_loss_divides_by_is_checked() -> None:
    """pairwise_distance's 1/p with p = 0 was a bare ZeroDivisionError from inside the generated forward."""
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(lossdsl.ParameterError, match="parameter 'p' is 0, and this loss divides by it"):
        lossdsl.stdlib.pairwise_distance(p=0.0)(a, b)
    torch.testing.assert_close(lossdsl.stdlib.pairwise_distance(p=3.0, reduction="none")(a, b),
                               torch.pairwise_distance(a, b, p=3.0))
