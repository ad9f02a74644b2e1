"""latex_emit: the second half of LaTeX input, a formula tree (latex_in's Node classes) → lossdsl source text.

test_latex_in.py checks whole textbook formulas end to end, through the reader, against the stdlib. Here the
Emitter is driven directly with formula trees built by hand, so each of its own rules is checked on its own:
what each node is written as, what a symbol is taken to be (index, input with which axes, parameter, size,
intermediate, constant), the renaming of `\\sum_{i=1}^{N}`, the feature and gather axes it invents, the stable
forms it writes for `\\log` (quotients, exp, sigmoid, sums of exponentials, `y \\log p` as xlogy), the layout of
the generated definition, and its errors. Expected texts are derived by hand from those rules.

The property tests generate random formula trees, emit them, compile the text with lossdsl, and compare the
module with an evaluation of the *tree itself* in mpmath (written here, independent of the emitter), so the
stable rewrites are checked to keep the formula's value.
"""

from __future__ import annotations

import mpmath
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl.latex_emit import Emitter, InputDecl, _check_name, _children, _is_log, _suffix, _walk
from lossdsl.latex_in import Apply, Bin, Call, Cases, Cmp, LatexError, Node, Norm, Num, Reduce, Sym, Tok, Unary

mp = mpmath.mp
D = torch.float64


# ---- building formula trees by hand
def tok(text: str, kind: str = "letter") -> Tok:
    return Tok(kind, text, 0)


def sym(base: str, *subs: str, style: str = "letter", bold: bool = False, pos: int = 0) -> Sym:
    """`sym("x", "ij")` is x_{ij}: each string is one comma-separated subscript item of single-letter tokens."""
    items = [[tok(ch) if ch.isalpha() else tok(ch, "sym") for ch in s] for s in subs]
    return Sym(pos, base, style, items or None, bold)


def gather_sub(base: str, index: str) -> list[Tok]:
    """The tokens of a gather subscript `y_i` (as in c_{y_i})."""
    return [tok(base), tok("_", "sym"), tok(index)]


def num(value: str) -> Num:
    return Num(0, value)


def call(fn: str, *args: Node) -> Call:
    return Call(0, fn, list(args))


def bin_(op: str, a: Node, b: Node) -> Bin:
    return Bin(0, op, a, b)


def red(op: str, indices: list[str], body: Node, conds: list[tuple[str, str, Node]] | None = None,
        bound: str | None = None) -> Reduce:
    return Reduce(0, op, indices, conds or [], body, bound)


def emitter(main: Node, defs: list[tuple[Sym, Node]] | None = None, params: dict[str, float | None] | None = None,
            inputs: tuple[str, ...] = (), vectors: tuple[str, ...] = (), text: str = "") -> Emitter:
    return Emitter(text, main, defs or [], dict(params or {}), set(inputs), set(vectors), [])


def emit(main: Node, **kw: object) -> tuple[str, str]:
    """(the loss's header line, its return expression) of the emitted source."""
    lines = emitter(main, **kw).source("t", "tex").splitlines()  # type: ignore[arg-type]
    header = next(line for line in lines if line.startswith("loss "))
    assert lines[-1].startswith("    return ")
    return header, lines[-1].removeprefix("    return ")


