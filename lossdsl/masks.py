"""Masks lowered without building them: a one-hot `[c == y]` becomes a scatter, an off-diagonal `[i != j]`
a diagonal set. Mixed into the Emitter: a gradient reaching x[n, y[n]] is `v[n] * [c == y[n]]`, dense only
at one c, and contrastive losses exclude the positive from the negatives with `[j != i]`."""

from __future__ import annotations

import sympy as sp

from . import ir
from .scope import ELLIPSIS, free_indices
from .values import V, _literal


def one_hot(f: sp.Basic) -> tuple[sp.Symbol, sp.Indexed] | None:
    """(i, g) when f is the indicator [i == g] of an index equal to a gathered value."""
    cond = _indicator(f)
    if not isinstance(cond, sp.Eq):
        return None
    for i, g in ((cond.lhs, cond.rhs), (cond.rhs, cond.lhs)):
        if ir.is_index(i) and i != ELLIPSIS and isinstance(g, sp.Indexed) and i not in free_indices(g):
            return i, g
    return None


# op_{m <= k}(body) as a cumulative op along m, read at k (a prefix), or along the flipped axis (k <= m, a suffix)
SCAN = {"sum": "torch.cumsum({t}, dim={d})", "prod": "torch.cumprod({t}, dim={d})",
        "max": "torch.cummax({t}, dim={d}).values", "min": "torch.cummin({t}, dim={d}).values",
        "logsumexp": "torch.logcumsumexp({t}, dim={d})"}
ALL_SCAN = "_prefix_all({t}, {d})"  # the prod of a 0/1 bracket: a cumprod, fusible under torch.compile


def triangle(cond: sp.Basic, m: sp.Symbol) -> tuple[sp.Symbol, bool] | None:
    """(k, suffix) when cond is m <= k (a prefix up to k) or k <= m (a suffix from k), k another index."""
    if not isinstance(cond, (sp.LessThan, sp.GreaterThan)):
        return None
    lo, hi = (cond.lhs, cond.rhs) if isinstance(cond, sp.LessThan) else (cond.rhs, cond.lhs)
    for mine, other, suffix in ((lo, hi, False), (hi, lo, True)):
        if mine == m and ir.is_index(other) and other not in (m, ELLIPSIS):
            return other, suffix
    return None


