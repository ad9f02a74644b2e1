"""lossdsl.scope: the front end's index bookkeeping.

* `Axes` is a union-find over index names: the front end unions indices that must range over one axis and
  reads each index's canonical axis (`axis_of`) as its class's first-seen name. Random sequences of adds
  and unions are checked against a plain partition built by merging sets.
* `free_indices` lists an expression's free index symbols (reductions and `At` bind theirs; `Size`, an
  opaque call's arguments and a gradient's expression contribute none). An independent evaluator of the
  IR's index expressions over a small axis records which names it reads from the environment: exactly the
  free indices must be read.
* `rename` substitutes free indices and renames bound ones that would capture a substituted name. The
  evaluator checks the substitution lemma on random expressions with nested conditional reductions and
  reads at a position (`At`): evaluating rename(e, {s: v}) in env equals evaluating e with s bound to v's
  value in env.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ir
from lossdsl.scope import ELLIPSIS, Axes, free_indices, fresh, rename

N = 3  # every axis of the test expressions has this size, so any index may stand for any other
i, j, k, m, n, c, d = (ir.index_symbol(name) for name in "ijkmncd")
POOL = [i, j, k, m]
x, y, z = sp.IndexedBase("x"), sp.IndexedBase("y"), sp.IndexedBase("z")
X_TABLE = {(a, b): (7 * a + 3 * b * b + 1) % 11 - 4 for a in range(N) for b in range(N)}  # asymmetric in (a, b)
Y_TABLE = {0: 2, 1: 0, 2: 1}  # a permutation: y[a] gathers a valid position
Z_TABLE = {0: 5, 1: -2, 2: 3}
EMPTY = -(10**9)  # max/min of an empty set: a sentinel both sides of a comparison agree on


class Evaluator:
    """Evaluates index expressions exactly (Python ints) over axes of size N; `reads` collects the names looked
    up in the outer environment, i.e. the free indices the value actually depends on."""

    def __init__(self, env: dict[sp.Symbol, int]) -> None:
        self.env = env
        self.reads: list[sp.Symbol] = []

    def __call__(self, e: sp.Basic, bound: dict[sp.Symbol, int] | None = None) -> int:
        bound = bound or {}
        if e.is_Integer:
            return int(e)
        if ir.is_index(e):
            if e in bound:
                return bound[e]
            if e not in self.reads:
                self.reads.append(e)
            return self.env[e]  # KeyError: the expression reads a name nobody bound
        if isinstance(e, sp.Indexed):
            pos = tuple(self(a, bound) for a in e.indices)
            table = {"x": X_TABLE, "y": Y_TABLE, "z": Z_TABLE}[e.base.name]
            return table[pos if len(pos) > 1 else pos[0]]
        if isinstance(e, sp.Add):
            return sum(self(a, bound) for a in e.args)
        if isinstance(e, sp.Mul):
            out = 1
            for a in e.args:
                out *= self(a, bound)
            return out
        if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp >= 0:  # x*x is x**2
            return self(e.base, bound) ** int(e.exp)
        if isinstance(e, ir._Reduction):
            vals = []
            for point in itertools.product(range(N), repeat=len(e.indices)):
                inner = {**bound, **dict(zip(e.indices, point, strict=True))}
                keep, v = self.holds(e.cond, inner), self(e.body, inner)  # body read even where cond fails
                if keep:
                    vals.append(v)
            return self.reduce(type(e), vals)
        if isinstance(e, ir.At):
            body, axes, values = e.args
            at = {a: self(v, bound) for a, v in zip(axes, values, strict=True)}
            return self(body, {**bound, **at})
        if isinstance(e, ir.Size):
            return N
        raise AssertionError(f"no evaluation for {e.func}")

    def holds(self, cond: sp.Basic, bound: dict[sp.Symbol, int]) -> bool:
        if cond in (sp.true, sp.false):
            return bool(cond)
        if isinstance(cond, sp.And):
            return all([self.holds(a, bound) for a in cond.args])
        ops: dict[type, Callable[[int, int], bool]] = {sp.Ne: int.__ne__, sp.Eq: int.__eq__,
                                                       sp.StrictLessThan: int.__lt__, sp.LessThan: int.__le__,
                                                       sp.StrictGreaterThan: int.__gt__, sp.GreaterThan: int.__ge__}
        return ops[type(cond)](self(cond.lhs, bound), self(cond.rhs, bound))

    @staticmethod
    def reduce(red: type, vals: list[int]) -> int:
        if red is ir.Sum_:
            return sum(vals)
        if red is ir.Prod_:
            out = 1
            for v in vals:
                out *= v
            return out
        if not vals:
            return EMPTY
        return max(vals) if red is ir.Max_ else min(vals)


def evaluate(e: sp.Basic, env: dict[sp.Symbol, int]) -> int:
    return Evaluator(env)(e)


def read_names(e: sp.Basic) -> set[sp.Symbol]:
    ev = Evaluator(dict.fromkeys(POOL, 1))
    ev(e)
    return set(ev.reads)


# ---- random index expressions
INDEX = st.sampled_from(POOL)
CONDS = st.one_of(
    st.just(sp.true),
    st.tuples(INDEX, INDEX).map(lambda t: sp.Ne(*t)),
    st.tuples(INDEX, INDEX).map(lambda t: sp.Lt(*t)),
    st.tuples(INDEX, st.integers(0, N - 1)).map(lambda t: sp.Le(*t)),
)
LEAVES = st.one_of(
    st.tuples(INDEX, INDEX).map(lambda t: x[t]),
    INDEX.map(lambda a: y[a]),
    INDEX.map(lambda a: x[y[a], a]),  # a gather in a slot
    INDEX,
    st.integers(-2, 2).map(sp.Integer),
)


VALUES = st.one_of(INDEX, st.integers(0, N - 1).map(sp.Integer), INDEX.map(lambda a: y[a]))


def _extend(sub: st.SearchStrategy) -> st.SearchStrategy:
    reductions = st.sampled_from([ir.Sum_, ir.Prod_, ir.Max_, ir.Min_])
    return st.one_of(
        st.tuples(sub, sub).map(lambda t: t[0] + t[1]),
        st.tuples(sub, sub).map(lambda t: t[0] * t[1]),
        st.tuples(reductions, sub, st.lists(INDEX, min_size=1, max_size=2, unique=True), CONDS).map(
            lambda t: t[0](t[1], sp.Tuple(*t[2]), t[3])),
        st.tuples(sub, INDEX, VALUES).map(lambda t: ir.At(t[0], sp.Tuple(t[1]), sp.Tuple(t[2]))),  # body[a = v]
    )


EXPRS = st.recursive(LEAVES, _extend, max_leaves=5)
MAPPINGS = st.dictionaries(INDEX, VALUES, max_size=3)
ENVS = st.fixed_dictionaries({s: st.integers(0, N - 1) for s in POOL})


# ---- Axes
def test_an_axis_is_known_once_added_and_is_its_own_root() -> None:
    axes = Axes()
    assert not axes.known("n")
    axes.add("n")
    assert axes.known("n") and axes.find("n") == "n"
    assert not axes.known("c")  # asking does not declare


def test_find_declares_a_name_it_has_not_seen() -> None:
    axes = Axes()
    assert axes.find("c") == "c" and axes.known("c")
    assert axes.order == ["c"]


def test_union_makes_the_first_seen_name_the_axis() -> None:
    axes = Axes()
    for name in ("n", "c", "k"):
        axes.add(name)
    axes.union("k", "c")  # order of the arguments does not choose the root: first seen does
    assert axes.find("k") == axes.find("c") == "c"
    axes.union("k", "n")
    assert {axes.find(a) for a in ("n", "c", "k")} == {"n"}
    assert axes.order == ["n", "c", "k"]


def test_union_with_itself_and_repeated_unions_change_nothing() -> None:
    axes = Axes()
    axes.union("a", "a")
    axes.union("b", "a")
    axes.union("a", "b")
    axes.add("a")
    assert axes.order == ["a", "b"] and axes.find("b") == "a"


OPS = st.lists(st.tuples(st.sampled_from(["add", "union"]), st.sampled_from("abcdefgh"), st.sampled_from("abcdefgh")),
               max_size=25)


@settings(max_examples=80, deadline=None)
@given(ops=OPS)
def test_axes_partition_matches_merged_sets(ops: list[tuple[str, str, str]]) -> None:
    axes, classes, seen = Axes(), {}, []
    for op, a, b in ops:
        names = (a,) if op == "add" else (a, b)
        for name in names:
            if name not in classes:
                classes[name], seen = {name}, [*seen, name]
        if op == "add":
            axes.add(a)
        else:
            axes.union(a, b)
            merged = classes[a] | classes[b]
            for name in merged:
                classes[name] = merged
    assert axes.order == seen
    for name in seen:
        assert axes.find(name) == min(classes[name], key=seen.index)
    for a, b in itertools.product(seen, repeat=2):
        assert (axes.find(a) == axes.find(b)) == (b in classes[a])


def test_the_front_end_reads_axes_from_unions() -> None:
    """An index input ties its values' axis to the axis it indexes; a sum's index takes its tensor's axis."""
    loss = lossdsl.parse("loss l(x[n, c], y[n]: index(c)):\n    x[n, y] + sum_k(x[n, k])\n").ir
    assert loss.axis_of["n"] == "n" and loss.axis_of["c"] == "c"
    assert {a for name, a in loss.axis_of.items() if name.startswith("k")} == {"c"}