# ---- what each node is written as
@pytest.mark.parametrize(("tree", "header", "body"), [
    (bin_("+", sym("a"), sym("b")), "loss t(a, b):", "(a + b)"),
    (bin_("-", sym("b"), sym("a")), "loss t(b, a):", "(b - a)"),  # inputs in order of first appearance
    (bin_("dot", num("2"), sym("a")), "loss t(a):", "(2 * a)"),
    (bin_("/", sym("a"), num("0.5")), "loss t(a):", "(a / 0.5)"),
    (bin_("^", sym("a"), num("3")), "loss t(a):", "(a)^(3)"),
    (Unary(0, "neg", sym("a")), "loss t(a):", "(-a)"),
    (Unary(0, "abs", sym("a")), "loss t(a):", "abs(a)"),
    (Unary(0, "relu", sym("a")), "loss t(a):", "relu(a)"),
    (Unary(0, "transpose", sym("a")), "loss t(a[d]):", "a[d]"),  # a transposed tensor is a vector
    (Unary(0, "not", Cmp(0, ">", sym("a"), num("0"))), "loss t(a):", "(not (a > 0))"),
    (Unary(0, "iverson", Cmp(0, "==", sym("a"), sym("b"))), "loss t(a, b):", "[(a == b)]"),
    (Cmp(0, "and", Cmp(0, "<", sym("a"), num("1")), Cmp(0, ">=", sym("b"), num("2"))), "loss t(a, b):",
     "((a < 1) and (b >= 2))"),
    (call("tanh", sym("a")), "loss t(a):", "tanh(a)"),
    (call("min", sym("a"), sym("b")), "loss t(a, b):", "min(a, b)"),
    (call("max", sym("a"), sym("b"), num("0")), "loss t(a, b):", "max(a, max(b, 0))"),  # n-ary max nests
    (Sym(0, "pi", "const"), "loss t():", "pi"),
    (bin_("dot", sym("alpha", style="greek"), sym("a")), "loss t(a; alpha):", "(alpha * a)"),
    (bin_("+", sym("a"), sym("margin", style="word")), "loss t(a; margin):", "(a + margin)"),
])
def test_each_node_is_written_as_lossdsl(tree: Node, header: str, body: str) -> None:
    assert emit(tree) == (header, body)


def test_cases_nest_as_conditional_expressions_and_the_last_row_is_otherwise() -> None:
    rows: list[tuple[Node, Node | None]] = [
        (sym("a"), Cmp(0, ">", sym("x"), num("1"))),
        (sym("b"), Cmp(0, "<", sym("x"), num("0"))),
        (num("0"), None)]
    e = emitter(Cases(0, rows))
    assert e.emit(e.main) == "(a if (x > 1) else (b if (x < 0) else 0))"
    assert e.notes == []


def test_a_last_cases_row_with_a_condition_is_read_as_otherwise_with_a_note() -> None:
    e = emitter(Cases(0, [(sym("a"), Cmp(0, ">", sym("x"), num("0"))), (sym("b"), Cmp(0, "<=", sym("x"), num("0")))]))
    assert e.emit(e.main) == "(a if (x > 0) else b)"
    assert e.notes == ["read the last row of a cases block as 'otherwise'"]


def test_cases_declare_inputs_in_order_of_appearance() -> None:
    tree = Cases(0, [(sym("a"), Cmp(0, ">", sym("x"), num("0"))), (sym("b"), None)])
    assert emit(tree)[0] == "loss t(a, x, b):"


def test_only_the_last_cases_row_may_be_otherwise() -> None:
    tree = Cases(0, [(Sym(7, "a", "letter"), None), (sym("b"), Cmp(0, ">", sym("x"), num("0")))])
    with pytest.raises(LatexError, match="only the last row") as info:
        emitter(tree).source("t", "")
    assert info.value.column == 8  # the value of the offending row, 1-based


# ---- reductions
@pytest.mark.parametrize(("op", "idx", "conds", "want"), [
    ("sum", ["i"], [], "sum_i"),
    ("prod", ["i", "j"], [], "prod_{i, j}"),
    ("max", ["j"], ["j != i"], "max_{j != i}"),
    ("sum", ["i", "j"], ["j != i"], "sum_{i, j != i}"),  # the conditioned index is written with its condition
    ("min", ["i", "j", "k"], ["k <= j"], "min_{i, j, k <= j}"),
])
def test_reduction_heads(op: str, idx: list[str], conds: list[str], want: str) -> None:
    assert Emitter.reduction(op, idx, conds) == want


def test_a_sum_over_an_indexed_tensor_declares_its_axis() -> None:
    assert emit(red("sum", ["i"], sym("x", "i"))) == ("loss t(x[i]):", "sum_i(x[i])")
    pairwise = red("sum", ["i", "j"], bin_("dot", sym("x", "ij"), sym("y", "ji")), [("j", "!=", sym("i"))])
    assert emit(pairwise) == ("loss t(x[i, j], y[j, i]):", "sum_{i, j != i}((x[i, j] * y[j, i]))")


