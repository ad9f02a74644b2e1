"""The syntax tree (lossdsl.syntax): what its dataclasses promise the parser, the front end and the cache.

The nodes carry the source span every error message points at, yet two trees that differ only in where they
were written are the same definition: equality, hashing and `repr` ignore spans (and a definition's source
text). The api keys its disk cache of lowered losses by `repr(definition)`, the parse cache pickles trees, the
front end shares one parsed stdlib between all callers, and `lossdsl.api` builds declarations positionally,
leaning on the defaults. These tests pin those properties, on random trees (hypothesis) and on parsed ones.
How text becomes a tree is tests/test_parser.py's business and is not repeated here.
"""

from __future__ import annotations

import dataclasses
import itertools
import pickle
import types
import typing
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossdsl import syntax as s
from lossdsl.errors import Span
from lossdsl.parser import parse_text

# ---------------------------------------------------------------- random trees, built from a plain description

SPANS = st.builds(Span, st.integers(1, 40), st.integers(1, 80), st.integers(1, 40), st.integers(1, 80))
NAMES = st.sampled_from(["x", "y", "alpha", "n"])
# integers and non-integral floats only: 1 == 1.0 in Python, so Num(1) == Num(1.0) (see the last test)
NUMBERS = st.integers(-5, 5) | st.sampled_from([0.5, 2.5, -1.5])


def _red_item() -> st.SearchStrategy[tuple]:
    return st.tuples(st.just("red"), NAMES, st.booleans(), st.sampled_from([None, "!=", "<="]))


def _extend(inner: st.SearchStrategy[tuple]) -> st.SearchStrategy[tuple]:
    item = inner.map(lambda e: ("item", e)) | st.just(("group", "s"))
    return st.one_of(
        st.tuples(st.just("unary"), st.sampled_from(["-", "not", "abs", "iverson"]), inner),
        st.tuples(st.just("binary"), st.sampled_from(["+", "*", "^", "==", "and"]), inner, inner),
        st.tuples(st.just("ifelse"), inner, inner, inner),
        st.tuples(st.just("sub"), inner, st.lists(item, min_size=1, max_size=3).map(tuple)),
        st.tuples(st.just("call"), st.sampled_from(["exp", "sum_c", "sum_"]), st.lists(inner, max_size=2).map(tuple),
                  st.lists(st.tuples(NAMES, inner), max_size=1).map(tuple),
                  st.none() | st.lists(_red_item(), min_size=1, max_size=2).map(tuple)),
    )


DESCRIPTIONS = st.recursive(st.tuples(st.just("num"), NUMBERS) | st.tuples(st.just("name"), NAMES), _extend,
                            max_leaves=8)


def build(desc: tuple, span: Callable[[], Span]) -> s.Node:
    """The syntax node a description stands for, each node given the next span from `span`."""
    kind, *rest = desc
    if kind == "num":
        return s.Num(span(), rest[0])
    if kind == "name":
        return s.Name(span(), rest[0])
    if kind == "unary":
        return s.Unary(span(), rest[0], build(rest[1], span))
    if kind == "binary":
        return s.Binary(span(), rest[0], build(rest[1], span), build(rest[2], span))
    if kind == "ifelse":
        return s.IfElse(span(), *(build(d, span) for d in rest))
    if kind == "sub":
        items = tuple(s.IndexItem(span(), build(d, span)) if k == "item" else s.IndexItem(span(), None, group=d)
                      for k, d in rest[1])
        return s.Subscript(span(), build(rest[0], span), items)
    func, args, kwargs, red = rest
    reds = None if red is None else tuple(
        s.RedItem(span(), index, group, op, None if op is None else s.Num(span(), 0)) for _, index, group, op in red)
    return s.Call(span(), func, tuple(build(a, span) for a in args),
                  tuple((k, build(v, span)) for k, v in kwargs), reds)


def spans_from(pool: list[Span]) -> Callable[[], Span]:
    cycle = itertools.cycle(pool)
    return lambda: next(cycle)


def nodes(tree: object) -> Iterator[s.Node]:
    """Every syntax node in a tree, depth first, reached through the dataclass fields and tuples."""
    if isinstance(tree, tuple):
        for part in tree:
            yield from nodes(part)
    elif dataclasses.is_dataclass(tree):
        if isinstance(tree, s.Node):
            yield tree
        for f in dataclasses.fields(tree):
            yield from nodes(getattr(tree, f.name))


EVERYTHING = '''
# a comment, so that the definition does not start on line 1
loss full(x[n, c, *s]: logits, y[n, *s]: index(c), g: fn;
          w[c] = 1, k: int = -100, on: bool = false, t[m]: learnable = 0, a = 0.5 in [0, 1], need):
    """What it is for."""
    p = softmax_c(x)
    z[i, j] = sum_{k2 != i}(x[i, 0, *s] ** 2) + g(p)[n]
    h = |p - 1| if not on else -[y == c]
    return h * mean(p) + max_{*s}(z[n, n])
    reduce mean weighted by w[y]
'''