# ---- free_indices
FN = sp.Symbol("f")
FREE: list[tuple[str, sp.Basic, list[sp.Symbol]]] = [
    ("tensor", x[n, c], [n, c]),
    ("order_of_slots", x[c, n], [c, n]),
    ("repeated", x[n, n] + y[n], [n]),
    ("reduction_binds", ir.Sum_(x[n, k], sp.Tuple(k), sp.true), [n]),
    ("reduction_over_two", ir.Max_(x[k, m] * y[n], sp.Tuple(k, m), sp.true), [n]),
    ("condition_reads_outer", ir.Sum_(y[k], sp.Tuple(k), sp.Ne(k, n)), [n]),
    ("bound_then_free", ir.Sum_(y[k], sp.Tuple(k), sp.true) * y[k], [k]),
    ("nested_shadowing", ir.Sum_(ir.Sum_(x[k, n], sp.Tuple(k), sp.true) * y[k], sp.Tuple(k), sp.true), [n]),
    ("softmax_keeps_its_index", ir.Softmax(x[n, c], c), [n, c]),
    ("at_binds_its_axes", ir.At(x[n, c], sp.Tuple(c), sp.Tuple(y[n])), [n]),
    ("at_values_are_free", ir.At(x[c, d], sp.Tuple(c), sp.Tuple(k)), [d, k]),
    ("fn_labels", ir.FnCall(FN, sp.Tuple(x[n, d]), sp.Tuple(n)), [n]),
    ("fn_unlabelled", ir.FnCall(FN, sp.Tuple(x[n, d]), sp.Tuple()), []),
    ("grad_of_a_tensor", ir.Grad(ir.Sum_(y[k], sp.Tuple(k), sp.true), x[n, d]), [n, d]),
    ("grad_of_a_scalar", ir.Grad(x[n, d] * y[m], sp.Symbol("w", real=True)), []),
    ("size", ir.Size(c) * y[n], [n]),
    ("parameters_are_not_indices", y[n] * sp.Symbol("a", real=True) + sp.Symbol("t", integer=True), [n]),
    ("ellipsis", x[ELLIPSIS, n], [ELLIPSIS, n]),
]