def test_a_bare_sum_sums_over_the_lowercase_subscripts_of_its_body() -> None:
    r = Reduce(0, "sum", None, [], bin_("dot", sym("p", "i"), sym("g", "j")))
    assert emit(r) == ("loss t(p[i], g[j]):", "sum_{i, j}((p[i] * g[j]))")
    assert r.indices == ["i", "j"]


def test_a_bare_sum_without_subscripted_tensors_is_an_error() -> None:
    with pytest.raises(LatexError, match="without a subscript"):
        emitter(Reduce(3, "sum", None, [], sym("p")))


def test_an_index_used_as_a_value_is_its_position() -> None:
    assert emit(red("sum", ["i"], bin_("dot", sym("i"), sym("x", "i")))) == ("loss t(x[i]):", "sum_i((i * x[i]))")


def test_the_upper_bound_renames_the_index_and_its_capital_is_the_axis_size() -> None:
    tree = bin_("/", red("sum", ["i"], sym("x", "i"), bound="N"), sym("N"))
    e = emitter(tree)
    assert e.rename == {"i": "n"}
    assert emit(tree) == ("loss t(x[n]):", "(sum_n(x[n]) / N)")  # N is no input: the size of axis n


def test_no_rename_onto_a_letter_already_in_use() -> None:
    """`n_i` is a tensor named n: renaming i to n would capture it, so i stays."""
    tree = red("sum", ["i"], bin_("dot", sym("n", "i"), sym("x", "i")), bound="N")
    assert emitter(tree).rename == {}
    assert emit(tree) == ("loss t(n[i], x[i]):", "sum_i((n[i] * x[i]))")


def test_the_capital_of_a_summation_index_is_a_size_and_other_capitals_are_inputs() -> None:
    assert emit(red("sum", ["c"], bin_("/", sym("x", "c"), sym("C")))) == ("loss t(x[c]):", "sum_c((x[c] / C))")
    assert emit(red("sum", ["c"], bin_("/", sym("x", "c"), sym("K")))) == ("loss t(x[c], K):", "sum_c((x[c] / K))")


def test_a_size_cannot_be_indexed() -> None:
    with pytest.raises(LatexError, match="size of an axis"):
        emitter(red("sum", ["c"], sym("C", "c"))).source("t", "")


# ---- names: subscripts, gathers, vectors, parameters
@pytest.mark.parametrize(("tree", "name"), [
    (sym("p", "t"), "p_t"),  # a subscript that is no summation index is part of the name
    (sym("k", "+"), "k_pos"),
    (sym("k", "-"), "k_neg"),
    (sym("x", "*"), "x_star"),
    (sym("w", "ab"), "w_ab"),
    (sym("w", "a", "b"), "w_a_b"),
])
def test_subscripts_that_are_not_indices_become_part_of_the_name(tree: Sym, name: str) -> None:
    assert emit(tree) == (f"loss t({name}):", name)


def test_suffix_spelling() -> None:
    assert _suffix([tok("{", "sym"), tok("+", "sym"), tok("}", "sym")]) == "pos"
    assert _suffix([tok("'", "sym")]) == "prime"
    assert _suffix([tok("1", "num"), tok("2", "num")]) == "12"
    assert _suffix([tok("?", "sym")]) == "sub"  # nothing spellable: a placeholder, never an empty name


def test_a_gather_subscript_reads_a_label_and_gives_the_table_a_fresh_axis() -> None:
    c = Sym(0, "c", "letter", [gather_sub("y", "i")])
    assert emit(red("sum", ["i"], c)) == ("loss t(c[k], y[i]: index(k)):", "sum_i(c[y[i]])")
    both = Sym(0, "p", "letter", [[tok("i")], gather_sub("y", "i")])  # p_{i, y_i}
    assert emit(red("sum", ["i"], both)) == ("loss t(p[i, k], y[i]: index(k)):", "sum_i(p[i, y[i]])")