# ---------------------------------------------------------------- equality, hashing and printing


@settings(max_examples=60, deadline=None)
@given(DESCRIPTIONS, st.lists(SPANS, min_size=1, max_size=5), st.lists(SPANS, min_size=1, max_size=5))
def test_where_a_tree_was_written_changes_neither_equality_nor_hash_nor_repr(desc: tuple, first: list[Span],
                                                                             second: list[Span]) -> None:
    a, b = build(desc, spans_from(first)), build(desc, spans_from(second))
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    assert all(node.span in first for node in nodes(a)) and all(node.span in second for node in nodes(b))
    if set(first).isdisjoint(second):  # the spans are kept, only not compared
        assert all(p.span != q.span for p, q in zip(nodes(a), nodes(b), strict=True))
    assert "span" not in repr(a) and "Span(" not in repr(a)


@settings(max_examples=60, deadline=None)
@given(DESCRIPTIONS, DESCRIPTIONS, st.lists(SPANS, min_size=1, max_size=3))
def test_trees_are_equal_and_print_alike_exactly_when_they_say_the_same(one: tuple, other: tuple,
                                                                         pool: list[Span]) -> None:
    a, b = build(one, spans_from(pool)), build(other, spans_from(pool))
    assert (a == b) == (one == other)
    assert (repr(a) == repr(b)) == (one == other)  # the api's cache key of a lowered loss is repr(definition)


def change_first_leaf(desc: tuple) -> tuple:
    """The description with its first number, name or function name replaced by a different one."""
    kind, *rest = desc
    if kind == "num":
        return ("num", rest[0] + 1)
    if kind in ("name", "call"):
        return (kind, rest[0] + "_", *rest[1:])
    if kind in ("unary", "binary"):
        return (kind, rest[0], change_first_leaf(rest[1]), *rest[2:])
    return (kind, change_first_leaf(rest[0]), *rest[1:])  # ifelse, sub


@settings(max_examples=40, deadline=None)
@given(DESCRIPTIONS, st.lists(SPANS, min_size=1, max_size=3))
def test_changing_one_leaf_makes_another_tree(desc: tuple, pool: list[Span]) -> None:
    changed = change_first_leaf(desc)
    assert changed != desc
    a, b = build(desc, spans_from(pool)), build(changed, spans_from(pool))
    assert a != b and repr(a) != repr(b)


def test_equal_trees_are_one_key_in_a_set_or_dict() -> None:
    x_here, x_there = s.Name(Span(1, 1, 1, 2), "x"), s.Name(Span(7, 3, 7, 4), "x")
    table = {x_here: "first"}
    table[x_there] = "second"
    assert table == {s.Name(Span(2, 2, 2, 3), "x"): "second"}
    assert len({s.Num(Span(1, 1, 1, 2), 2), s.Num(Span(3, 1, 3, 2), 2), s.Num(Span(1, 1, 1, 2), 3)}) == 2


def test_a_definition_written_elsewhere_in_a_file_is_the_same_definition() -> None:
    """Same text at another place: the same LossDef, the same cache key, but its own spans and source."""
    text = "loss a(x[n]; g = 2):\n    y = x^g\n    -y\n"
    (here,) = parse_text(text)
    there = parse_text("# moved down\n\nloss b(z):\n    z\n\n" + text)[-1]
    assert here == there and hash(here) == hash(there) and repr(here) == repr(there)
    assert here.source != there.source and "moved down" not in repr(there)
    assert (here.span.line, there.span.line) == (1, 6)
    assert [n.span.line for n in nodes(here.body)] == [n.span.line - 5 for n in nodes(there.body)]


@pytest.mark.parametrize("change", [
    {"doc": "another"}, {"header": False}, {"name": "b"},
    {"params": ()}, {"body": ()},
])
def test_a_definition_differing_in_any_compared_field_is_another_definition(change: dict) -> None:
    (d,) = parse_text('loss a(x; g = 2):\n    "doc"\n    x * g\n')
    other = dataclasses.replace(d, **change)
    assert other != d and repr(other) != repr(d)
    assert dataclasses.replace(d, source="anything else", span=Span(9, 9, 9, 9)) == d


# ---------------------------------------------------------------- immutability and serialisation


