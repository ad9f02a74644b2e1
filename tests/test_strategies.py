"""lossdsl.strategies: random inputs of a loss's declared kinds (torch sampling and hypothesis strategies) and
random well-formed formulas.

What a generated input must respect is read off the loss's declaration, not off the module's tables: each
kind's domain as LANGUAGE.md states it (prob in [0, 1], binary 0/1, sign -1/+1, count non-negative, ...)
narrowed to the margins the module's docstring promises (prob in [0.05, 0.95], positive >= 0.2), one size
per axis shared by every input on it (an index bound to another axis included), `*groups` and undeclared
shapes, and index values inside the axis they index (or equal to the loss's ignore_index sentinel).
tests/test_verify.py checks `sample` on one shape per kind; here shapes, reproducibility, the strategies,
`sample_inputs` and `inputs` over every stdlib loss, sentinels, and the formula generators are checked.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ir, stdlib
from lossdsl import strategies as S

# kind -> (dtype, check of every value, given the size of the indexed axis); hand-written from LANGUAGE.md and
# the module docstring, independently of strategies.DOMAINS
FLOAT = {"real": (-2.0, 2.0), "logits": (-3.0, 3.0), "prob": (0.05, 0.95), "positive": (0.2, 2.0)}
CHOICE = {"binary": {0.0, 1.0}, "sign": {-1.0, 1.0}}
INTEGER = {"int": (0, 3), "count": (0, 5)}
KINDS = sorted([*FLOAT, *CHOICE, *INTEGER, "index"])
NAMES = [n for n in stdlib.names() if any(i.kind != "fn" for i in stdlib.get(n).inputs)]


def assert_in_domain(t: torch.Tensor, kind: str, classes: int | None, allowed: Collection[int] = ()) -> None:
    """Every value of `t` lies in the kind's domain (an index in [0, classes), or one of `allowed`)."""
    if t.numel() == 0:
        return
    if kind == "index":
        assert t.dtype == torch.int64, (kind, t.dtype)
        real = t[~torch.isin(t, torch.tensor(sorted(allowed), dtype=torch.int64))] if allowed else t
        assert real.numel() == 0 or (real.min() >= 0 and real.max() <= max((classes or 1) - 1, 0)), (t, classes)
    elif kind in INTEGER:
        lo, hi = INTEGER[kind]
        assert t.dtype == torch.int64 and t.min() >= lo and t.max() <= hi, (kind, t)
    elif kind in CHOICE:
        assert t.dtype == torch.float64 and set(t.unique().tolist()) <= CHOICE[kind], (kind, t)
    else:
        lo, hi = FLOAT.get(kind, FLOAT["real"])
        assert t.dtype == torch.float64 and t.min() >= lo and t.max() <= hi, (kind, t)
        assert torch.isfinite(t).all()


def canon(loss: ir.LossIR, axis: str) -> str:
    return loss.axis_of.get(axis, axis)


def axis_sizes(loss: ir.LossIR, drawn: dict[str, torch.Tensor]) -> tuple[dict[str, set[int]], set[tuple[int, ...]]]:
    """Read the size of every canonical axis, and every *group's dims, off the drawn tensors' shapes."""
    sizes: dict[str, set[int]] = {}
    groups: set[tuple[int, ...]] = set()
    for i in loss.inputs:
        if i.kind == "fn" or i.axes is None:
            continue
        shape = list(drawn[i.name].shape)
        n_groups = sum(a.startswith("*") for a in i.axes)
        per_group = (len(shape) - (len(i.axes) - n_groups)) // n_groups if n_groups else 0
        for a in i.axes:
            if a.startswith("*"):
                groups.add(tuple(shape[:per_group]))
                shape = shape[per_group:]
            else:
                sizes.setdefault(canon(loss, a), set()).add(shape.pop(0))
        assert shape == [], (i.name, drawn[i.name].shape)
    return sizes, groups


# ---- sample: one tensor of a kind
@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from([*KINDS, "no_such_kind"]), shape=st.lists(st.integers(0, 4), max_size=3).map(tuple),
       classes=st.integers(1, 7), seed=st.integers(0, 2**31))
def test_sample_has_the_shape_dtype_and_domain_and_is_reproducible(kind: str, shape: tuple, classes: int,
                                                                   seed: int) -> None:
    t = S.sample(kind, shape, torch.Generator().manual_seed(seed), classes=classes)
    assert t.shape == shape
    assert_in_domain(t, kind, classes)
    again = S.sample(kind, shape, torch.Generator().manual_seed(seed), classes=classes)
    assert torch.equal(t, again)