def test_fresh_gather_axes_skip_letters_in_use() -> None:
    """k is a summation index here, so the gathered table's axis is the next gather letter, m."""
    c = Sym(0, "c", "letter", [gather_sub("y", "i")])
    tree = red("sum", ["i", "k"], bin_("dot", c, sym("z", "k")))
    assert emit(tree) == ("loss t(c[m], y[i]: index(m), z[k]):", "sum_{i, k}((c[y[i]] * z[k]))")


def test_a_repeated_index_gets_a_second_axis_for_the_diagonal() -> None:
    assert emit(red("sum", ["i"], sym("x", "ii"))) == ("loss t(x[i, k]):", "sum_i(x[i, i])")


def test_norms_and_inner_products_give_their_tensors_a_feature_axis() -> None:
    diff = bin_("-", sym("u"), sym("v"))
    assert emit(Norm(0, diff, "2")) == ("loss t(u[d], v[d]):", "norm_d((u[d] - v[d]))")
    assert emit(Norm(0, bin_("-", sym("u"), sym("v")), "F"))[1] == "norm_d((u[d] - v[d]))"
    assert emit(Norm(0, bin_("-", sym("u"), sym("v")), "1"))[1] == "sum_d(abs((u[d] - v[d])))"
    assert emit(bin_("^", Norm(0, sym("u"), "2"), num("2")))[1] == "sum_d((u[d])^2)"
    assert emit(bin_("inner", sym("u"), sym("v"))) == ("loss t(u[d], v[d]):", "sum_d(u[d] * v[d])")
    bold = bin_("dot", sym("u", bold=True), sym("v", bold=True))
    assert emit(bold) == ("loss t(u[d], v[d]):", "sum_d(u[d] * v[d])")


def test_a_product_of_a_vector_and_a_scalar_is_no_inner_product() -> None:
    assert emit(bin_("dot", sym("u", bold=True), sym("a")))[1] == "(u[d] * a)"


def test_the_feature_axis_avoids_letters_in_use() -> None:
    assert emit(Norm(0, bin_("-", sym("d"), sym("x")), "2")) == ("loss t(d[e], x[e]):", "norm_e((d[e] - x[e]))")
    assert emitter(Norm(0, sym("d"), "2"), vectors=("e",)).vec_axis == "e"  # naming a vector uses no letter
    crowded = bin_("+", Norm(0, sym("u"), "2"), bin_("+", sym("d"), bin_("+", sym("e"), sym("h"))))
    assert emitter(crowded).vec_axis == "r"


def test_a_p_norm_other_than_1_and_2_is_an_error() -> None:
    with pytest.raises(LatexError, match="3-norm"):
        emitter(Norm(0, sym("u"), "3")).source("t", "")


def test_vectors_and_forced_inputs() -> None:
    assert emit(bin_("dot", sym("q"), sym("k")), vectors=("q", "k")) == ("loss t(q[d], k[d]):", "sum_d(q[d] * k[d])")
    assert emit(sym("mu", style="greek"), inputs=("mu",)) == ("loss t(mu):", "mu")
    assert emit(sym("mu", style="greek")) == ("loss t(; mu):", "mu")
    assert emit(sym("z"), params={"z": None}) == ("loss t(; z):", "z")  # a named parameter, even a letter


def test_parameter_defaults_are_written_in_the_header() -> None:
    tree = bin_("dot", sym("alpha", style="greek"), bin_("+", sym("a"), sym("w")))
    assert emit(tree, params={"alpha": 0.25, "w": 2.0}) == ("loss t(a; alpha = 0.25, w = 2.0):",
                                                            "(alpha * (a + w))")


def test_a_greek_letter_under_a_summation_index_is_a_shaped_parameter() -> None:
    tree = red("sum", ["l"], bin_("dot", sym("lam", "l", style="greek"), sym("x", "l")))
    assert emit(tree) == ("loss t(x[l]; lam[l]):", "sum_l((lam[l] * x[l]))")


def test_a_shaped_parameter_cannot_gather() -> None:
    lam = Sym(0, "lam", "greek", [gather_sub("y", "i")])
    with pytest.raises(LatexError, match="summation indices only"):
        emitter(red("sum", ["i"], lam)).source("t", "")