@pytest.mark.parametrize(("e", "expected"), [(e, f) for _, e, f in FREE], ids=[name for name, _, _ in FREE])
def test_free_indices(e: sp.Basic, expected: list[sp.Symbol]) -> None:
    got = free_indices(e)
    assert set(got) == set(expected) and len(got) == len(set(got))
    if len(expected) > 1 and e.func in (sp.Indexed, ir.At, ir.Softmax, ir.Grad):
        assert got == expected  # first occurrence, where the order is fixed by the node's own arguments


@settings(max_examples=100, deadline=None)
@given(e=EXPRS)
def test_free_indices_are_exactly_the_names_the_value_reads(e: sp.Basic) -> None:
    got = free_indices(e)
    assert len(got) == len(set(got))
    assert set(got) == read_names(e)
    only_free = {s: 1 for s in got}
    evaluate(e, only_free)  # no KeyError: nothing else is needed to evaluate e


def test_the_evaluator_sees_a_bound_name_read_outside_its_scope() -> None:
    """Guard against a vacuous reference: a bound index used outside its reduction is a read."""
    e = ir.Sum_(y[k], sp.Tuple(k), sp.true) + y[k]
    assert read_names(e) == {k}
    with pytest.raises(KeyError):
        evaluate(e, {})


# ---- rename
@settings(max_examples=200, deadline=None)
@given(e=EXPRS, mapping=MAPPINGS, env=ENVS)
def test_rename_is_substitution_without_capture(e: sp.Basic, mapping: dict[sp.Symbol, sp.Basic],
                                               env: dict[sp.Symbol, int]) -> None:
    renamed = rename(e, mapping)
    inner = {s: (evaluate(mapping[s], env) if s in mapping else env[s]) for s in POOL}
    assert evaluate(renamed, env) == evaluate(e, inner)
    expected_free = set().union(*(set(free_indices(mapping[s])) if s in mapping else {s} for s in free_indices(e)))
    assert set(free_indices(renamed)) <= expected_free  # no fresh name leaks out (terms may cancel: <=)