def test_sample_covers_each_small_domain() -> None:
    gen = torch.Generator().manual_seed(1)
    assert set(S.sample("index", (500,), gen, classes=4).tolist()) == {0, 1, 2, 3}
    assert set(S.sample("count", (500,), gen).tolist()) == set(range(6))
    assert set(S.sample("int", (500,), gen).tolist()) == set(range(4))
    assert set(S.sample("sign", (500,), gen).tolist()) == {-1.0, 1.0}


def test_index_without_a_class_count_is_zero() -> None:
    t = S.sample("index", (50,), torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and not t.any()


# ---- elements and tensors: the hypothesis side of the same domains
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_tensors_strategy_respects_kind_shape_and_classes(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(KINDS))
    shape = data.draw(st.lists(st.integers(0, 3), max_size=3).map(tuple))
    classes = data.draw(st.integers(1, 6))
    t = data.draw(S.tensors(kind, shape, classes))
    assert isinstance(t, torch.Tensor) and t.shape == shape and t.numel() == math.prod(shape)
    assert_in_domain(t, kind, classes)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_elements_strategy_draws_values_of_the_kind(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(KINDS))
    value = data.draw(S.elements(kind, classes=3))
    t = torch.tensor([value], dtype=torch.int64 if kind in (*INTEGER, "index") else torch.float64)
    assert_in_domain(t, kind, 3)
    assert isinstance(value, int) == (kind in (*INTEGER, "index"))


# ---- shapes, axes_of, classes_of: the layout of a loss's inputs
def test_shapes_follow_the_declared_axes() -> None:
    focal = stdlib.get("focal_loss").ir  # x[n, c, *d]: logits, y[n, *d]: index(c)
    assert S.shapes(focal, {"n": 2, "c": 5}, group=(3, 4)) == {"x": (2, 5, 3, 4), "y": (2, 3, 4)}
    assert S.shapes(focal, {"n": 2, "c": 5}) == {"x": (2, 5, 2), "y": (2, 2)}
    mse = stdlib.get("mse_loss").ir  # undeclared shapes
    assert S.shapes(mse, {}, loose=(7,)) == {"input": (7,), "target": (7,)}
    assert S.shapes(mse, {}) == {"input": (3, 2), "target": (3, 2)}


def test_shapes_use_the_canonical_axis_of_a_bound_index() -> None:
    nce = stdlib.get("info_nce").ir  # q[i, d], k[j, d]: j ranges over the same axis as i
    assert S.axes_of(nce) == ["d", "i"]
    assert S.shapes(nce, {"i": 3, "d": 4}) == {"q": (3, 4), "k": (3, 4)}


def test_callable_inputs_get_no_tensor() -> None:
    loss = stdlib.get("triplet_margin_with_distance_loss").ir
    assert set(S.shapes(loss, {"d": 3})) == {"a", "pos", "neg"}
    drawn, _ = S.sample_inputs(loss, torch.Generator().manual_seed(0))
    assert set(drawn) == {"a", "pos", "neg"}


def test_axes_of_lists_canonical_axes_without_groups() -> None:
    assert S.axes_of(stdlib.get("focal_loss").ir) == ["c", "n"]
    assert S.axes_of(stdlib.get("mse_loss").ir) == []
    assert S.axes_of(stdlib.get("center_loss").ir) == ["d", "k", "n"]  # k: fixed by the learnable centers only


def test_classes_of_is_the_size_of_the_indexed_axis() -> None:
    center = stdlib.get("center_loss").ir  # f[n, d], y[n]: index(k)
    sizes = {"n": 2, "d": 3, "k": 9}
    assert S.classes_of(center, center.input("y"), sizes) == 9
    assert S.classes_of(center, center.input("f"), sizes) is None


# ---- sample_inputs: every stdlib loss, one draw each
@pytest.mark.parametrize("name", NAMES)
def test_sample_inputs_respect_the_declaration(name: str) -> None:
    loss = stdlib.get(name).ir
    drawn, sizes = S.sample_inputs(loss, torch.Generator().manual_seed(0), low=2, high=5)
    assert set(sizes) == set(S.axes_of(loss)) and all(2 <= v <= 5 for v in sizes.values())
    assert set(drawn) == {i.name for i in loss.inputs if i.kind != "fn"}
    found, groups = axis_sizes(loss, drawn)
    assert {a: {v} for a, v in sizes.items() if a in found} == found
    assert groups <= {(2,)}
    for i in loss.inputs:
        if i.kind == "fn":
            continue
        if i.axes is None:
            assert drawn[i.name].shape == (3, 2)
        classes = sizes[canon(loss, i.kind_arg)] if i.kind_arg else None
        sentinels = {v for v in loss.sentinels.get(i.name, []) if isinstance(v, int)}
        sentinels |= {int(loss.param(v).default) for v in loss.sentinels.get(i.name, []) if isinstance(v, str)}
        assert_in_domain(drawn[i.name], i.kind, classes, sentinels)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 9), c=st.integers(1, 9), seed=st.integers(0, 1000))