def test_an_indexed_word_is_a_tensor() -> None:
    assert emit(red("sum", ["i"], sym("Target", "i", style="word"))) == ("loss t(Target[i]):", "sum_i(Target[i])")


def test_an_input_used_with_different_index_counts_is_an_error() -> None:
    tree = bin_("+", red("sum", ["i"], sym("x", "i")), Sym(11, "x", "letter"))
    with pytest.raises(LatexError, match="'x' is used with 0 indices here but 1 elsewhere") as info:
        emitter(tree).source("t", "")
    assert info.value.column == 12


@pytest.mark.parametrize("word", ["sum", "where", "mean", "log"])
def test_reserved_words_cannot_name_tensors_or_parameters(word: str) -> None:
    with pytest.raises(LatexError, match="reserved word"):
        emitter(sym(word, style="word")).source("t", "")
    with pytest.raises(LatexError, match="reserved word"):
        emitter(red("sum", ["i"], sym(word, "i", style="word"))).source("t", "")
    assert _check_name("margin", "", 0) == "margin"


# ---- applications f(x)
def test_function_notation_reads_as_a_network_output_with_one_note() -> None:
    tree = bin_("+", Apply(0, sym("f"), [sym("x")]), Apply(0, sym("f"), [sym("x")]))
    e = emitter(tree)
    assert e.emit(e.main) == "(f_x + f_x)"
    assert e.notes == ["read f(...) as the input tensor f_x (the network's output)"]
    nested = Apply(0, sym("D"), [Apply(0, sym("G"), [sym("z")])])
    assert emit(nested) == ("loss t(D_G_z):", "D_G_z")


def test_function_notation_on_indices_indexes_the_tensor() -> None:
    tree = red("sum", ["i"], bin_("dot", Apply(0, sym("P"), [sym("i")]), Apply(0, sym("Q"), [sym("i")])))
    assert emit(tree) == ("loss t(P[i], Q[i]):", "sum_i((P[i] * Q[i]))")


def test_function_notation_keeps_the_indices_of_its_argument() -> None:
    assert emit(red("sum", ["i"], Apply(0, sym("f"), [sym("x", "i")]))) == ("loss t(f_x[i]):", "sum_i(f_x[i])")


def test_a_function_of_an_expression_is_an_error() -> None:
    with pytest.raises(LatexError, match="function applied to an expression"):
        emitter(Apply(0, sym("f"), [bin_("+", sym("x"), sym("y"))])).source("t", "")


def test_known_functions_take_one_argument_and_mean_is_noted() -> None:
    with pytest.raises(LatexError, match=r"\\sin takes one argument"):
        emitter(call("sin", sym("a"), sym("b"))).source("t", "")
    e = emitter(call("mean", sym("x")))
    assert e.emit(e.main) == "mean(x)"
    assert e.notes == ["read \\mathbb{E}[...] as the mean over every element of its argument"]


# ---- the stable forms of log
@pytest.mark.parametrize(("arg", "want"), [
    (bin_("/", sym("a"), sym("b")), "(log(a) - log(b))"),
    (bin_("/", call("exp", sym("a")), bin_("+", num("1"), call("exp", sym("a")))), "(a - log((1 + exp(a))))"),
    (call("exp", bin_("dot", num("2"), sym("a"))), "(2 * a)"),
    (call("sigmoid", sym("a")), "logsigmoid(a)"),
    (bin_("-", num("1"), call("sigmoid", sym("a"))), "logsigmoid(-(a))"),
    (bin_("-", num("2"), call("sigmoid", sym("a"))), "log((2 - sigmoid(a)))"),  # only 1 - sigmoid
    (bin_("+", num("1"), sym("a")), "log((1 + a))"),
    (sym("a"), "log(a)"),
])
def test_log_is_written_in_its_stable_form(arg: Node, want: str) -> None:
    assert emit(call("log", arg))[1] == want


def test_log_of_a_sum_of_exponentials_is_logsumexp() -> None:
    assert emit(call("log", red("sum", ["j"], call("exp", sym("s", "j")))))[1] == "logsumexp_j(s[j])"
    cond = red("sum", ["j"], call("exp", sym("s", "ij")), [("j", "!=", sym("i"))])
    assert emit(red("sum", ["i"], call("log", cond)))[1] == "sum_i(logsumexp_{j != i}(s[i, j]))"
    assert emit(call("log", red("sum", ["j"], sym("s", "j"))))[1] == "log(sum_j(s[j]))"  # no exp: a plain log