class MaskLowering:
    """The Emitter's mask methods (they call its emit, tmp, combine, where, align and sizes)."""

    # ---- one-hot products: a gradient reaching x[n, y[n]] is `v[n] * [c == y[n]]`, dense only at one c
    def split_one_hot(self, term: sp.Basic) -> tuple[sp.Symbol, sp.Indexed, sp.Expr] | None:
        """(i, g, rest) when term = rest * [i == g], g a read of an index input and rest free of i, all of
        declared shape (decided before anything is emitted, so a miss leaves no dead temporaries)."""
        factors = sp.Mul.make_args(term)
        hits = [(f, h) for f in factors if (h := one_hot(f)) and h[1].base.name in self.gather_names]
        if len(hits) != 1:
            return None
        (f, (i, g)), = hits
        rest = sp.Mul(*(x for x in factors if x is not f))
        names = {x.name for x in (rest.free_symbols | g.free_symbols) if not ir.is_index(x)}
        if i in free_indices(rest) or not free_indices(g) or any(
                n in self.names and self.names[n].ell for n in names):
            return None
        return i, g, rest

    def picked(self, g: sp.Indexed, rest: sp.Expr) -> tuple[V, V]:
        """The gathering index and the value placed at it: rest, or 0 where g is out of range (an
        ignore_index: the gathering copy is then a clamped one), whose one-hot row is all zero."""
        raw, idx, val = self.emit(g), self.gather_index(g), self.emit(rest)
        key = sp.Tuple(sp.Symbol("@picked"), g, rest)  # memoised: a gradient places rest twice (CE)
        if idx.code != raw.code and key not in self.memo:
            if val.is_tensor and set(raw.labels) <= set(val.labels):  # the copy is the index when none is out
                self.memo[key] = self.combine([raw, idx, val], lambda c: (
                    f"{c[2]} if {idx.code} is {raw.code} else torch.where({c[0]} == {c[1]}, {c[2]}, 0.0)"))
            else:
                ok = self.combine([raw, idx], lambda c: f"{c[0]} == {c[1]}")
                self.memo[key] = self.where(ok, val, V("0.0", kind="num"))
        return idx, self.memo.get(key, val)

    def laid(self, v: V, labels: tuple[str, ...], dim: int) -> str:
        """v over `labels` at full size, with a size-1 dim inserted at `dim` (scatter's index and source)."""
        code = self.align(v, labels)
        if v.labels != labels:
            code = f"{code}.expand({self.sizes(labels)})"
        return f"{code}.unsqueeze({dim})"

    def try_scatter(self, e: sp.Mul) -> V | None:
        """rest * [i == g] → zeros with rest scattered along i: one write of the result instead of an
        arange, a compare, a cast and a multiply over the dense [.., i] shape."""
        split = self.split_one_hot(e)
        if not split:
            return None
        i, (idx, val) = str(split[0]), self.picked(split[1], split[2])
        out = tuple(sorted({*idx.labels, *val.labels, i}, key=self.rank))
        others, dim = tuple(x for x in out if x != i), out.index(i)
        src = self.laid(val, others, dim) if val.is_tensor else val.code
        return self.tmp(f"torch.zeros({self.sizes(out)}, dtype=_dt, device=_dev)"
                        f".scatter_({dim}, {self.laid(idx, others, dim)}, {src})", out)

    def try_scatter_add(self, e: sp.Add) -> V | None:
        """dense + rest * [i == g] → the dense terms with rest added at i (softmax - one-hot of cross entropy)."""
        splits = [(t, s) for t in e.args if (s := self.split_one_hot(t))]
        if len(splits) != 1:
            return None
        term, (i, g, rest) = splits[0]
        dense = e - term
        axes = set(free_indices(dense))
        if i not in axes or ELLIPSIS in axes or not set(free_indices(term)) <= axes:
            return None
        acc = self.emit(dense)
        idx, val = self.picked(g, rest)
        dim = acc.labels.index(str(i))
        others = tuple(x for x in acc.labels if x != str(i))
        val = self.expand_to(val, others) if not val.is_tensor else val
        return self.tmp(f"{acc.code}.scatter_add({dim}, {self.laid(idx, others, dim)}, "
                        f"{self.laid(val, others, dim)})", acc.labels)

    def try_pick(self, body: sp.Basic, idx: list[str]) -> V | None:
        """sum_i(rest * [i == g]) = rest where g is in range: no dense one-hot to build and sum."""
        split = self.split_one_hot(body) if len(idx) == 1 else None
        if not split or str(split[0]) != idx[0]:
            return None
        idx_v, val = self.picked(split[1], split[2])
        return self.expand_to(val, tuple(sorted({*idx_v.labels, *val.labels}, key=self.rank)))

    def try_scatter_sum(self, body: sp.Basic, idx: list[str]) -> V | None:
        """sum_k(rest * [i == g]) with k an axis of g and i kept → rest scattered-added into zeros along i,
        reading [.., k] once, not a dense [.., i, k] one-hot contracted by einsum (multilabel margin's
        gradient: the classes each listed target pushes)."""
        split = self.split_one_hot(body) if len(idx) == 1 else None
        if not split or str(split[0]) in idx or idx[0] not in {str(x) for x in free_indices(split[1])}:
            return None
        i, k = str(split[0]), idx[0]
        index, val = self.picked(split[1], split[2])
        if not val.is_tensor or val.ell or index.ell:
            return None
        out = tuple(sorted({*index.labels, *val.labels, i} - {k}, key=self.rank))
        layout = tuple(k if lab == i else lab for lab in out)
        laid = [f"{self.align(v, layout)}.expand({self.sizes(layout)})" if v.labels != layout else v.code
                for v in (index, val)]
        return self.tmp(f"_scatter_sum(({self.sizes(out)},), {out.index(i)}, {laid[0]}, {laid[1]})", out)

    # ---- triangles: op_{m <= k}(f[m]) is an [.., k, m] masked reduction as written; a scan reads f once
    def try_scan(self, e: ir._Reduction) -> V | None:
        """A prefix (or suffix) reduction over one index as torch's cumulative op along it (valid targets
        of multilabel margin, `prod_{m <= k}([t[m] != -1])`), never the [.., k, m] masked copy. A sum may
        carry the triangle as a factor instead, `sum_m([k <= m] * f[m])`: the symbolic gradient of a prefix
        sum is that suffix sum."""
        if len(e.indices) != 1 or e.op not in SCAN:
            return None
        m, cond, body = e.indices[0], e.cond, e.body
        if cond == sp.true and e.op == "sum":
            factors = sp.Mul.make_args(body)
            masks = [f for f in factors if (c := _indicator(f)) is not None and triangle(c, m)]
            if len(masks) != 1:
                return None
            cond, body = _indicator(masks[0]), sp.Mul(*(f for f in factors if f is not masks[0]))
        hit = triangle(cond, m)
        if hit is None or hit[0] in free_indices(body):
            return None
        m, (k, suffix) = str(m), (str(hit[0]), hit[1])
        if self.size_var(m) != self.size_var(k):
            return None
        v = self.emit(body)
        if not v.is_tensor or v.ell or m not in v.labels:
            return None
        d = self.dims(v, [m])
        t = f"{v.code}.to(_dt)" + (f".flip({d})" if suffix else "")
        scan = ALL_SCAN if e.op == "prod" and _indicator(body) is not None else SCAN[e.op]
        code = scan.format(t=t, d=d) + (f".flip({d})" if suffix else "")
        return self.tmp(code, tuple(k if lab == m else lab for lab in v.labels))

    # ---- ranks: sum_m([v[m] < v[n]] + [m < n and v[m] == v[n]]) counts, for each n, the elements a stable
    # sort puts before it; as written it is an [n, n] comparison (OHEM over 4096 samples: 390 ms, 218 MB)
    def try_rank(self, body: sp.Basic, indices: tuple[sp.Symbol, ...]) -> V | None:
        """The stable rank by a sort (`_stable_rank`) when body is that pair of indicators over one axis."""
        terms = sp.Add.make_args(body)
        if len(indices) != 1 or len(terms) != 2 or not all(_indicator(t) is not None for t in terms):
            return None
        m = indices[0]
        conds = sorted((_indicator(t) for t in terms), key=lambda c: isinstance(c, sp.And))
        strict = _strict(conds[0])
        if strict is None or not isinstance(conds[1], sp.And) or len(conds[1].args) != 2:
            return None
        for a, b, descending in ((*strict, False), (*reversed(strict), True)):
            n = _renamed_index(a, b, m)
            if n is not None and _ties_by_position(conds[1], a, b, m, n) and free_indices(b) == [n]:
                v = self.emit(b)
                return self.tmp(f"_stable_rank({v.code}, descending={descending})", v.labels) if not v.ell else None
        return None

    # ---- masks of the diagonal: [i != j] over one axis is a dense compare and select; setting the diagonal
    # of a copy costs one copy and N writes (contrastive losses: the positive excluded from the negatives)
    def off_diagonal(self, cond: sp.Basic) -> tuple[str, str] | None:
        """(i, j) when cond is i != j for two index symbols (i == j is the main diagonal, square or not)."""
        if not (isinstance(cond, sp.Ne) and all(ir.is_index(x) and x != ELLIPSIS for x in cond.args)):
            return None
        i, j = (str(x) for x in cond.args)
        return (i, j) if i != j else None

    def diagonal_set(self, v: V, i: str, j: str, fill: str) -> V:
        """v over (.., i, .., j, ..) with its i == j entries set to the number `fill` (a new tensor)."""
        v = self.expand_to(v if v.is_tensor else self.expand_to(v, ()), tuple(sorted({*v.labels, i, j},
                                                                                        key=self.rank)))
        d1, d2 = self.dims(v, [i]), self.dims(v, [j])
        code = f"_diagonal_set({v.code}, {fill}, {d1}, {d2})"
        if code not in self.calls:  # a gradient masks one matrix in several terms
            self.calls[code] = self.tmp(code, v.labels, v.ell)
        return self.calls[code]

    def try_diagonal_piecewise(self, pieces: list) -> V | None:
        """where(i != j, a, number) and where(i == j, number, b) → a (or b) with its diagonal set."""
        if len(pieces) != 2 or pieces[1].cond != sp.true:
            return None
        (a, cond), (b, _) = pieces
        if isinstance(cond, sp.Eq):
            cond, a, b = sp.Ne(*cond.args, evaluate=False), b, a
        pair = self.off_diagonal(cond)
        if not pair or not b.is_number or (a == 1 and b == 0):  # the bare [i != j]: a product's factor
            return None
        return self.diagonal_set(self.emit(a), *pair, _literal(b))

    def off_diagonal_factor(self, e: sp.Basic) -> sp.Piecewise | None:
        """The one factor [i != j] of a product, if it has exactly one."""
        hits = [f for f in sp.Mul.make_args(e) if isinstance(f, sp.Piecewise) and len(f.args) == 2
                and f.args[0].expr == 1 and f.args[1].expr == 0 and self.off_diagonal(f.args[0].cond)]
        return hits[0] if len(hits) == 1 else None

    def try_off_diagonal_product(self, e: sp.Mul) -> V | None:
        """rest * [i != j] → rest with its diagonal set to 0 (as a bracket, 0 even where rest is not finite)."""
        mask = self.off_diagonal_factor(e)
        if mask is None:
            return None
        rest = sp.Mul(*(f for f in e.args if f is not mask))
        return self.diagonal_set(self.emit(rest), *self.off_diagonal(mask.args[0].cond), "0.0")