def test_sample_inputs_keeps_given_sizes(n: int, c: int, seed: int) -> None:
    loss = stdlib.get("focal_loss").ir
    drawn, sizes = S.sample_inputs(loss, torch.Generator().manual_seed(seed), sizes={"n": n, "c": c})
    assert sizes == {"n": n, "c": c}
    assert drawn["x"].shape == (n, c, 2) and drawn["y"].shape == (n, 2)
    assert drawn["y"].min() >= 0 and drawn["y"].max() < c


def test_sample_inputs_is_reproducible_from_the_generator() -> None:
    loss = stdlib.get("supcon_loss").ir
    a, sa = S.sample_inputs(loss, torch.Generator().manual_seed(5))
    b, sb = S.sample_inputs(loss, torch.Generator().manual_seed(5))
    assert sa == sb and all(torch.equal(a[k], b[k]) for k in a)


# ---- sentinels: an index compared against ignore_index holds it at about sentinel_rate of its positions
CE = """loss ce(x[n, c]: logits, y[n]: index(c); ignore_index: int = -100):
    [y != ignore_index] * (logsumexp_c(x) - x[n, y])
"""


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.6, 1.0])
def test_sentinel_is_planted_at_the_requested_rate(rate: float) -> None:
    loss = lossdsl.parse(CE).ir
    drawn, _ = S.sample_inputs(loss, torch.Generator().manual_seed(0), sizes={"n": 4000, "c": 3},
                               sentinel_rate=rate)
    y = drawn["y"]
    hit = (y == -100).double().mean().item()
    assert abs(hit - rate) < 0.03, hit
    assert (((y >= 0) & (y <= 2)) | (y == -100)).all()


def test_sentinel_follows_the_parameter_value_given() -> None:
    loss = lossdsl.parse(CE).ir
    drawn, _ = S.sample_inputs(loss, torch.Generator().manual_seed(0), sizes={"n": 2000, "c": 3},
                               params={"ignore_index": 7}, sentinel_rate=0.5)
    assert not (drawn["y"] == -100).any() and 0.45 < (drawn["y"] == 7).double().mean() < 0.55


def test_literal_sentinel_of_a_stdlib_loss() -> None:
    loss = stdlib.get("multilabel_margin_loss").ir  # target[*n, k]: index(c), -1 ends the label list
    drawn, _ = S.sample_inputs(loss, torch.Generator().manual_seed(0), sizes={"c": 4, "k": 50}, sentinel_rate=1.0)
    assert (drawn["target"] == -1).all()


# ---- inputs: the hypothesis strategy over every stdlib loss
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_inputs_strategy_respects_every_declaration(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(NAMES))
    low, high = data.draw(st.sampled_from([(2, 4), (1, 3), (3, 3)]))
    wrapped = stdlib.get(name)
    loss = wrapped.ir
    drawn = data.draw(S.inputs(wrapped if data.draw(st.booleans()) else loss, low, high))  # a Loss or a LossIR
    assert set(drawn) == {i.name for i in loss.inputs if i.kind != "fn"}
    found, groups = axis_sizes(loss, drawn)
    assert all(len(v) == 1 and low <= next(iter(v)) <= high for v in found.values()), found
    assert len(groups) <= 1 and all(1 <= len(g) <= 2 and all(1 <= d <= 3 for d in g) for g in groups), groups
    for i in loss.inputs:
        if i.kind == "fn":
            continue
        if i.axes is None:
            assert drawn[i.name].shape == (3, 2)
        classes = next(iter(found.get(canon(loss, i.kind_arg), {high}))) if i.kind_arg else None
        assert_in_domain(drawn[i.name], i.kind, classes)


# ---- random formulas
def free_axes(expr: str) -> set[str]:
    loss = lossdsl.parse(S.FORMULA_HEADER + expr).ir
    return {canon(loss, a) for a in loss.free}


@settings(max_examples=30, deadline=None)
@given(S.formulas(depth=3))
def test_formulas_are_loss_files_that_parse(text: str) -> None:
    assert text.startswith(S.FORMULA_HEADER)
    loss = lossdsl.parse(text)
    assert loss.name == "random" and [i.name for i in loss.inputs] == ["x", "z", "w", "y"]


@settings(max_examples=40, deadline=None)
@given(S.formula_exprs("nc", depth=2))
def test_nc_expressions_keep_both_indices_free(expr: str) -> None:
    assert free_axes(expr) == {"n", "c"}


@settings(max_examples=300, deadline=None)  # max(...) over every index was found within ~80 examples
@given(S.formula_exprs("n", depth=2))
def test_n_expressions_keep_n_free(expr: str) -> None:
    assert free_axes(expr) == {"n"}