def test_a_tensor_times_a_log_is_xlogy() -> None:
    assert emit(bin_("dot", sym("y"), call("log", sym("p")))) == ("loss t(y, p):", "xlogy(y, p)")
    ratio = bin_("dot", sym("y"), call("log", bin_("/", sym("p"), sym("q"))))
    assert emit(ratio) == ("loss t(y, p, q):", "(xlogy(y, p) - xlogy(y, q))")  # the quotient distributes


def test_a_constant_or_parameter_times_a_log_and_a_stable_log_stay_products() -> None:
    assert emit(bin_("dot", num("2"), call("log", sym("p"))))[1] == "(2 * log(p))"
    assert emit(bin_("dot", sym("alpha", style="greek"), call("log", bin_("/", sym("p"), sym("q")))))[1] == \
        "(alpha * (log(p) - log(q)))"
    assert emit(bin_("dot", sym("y"), call("log", call("sigmoid", sym("x")))))[1] == "(y * logsigmoid(x))"


def test_is_log() -> None:
    assert _is_log(call("log", sym("a")))
    assert not _is_log(call("log", sym("a"), sym("b"))) and not _is_log(call("exp", sym("a"))) and not _is_log(sym("a"))


# ---- definitions and the generated text
def test_definitions_come_in_dependency_order_before_the_loss() -> None:
    """A paper states p_t after the formula that uses it, and q after p_t; the text defines q, then p_t."""
    p_t = sym("p", "t")
    defs = [(sym("p", "t"), bin_("dot", sym("q"), sym("r"))), (sym("q"), bin_("+", sym("a"), num("1")))]
    text = emitter(bin_("dot", num("2"), p_t), defs=defs).source("focal", r"2 p_t, \quad ...")
    assert text == ("# from LaTeX: 2 p_t, \\quad ...\n"
                    "loss focal(a, r):\n"
                    "    q = (a + 1)\n"
                    "    p_t = (q * r)\n"
                    "    return (2 * p_t)\n")


def test_an_indexed_definition_declares_its_axes_and_is_read_with_them() -> None:
    s = red("sum", ["i"], sym("s", "i"))
    defs = [(sym("s", "i"), bin_("dot", sym("x", "i"), sym("w")))]
    text = emitter(s, defs=defs).source("t", "")
    assert text.splitlines()[1:] == ["loss t(x[i], w):", "    s[i] = (x[i] * w)", "    return sum_i(s[i])"]


def test_notes_are_comments_before_the_header() -> None:
    text = emitter(Apply(0, sym("f"), [sym("x")])).source("t", "f(x)")
    assert text.splitlines() == ["# from LaTeX: f(x)", "# note: read f(...) as the input tensor f_x (the network's "
                                 "output)", "loss t(f_x):", "    return f_x"]


def test_a_self_referential_definition_is_an_error() -> None:
    with pytest.raises(LatexError, match="refers to itself"):
        emitter(sym("a"), defs=[(sym("a"), bin_("+", sym("b"), sym("c"))), (sym("b"), sym("a"))]).source("t", "")


def test_a_definition_subscripted_by_a_non_index_is_an_error() -> None:
    lhs = Sym(0, "q", "letter", [gather_sub("y", "i")])
    with pytest.raises(LatexError, match="subscripts must be indices"):
        emitter(red("sum", ["i"], sym("x", "i")), defs=[(lhs, num("1"))])


def test_an_intermediate_used_with_the_wrong_index_count_is_an_error() -> None:
    tree = red("sum", ["i", "j"], sym("s", "ij"))
    with pytest.raises(LatexError, match="defined with 1 indices but used with 2"):
        emitter(tree, defs=[(sym("s", "i"), sym("x", "i"))]).source("t", "")