def _indicator(t: sp.Basic) -> sp.Basic | None:
    """cond when t is [cond], the Piecewise((1, cond), (0, True))."""
    if (isinstance(t, sp.Piecewise) and len(t.args) == 2 and t.args[0].expr == 1 and t.args[1].expr == 0
            and t.args[1].cond == sp.true):
        return t.args[0].cond
    return None


def _strict(cond: sp.Basic) -> tuple[sp.Expr, sp.Expr] | None:
    """(lo, hi) when cond says lo < hi."""
    if isinstance(cond, sp.StrictLessThan):
        return cond.lhs, cond.rhs
    if isinstance(cond, sp.StrictGreaterThan):
        return cond.rhs, cond.lhs
    return None


def _renamed_index(at_m: sp.Expr, at_n: sp.Expr, m: sp.Symbol) -> sp.Symbol | None:
    """n when at_m reads index m where at_n reads index n and nothing else differs."""
    free_m, free_n = set(free_indices(at_m)), set(free_indices(at_n))
    if m not in free_m or m in free_n or len(free_n - free_m) != 1:
        return None
    (n,) = free_n - free_m
    return n if ir.is_index(n) and n != ELLIPSIS and at_m.xreplace({m: n}) == at_n else None


def _ties_by_position(cond: sp.And, at_m: sp.Expr, at_n: sp.Expr, m: sp.Symbol, n: sp.Symbol) -> bool:
    """cond is `m < n and v[m] == v[n]`: among equal values, the earlier position comes first."""
    order = next((_strict(c) for c in cond.args if _strict(c) is not None), None)
    tie = next((c for c in cond.args if isinstance(c, sp.Eq)), None)
    return order == (m, n) and tie is not None and {tie.lhs, tie.rhs} == {at_m, at_n}