@pytest.mark.parametrize("attr,value", [("span", Span(1, 1, 1, 1)), ("name", "b"), ("body", ()), ("doc", "x")])
def test_nodes_are_immutable(attr: str, value: object) -> None:
    """The parsed stdlib is shared by every loss that calls into it; nothing may change it in place."""
    (d,) = parse_text(EVERYTHING)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(d, attr, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.body[0].value.func = "log_softmax_c"  # type: ignore[misc]
    assert isinstance(d.body, tuple) and isinstance(d.inputs, tuple) and isinstance(d.params, tuple)


def test_pickling_keeps_every_span_and_the_source() -> None:
    """The parse cache stores trees as pickles; the positions in error messages after a cache hit come back
    from them. Equality ignores spans, so they are compared one by one."""
    (d,) = parse_text(EVERYTHING)
    back = pickle.loads(pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == d and back.source == d.source == EVERYTHING
    assert [(type(n), n.span) for n in nodes(back)] == [(type(n), n.span) for n in nodes(d)]
    assert len(list(nodes(d))) > 40


# ---------------------------------------------------------------- defaults and declared types


def test_defaults_are_what_the_builders_leave_out() -> None:
    """lossdsl.api declares a formula's inputs as InputDecl(span, name, None) and its parameters positionally;
    those must mean what the parser builds for a header that says no more."""
    sp0 = Span(1, 1, 1, 1)
    (d,) = parse_text("loss a(x; g):\n    x")
    assert d.inputs == (s.InputDecl(sp0, "x", None),)
    assert (d.inputs[0].kind, d.inputs[0].kind_arg) == ("real", None)
    assert d.params == (s.ParamDecl(sp0, "g", None, None, None, None),)
    assert d.doc is None and d.header
    assert s.LossDef(sp0, "a", d.inputs, d.params, d.body) == d
    call = s.Call(sp0, "f", ())
    assert (call.kwargs, call.red_items) == ((), None)
    assert dataclasses.astuple(s.Statement(sp0, "bare"))[1:] == ("bare", None, None, None)
    red = s.RedItem(sp0, "k")
    assert (red.group, red.op, red.bound) == (False, None, None)
    assert s.IndexItem(sp0, s.Name(sp0, "n")).group is None
    assert s.Axis("n") == s.Axis("n", group=False) != s.Axis("n", group=True)


def conforms(value: object, hint: object) -> bool:
    """Whether a value matches a field's annotation, for the annotation forms syntax.py uses."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(args) == len(value) and all(conforms(v, a) for v, a in zip(value, args, strict=True))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def test_the_expression_type_is_the_union_of_the_expression_nodes() -> None:
    members = set(typing.get_args(s.Expr))
    assert members == {s.Num, s.Name, s.Unary, s.Binary, s.IfElse, s.Subscript, s.Call}
    assert all(issubclass(m, s.Node) for m in members)
    assert not any(issubclass(c, tuple(members)) for c in (s.Statement, s.LossDef, s.InputDecl, s.IndexItem))


def test_a_parsed_tree_matches_the_declared_field_types() -> None:
    """The front end dispatches on these types: every field of every node holds what syntax.py declares."""
    (d,) = parse_text(EVERYTHING)
    seen = set()
    for node in [*nodes(d), *(a for i in d.inputs for a in i.axes or ())]:
        hints = typing.get_type_hints(type(node), vars(s))
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            assert conforms(value, hints[f.name]), (type(node).__name__, f.name, value)
        seen.add(type(node))
    assert seen >= {s.Num, s.Name, s.Unary, s.Binary, s.IfElse, s.Subscript, s.Call, s.IndexItem, s.RedItem,
                    s.Axis, s.InputDecl, s.Constraint, s.ParamDecl, s.Statement, s.LossDef}


def test_parsed_operators_and_kinds_are_the_documented_vocabulary() -> None:
    """The front end switches on these strings; syntax.py lists what each field may hold."""
    (d,) = parse_text(EVERYTHING + "loss b(x):\n    x\n    reduce sum\n")[:1]
    everything = list(nodes(d))
    unary = {n.op for n in everything if isinstance(n, s.Unary)}
    binary = {n.op for n in everything if isinstance(n, s.Binary)}
    assert unary <= {"-", "+", "not", "abs", "iverson"} and {"-", "not", "abs", "iverson"} <= unary
    assert binary <= {"+", "-", "*", "/", "^", "and", "or", "==", "!=", "<", "<=", ">", ">="}
    assert {"*", "^", "+", "-", "=="} <= binary
    assert {st_.kind for st_ in d.body} == {"assign", "return", "reduce"}
    assert {p.constraint.op for p in d.params if p.constraint} == {"in"}
    assert {p.type for p in d.params} == {None, "int", "bool", "learnable"}


def test_repr_tells_an_integer_from_a_float_though_equality_does_not() -> None:
    """1 == 1.0, so Num(1) == Num(1.0), yet the front end lowers them to SymPy's Integer and Float. Anything
    keyed by a tree must use repr (as the api's cache does), which tells them apart."""
    one, one_point_zero = s.Num(Span(1, 1, 1, 2), 1), s.Num(Span(1, 1, 1, 4), 1.0)
    assert one == one_point_zero and repr(one) != repr(one_point_zero)