def test_input_declarations() -> None:
    e = emitter(sym("a"))
    e.vec_axis = "d"
    assert e.input_decl("x", InputDecl(["n"])) == "x[n]"
    assert e.input_decl("x", InputDecl(["n"], vector=True)) == "x[n, d]"
    assert e.input_decl("y", InputDecl(["n"], index_of="c")) == "y[n]: index(c)"
    assert e.input_decl("s", InputDecl([])) == "s"


def test_tree_walking_visits_every_node() -> None:
    leaf1, leaf2, leaf3 = sym("a"), sym("b"), num("1")
    cases = Cases(0, [(leaf1, Cmp(0, ">", leaf2, leaf3)), (sym("c"), None)])
    kids = _children(cases)
    assert kids[0] is leaf1 and isinstance(kids[1], Cmp) and len(kids) == 3
    assert {id(n) for n in _walk([cases])} >= {id(leaf1), id(leaf2), id(leaf3)}
    r = red("sum", ["j"], sym("x", "j"), [("j", "!=", leaf2)])
    assert leaf2 in _children(r)  # a condition's bound is walked too


# ---- property: the emitted text computes what the tree means
POINTS = {"a": [-1.7, -0.3, 0.4, 1.1, 2.5], "b": [0.9, -2.2, 1.3, -0.6, 0.05]}
PARAMS = {"alpha": 0.5}


class RejectedError(Exception):
    """The reference met a value too large, or a comparison too close, to compare float64 with."""


def reference(n: Node, env: dict[str, object], track: list[object]) -> object:
    """The value of a formula tree in mpmath, read straight from the tree (not from the emitted text)."""
    v = _reference(n, env, track)
    if not isinstance(v, bool):
        track.append(abs(v))
        if abs(v) > 1e8:
            raise RejectedError
    return v


def _reference(n: Node, env: dict[str, object], track: list[object]) -> object:
    def r(m: Node) -> object:
        return reference(m, env, track)

    if isinstance(n, Num):
        return mp.mpf(n.value)
    if isinstance(n, Sym):  # x_i: the vector x at the value bound to i
        return env[n.base][env[n.subs[0][0].text]] if n.subs else env[n.base]
    if isinstance(n, Bin):
        x_, y_ = r(n.a), r(n.b)
        return {"+": lambda: x_ + y_, "-": lambda: x_ - y_, "dot": lambda: x_ * y_, "/": lambda: x_ / y_,
                "^": lambda: mp.power(x_, y_)}[n.op]()
    if isinstance(n, Unary):
        v = r(n.a)
        return {"neg": lambda: -v, "abs": lambda: abs(v), "relu": lambda: max(v, 0),
                "iverson": lambda: mp.mpf(1 if v else 0)}[n.op]()
    if isinstance(n, Cmp):
        x_, y_ = r(n.a), r(n.b)
        if abs(x_ - y_) < 1e-6:
            raise RejectedError  # float64 rounding could take the other branch
        return {"<": x_ < y_, ">": x_ > y_, "<=": x_ <= y_, ">=": x_ >= y_}[n.op]
    if isinstance(n, Cases):
        for value, cond in n.rows:
            if cond is None or r(cond):
                return r(value)
        raise AssertionError("a generated cases block ends in otherwise")
    if isinstance(n, Call):
        args = [r(m) for m in n.args]
        fns = {"exp": mp.exp, "log": mp.log, "tanh": mp.tanh, "sigmoid": lambda t: 1 / (1 + mp.exp(-t)),
               "max": lambda *t: max(t), "min": lambda *t: min(t)}
        return fns[n.fn](*args)
    if isinstance(n, Reduce):
        assert n.indices == ["i"] and not n.conds
        vals = [reference(n.body, {**env, "i": i}, track) for i in range(len(env["x"]))]
        return {"sum": mp.fsum, "prod": mp.fprod, "max": max, "min": min}[n.op](vals)
    raise AssertionError(type(n).__name__)


