"""lossdsl.passes: the registry of IR → IR passes between the front end and the code generator.

`register` appends a pass under a name once (a module imported or reloaded twice must not run its pass
twice) and hands the function back unchanged, so it works as a decorator; `run` applies the passes in
registration order, each to the previous one's output, leaving out the names in `skip`. The registry tests
work on a private copy of PIPELINE (monkeypatched), so the package's own pipeline is never changed; the
last tests check the package's registration (the stability pass, once) and that lossdsl.parse goes
through the pipeline.
"""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp

import lossdsl
from lossdsl import ir, passes, rewrite


def tiny_loss(name: str = "t") -> ir.LossIR:
    x = sp.Symbol("x", real=True)
    return ir.LossIR(name=name, inputs=[ir.Input("x", None)], params=[], expr=sp.log(ir.sigmoid(x)), free=(),
                     broadcast=True)


def noting(tag: str, seen: list[tuple[str, ir.LossIR]]) -> passes.Pass:
    """A pass that records what it was given and returns a new LossIR with a note of its own."""

    def run(loss: ir.LossIR) -> ir.LossIR:
        seen.append((tag, loss))
        return dataclasses.replace(loss, notes=[*loss.notes, {"pass": tag}])

    return run


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch) -> list:
    """An empty registry in place of the package's (restored after the test)."""
    fresh: list = []
    monkeypatch.setattr(passes, "PIPELINE", fresh)
    return fresh


def test_register_appends_in_order_and_returns_the_function(pipeline: list) -> None:
    seen: list = []
    first, second = noting("a", seen), noting("b", seen)
    assert passes.register("a")(first) is first
    decorated = passes.register("b")(second)
    assert decorated is second
    assert pipeline == [("a", first), ("b", second)]


def test_register_works_as_a_decorator(pipeline: list) -> None:
    @passes.register("double")
    def double(loss: ir.LossIR) -> ir.LossIR:
        return dataclasses.replace(loss, expr=2 * loss.expr)

    loss = tiny_loss()
    assert double(loss).expr == 2 * loss.expr  # still the plain function
    assert [name for name, _ in pipeline] == ["double"]


def test_a_name_registered_twice_keeps_its_first_pass_and_place(pipeline: list) -> None:
    seen: list = []
    a, b, again = noting("a", seen), noting("b", seen), noting("again", seen)
    passes.register("a")(a)
    passes.register("b")(b)
    assert passes.register("a")(again) is again  # a reloaded module re-registers: no second run, no reorder
    assert pipeline == [("a", a), ("b", b)]
    passes.run(tiny_loss())
    assert [tag for tag, _ in seen] == ["a", "b"]


def test_run_applies_each_pass_to_the_previous_output(pipeline: list) -> None:
    seen: list = []
    for tag in ("first", "second", "third"):
        passes.register(tag)(noting(tag, seen))
    start = tiny_loss()
    out = passes.run(start)
    assert [tag for tag, _ in seen] == ["first", "second", "third"]
    assert seen[0][1] is start
    assert [n["pass"] for n in seen[2][1].notes] == ["first", "second"]  # third got second's output
    assert [n["pass"] for n in out.notes] == ["first", "second", "third"]
    assert start.notes == []  # the input is not mutated by the passes above


def test_run_skips_the_named_passes_only(pipeline: list) -> None:
    seen: list = []
    for tag in ("a", "b", "c"):
        passes.register(tag)(noting(tag, seen))
    out = passes.run(tiny_loss(), skip=("b", "not-a-pass"))
    assert [tag for tag, _ in seen] == ["a", "c"]
    assert [n["pass"] for n in out.notes] == ["a", "c"]


def test_run_with_nothing_to_do_returns_the_loss_itself(pipeline: list) -> None:
    loss = tiny_loss()
    assert passes.run(loss) is loss
    passes.register("a")(noting("a", []))
    assert passes.run(loss, skip=("a",)) is loss


def test_the_package_registers_the_stability_pass_once() -> None:
    names = [name for name, _ in passes.PIPELINE]
    assert names.count(rewrite.PASS_NAME) == 1 and rewrite.PASS_NAME == "stability"
    assert dict(passes.PIPELINE)["stability"] is rewrite.stability


def test_running_the_pipeline_rewrites_and_skipping_stability_does_not() -> None:
    x = sp.Symbol("x", real=True)
    loss = tiny_loss()
    out = passes.run(loss)
    assert out.expr == ir.logsigmoid(x)  # log(sigmoid(x)) → logsigmoid(x), the log_sigmoid rule
    assert rewrite.fired(out) == ["log_sigmoid"]
    assert loss.expr == sp.log(ir.sigmoid(x)) and loss.notes == []
    kept = passes.run(loss, skip=("stability",))
    assert kept.expr == sp.log(ir.sigmoid(x)) and rewrite.fired(kept) == []


def test_parse_goes_through_the_registered_pipeline(monkeypatch: pytest.MonkeyPatch, cache_dir) -> None:
    """lossdsl.parse runs the pipeline as registered: a pass added to it sees the stability pass's output."""
    seen: list = []
    monkeypatch.setattr(passes, "PIPELINE", [*passes.PIPELINE, ("probe", noting("probe", seen))])
    loss = lossdsl.parse("loss probe_parse(x):\n    log(sigmoid(x))\n").ir
    assert [tag for tag, _ in seen] == ["probe"]
    x = sp.Symbol("x", real=True)
    assert seen[0][1].expr == loss.expr == ir.logsigmoid(x)  # log_sigmoid fired before the probe
    assert [n["pass"] for n in loss.notes if n.get("rule") is None] == ["stability", "probe"]