def test_rename_renames_a_bound_index_that_would_capture() -> None:
    e = ir.Sum_(x[k, i], sp.Tuple(k), sp.Ne(k, i))
    r = rename(e, {i: k})
    assert isinstance(r, ir.Sum_) and k not in r.indices
    (b,) = r.indices
    assert ir.is_index(b) and str(b).startswith("k")
    assert free_indices(r) == [k]
    assert r == ir.Sum_(x[b, k], sp.Tuple(b), sp.Ne(b, k))
    for v in range(N):
        assert evaluate(r, {k: v}) == sum(X_TABLE[t, v] for t in range(N) if t != v)


def test_rename_captures_nothing_through_a_gather_value() -> None:
    e = ir.Max_(x[k, j], sp.Tuple(k), sp.true)
    r = rename(e, {j: y[k]})  # the new value reads the free k: the bound k must step aside
    assert free_indices(r) == [k]
    assert evaluate(r, {k: 0}) == max(X_TABLE[t, Y_TABLE[0]] for t in range(N))


def test_rename_leaves_bound_indices_alone() -> None:
    e = ir.Sum_(x[k, n], sp.Tuple(k), sp.Lt(k, n))
    assert rename(e, {k: m}) == e
    assert rename(e, {n: m}) == ir.Sum_(x[k, m], sp.Tuple(k), sp.Lt(k, m))


def test_rename_without_a_mapping_is_the_identity() -> None:
    e = x[n, c] + ir.Sum_(y[k], sp.Tuple(k), sp.true)
    assert rename(e, {}) is e
    assert rename(x[n, c], {m: k}) == x[n, c]


def test_rename_reaches_every_kind_of_node() -> None:
    """Tensors, gathers, normalisers, the values of an At, opaque calls and gradients rename; Size does not
    (it names an axis, which the renamed index shares)."""
    assert rename(x[n, y[n]], {n: m}) == x[m, y[m]]
    assert rename(ir.Softmax(x[n, c], c), {c: d, n: m}) == ir.Softmax(x[m, d], d)
    assert rename(ir.At(x[n, c], sp.Tuple(c), sp.Tuple(y[n])), {n: m}) == ir.At(x[m, c], sp.Tuple(c), sp.Tuple(y[m]))
    assert rename(ir.At(x[n, c], sp.Tuple(c), sp.Tuple(y[n])), {c: d}) == ir.At(x[n, c], sp.Tuple(c), sp.Tuple(y[n]))
    call = ir.FnCall(FN, sp.Tuple(x[n, d]), sp.Tuple(n))
    assert rename(call, {n: m}) == ir.FnCall(FN, sp.Tuple(x[m, d]), sp.Tuple(m))
    assert rename(ir.Grad(y[n], x[n, d]), {d: c}) == ir.Grad(y[n], x[n, c])
    assert rename(ir.Size(c), {c: d}) == ir.Size(c)
    assert rename(sp.Symbol("a", real=True) * y[n], {n: m}) == sp.Symbol("a", real=True) * y[m]


def test_rename_into_an_integer_position() -> None:
    e = ir.Sum_(x[k, n], sp.Tuple(k), sp.Ne(k, n))
    r = rename(e, {n: sp.Integer(2)})
    assert free_indices(r) == []
    assert evaluate(r, {}) == sum(X_TABLE[t, 2] for t in range(N) if t != 2)


def test_rename_does_not_capture_through_at() -> None:
    e = ir.At(x[k, j], sp.Tuple(j), sp.Tuple(0))  # x[k, 0], k free
    r = rename(e, {k: j})  # should be x[j, 0], j free
    assert free_indices(r) == [j]
    assert [evaluate(r, {j: v}) for v in range(N)] == [X_TABLE[v, 0] for v in range(N)]


def test_an_intermediate_read_at_a_position_keeps_its_free_index(cache_dir) -> None:
    import torch

    src = "loss l(x[i, j]):\n    h[i, j] = 2 * x[i, j]\n    g[k] = h[k, 0]\n    g[j]\n"
    x_val = torch.arange(9.0, dtype=torch.float64).reshape(3, 3)
    out = lossdsl.compile(src, reduction="none")(x_val)
    assert out.tolist() == (2 * x_val[:, 0]).tolist()


# ---- fresh
def test_fresh_names_are_new_index_symbols_with_the_same_base() -> None:
    names = [fresh(k) for _ in range(5)]
    assert len(set(names)) == 5 and k not in names
    assert all(ir.is_index(s) and s.name.startswith("k__") for s in names)
    again = fresh(names[0])
    assert again.name.startswith("k__") and again.name.count("__") == 1 and again not in names


def test_ellipsis_is_an_index() -> None:
    assert ir.is_index(ELLIPSIS) and ELLIPSIS.name == "..."