def trees(leaves: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    """Formula trees whose logs, roots and divisions only ever see positive values. Numbers enter only next to
    a subtree, never as a whole argument: every subtree reads an input or a parameter."""

    def extend(kids: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        positive = st.one_of(
            kids.map(lambda t: call("exp", t)),
            kids.map(lambda t: call("sigmoid", t)),
            kids.map(lambda t: bin_("-", num("1"), call("sigmoid", t))),
            kids.map(lambda t: bin_("+", num("1.5"), bin_("^", t, num("2")))),
        )
        ratio = st.tuples(positive, positive).map(lambda p: bin_("/", p[0], p[1]))
        cmp = st.tuples(st.sampled_from(["<", ">", "<=", ">="]), kids, kids).map(lambda p: Cmp(0, *p))
        return st.one_of(
            st.tuples(st.sampled_from(["+", "-", "dot"]), kids, kids).map(lambda p: bin_(*p)),
            st.tuples(st.sampled_from(["+", "dot"]), kids, st.sampled_from(["2", "0.5"])).map(
                lambda p: bin_(p[0], p[1], num(p[2]))),
            st.tuples(kids, positive).map(lambda p: bin_("/", p[0], p[1])),
            st.tuples(st.sampled_from(["neg", "abs", "relu"]), kids).map(lambda p: Unary(0, *p)),
            kids.map(lambda t: call("tanh", t)),
            positive,
            st.one_of(positive, ratio).map(lambda t: call("log", t)),
            st.tuples(kids, st.one_of(positive, ratio)).map(lambda p: bin_("dot", p[0], call("log", p[1]))),
            st.tuples(positive, st.sampled_from(["2", "0.5", "3"])).map(lambda p: bin_("^", p[0], num(p[1]))),
            st.tuples(kids, cmp, kids).map(lambda p: Cases(0, [(p[0], p[1]), (p[2], None)])),
            cmp.map(lambda c: Unary(0, "iverson", c)),
            st.tuples(st.sampled_from(["max", "min"]), st.lists(kids, min_size=2, max_size=3))
            .map(lambda p: call(p[0], *p[1])),
        )

    return st.recursive(leaves, extend, max_leaves=6)


SCALAR_LEAVES = st.one_of(st.sampled_from(["a", "b"]).map(lambda name: sym(name)),
                          st.builds(lambda: sym("alpha", style="greek")))


@settings(max_examples=60, deadline=None)
@given(trees(SCALAR_LEAVES))
def test_emitted_text_computes_the_value_of_the_formula_tree(tree: Node) -> None:
    e = emitter(tree, params=PARAMS)
    text = e.source("t", "")
    assume(e.inputs)
    expected = []
    for k in range(5):
        env = {name: mp.mpf(v[k]) for name, v in POINTS.items()} | {p: mp.mpf(v) for p, v in PARAMS.items()}
        track: list[object] = []
        with mp.workdps(40):
            try:
                value = reference(tree, env, track)
            except RejectedError:
                assume(False)
            expected.append((value, max(track, default=mp.mpf(1))))
    module = lossdsl.compile(text, reduction="none")
    got = module(**{name: torch.tensor(POINTS[name], dtype=D) for name in e.inputs}).expand(5)
    for g, (want, scale) in zip(got.tolist(), expected, strict=True):
        assert abs(g - float(want)) <= 1e-9 * (1 + float(scale)), (text, g, want)


VECTOR = [0.3, -1.2, 2.1, -0.4]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["sum", "prod", "max", "min", "logsumexp"]),
       trees(st.builds(lambda: sym("x", "i"))))
def test_emitted_reductions_compute_the_value_of_the_formula_tree(op: str, body: Node) -> None:
    tree: Node = call("log", red("sum", ["i"], call("exp", body))) if op == "logsumexp" else red(op, ["i"], body)
    env: dict[str, object] = {"x": [mp.mpf(v) for v in VECTOR]}
    track: list[object] = []
    with mp.workdps(40):
        try:
            want = reference(tree, env, track)
        except RejectedError:
            assume(False)
    e = emitter(tree)
    text = e.source("t", "")
    if op == "logsumexp":
        assert "logsumexp_i(" in text
    got = lossdsl.compile(text, reduction="none")(x=torch.tensor(VECTOR, dtype=D))
    assert abs(got.item() - float(want)) <= 1e-9 * (1 + float(max(track))), (text, got, want)
