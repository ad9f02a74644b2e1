"""lossdsl.quickbench, behind `lossdsl bench`: the inputs it draws, the variants it builds, and what it reports.

tests/test_cli.py runs the command (row names, a positive time, a KiB column; compiled variants under
@slow). Here, in process and without torch.compile (eager, fused and torch's built-in only, tiny sizes):
inputs against the declared kinds and the batch rule of the docstring; the ms column against a fake clock
(the median of the timed runs, in ms, warm-up excluded) and against a known sleep on the real clock; the
memory column against the size of the gradients it must hold and a known allocation made inside the call;
the rows for a missing built-in, a failing variant and auto's choice; parameters and axis sizes reaching the
module; and the errors for unknown variants and losses with nothing to differentiate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import quickbench, stdlib

OTHER = 16  # the docstring: every axis but the batch is 16
ROW = re.compile(r"^  (\S+)\s+(\S+)(?:\s+([\d.]+) KiB)?\s*(.*)$")


def rows(text: str) -> dict[str, tuple[str, float | None, str]]:
    """The table's rows: variant -> (the ms field, peak KiB or None, note)."""
    out = {}
    for line in text.splitlines()[2:]:
        m = ROW.match(line)
        assert m, line
        out[m.group(1)] = (m.group(2), float(m.group(3)) if m.group(3) else None, m.group(4).strip())
    return out


def bench(name_or_loss: str | lossdsl.api.Loss, variants: list[str], size: int = 8, repeat: int = 3,
          **kw: object) -> tuple[str, list[str]]:
    """quickbench.run, returning the table and the progress lines it reported."""
    loss = stdlib.get(name_or_loss) if isinstance(name_or_loss, str) else name_or_loss
    reported: list[str] = []
    text = quickbench.run(loss, size=size, repeat=repeat, variants=variants, report=reported.append, **kw)
    return text, reported


class FakeClock:
    """Stands in for the `time` module inside quickbench: perf_counter moves only when `advance` is called."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(quickbench, "time", fake)
    return fake


def spy_builtin(monkeypatch: pytest.MonkeyPatch, name: str,
                before: Callable[[tuple], None] = lambda args: None) -> list[tuple]:
    """Replace torch.nn.functional.<name> (the "torch" variant) by a wrapper recording its arguments."""
    real = getattr(F, name)
    calls: list[tuple] = []

    def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(args)
        before(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, name, wrapper)
    return calls


# ---- sample_inputs: kinds, and the batch rule
def expected_shape(loss: lossdsl.api.Loss, axes: tuple[str, ...] | None, size: int) -> tuple[int, ...]:
    """The docstring's rule: the first declared input's first axis is the batch, every other axis 16, a group
    one axis; an input of undeclared shape (size, 16)."""
    if axes is None:
        return (size, OTHER)
    first = next(i.axes[0] for i in loss.inputs if i.axes)
    canon = loss.ir.axis_of
    return tuple(size if canon.get(a, a) == canon.get(first, first) else OTHER for a in axes)


def check_kind(t: torch.Tensor, kind: str, classes: int) -> None:
    if kind in ("index", "int", "count"):
        assert t.dtype == torch.int64 and t.min() >= 0, (kind, t)
        assert t.max() < (classes if kind == "index" else 4), (kind, t)
        return
    assert t.dtype == torch.get_default_dtype() and torch.isfinite(t).all()
    if kind == "prob":
        assert t.min() >= 0.05 and t.max() <= 0.95
    elif kind == "positive":
        assert t.min() >= 0.2
    elif kind == "binary":
        assert set(t.unique().tolist()) <= {0.0, 1.0}
    elif kind == "sign":
        assert set(t.unique().tolist()) <= {-1.0, 1.0}


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(stdlib.names()), size=st.integers(1, 33), seed=st.integers(0, 1000))
def test_sample_inputs_follow_the_kinds_and_the_batch_rule(name: str, size: int, seed: int) -> None:
    loss = stdlib.get(name)
    inputs, sizes = quickbench.sample_inputs(loss, size, torch.Generator().manual_seed(seed))
    assert len(inputs) == len(loss.inputs)
    for t, i in zip(inputs, loss.inputs, strict=True):
        if i.kind == "fn":
            assert isinstance(t, torch.nn.Module)
            continue
        assert tuple(t.shape) == expected_shape(loss, i.axes, size), (i.name, t.shape)
        classes = expected_shape(loss, (i.kind_arg,), size)[0] if i.kind_arg else OTHER
        check_kind(t, i.kind, classes)
    assert sizes == {a: expected_shape(loss, (a,), size)[0] for a in loss.axis_keywords()}


def test_sample_inputs_batch_follows_a_bound_index() -> None:
    """info_nce(q[i, d], k[j, d]): j ranges over i's axis, so k is batch-sized too."""
    (q, k), _ = quickbench.sample_inputs(stdlib.get("info_nce"), 5, torch.Generator().manual_seed(0))
    assert q.shape == k.shape == (5, OTHER)


def test_sample_inputs_of_an_axis_only_a_parameter_fixes() -> None:
    """center_loss(f[n, d], y[n]: index(k); centers[k, d]): k and d are keywords; y indexes k's 16 rows."""
    (f, y), sizes = quickbench.sample_inputs(stdlib.get("center_loss"), 300, torch.Generator().manual_seed(0))
    assert sizes == {"d": OTHER, "k": OTHER} and f.shape == (300, OTHER) and y.shape == (300,)
    assert set(y.tolist()) == set(range(OTHER))  # 300 draws cover every class, and no more


def test_sample_inputs_are_reproducible_from_the_generator() -> None:
    loss = stdlib.get("focal_loss")
    a, _ = quickbench.sample_inputs(loss, 4, torch.Generator().manual_seed(9))
    b, _ = quickbench.sample_inputs(loss, 4, torch.Generator().manual_seed(9))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---- timed: the median of forward + backward, in milliseconds
def test_timed_is_the_median_in_milliseconds_with_a_backward_each_run(clock: FakeClock) -> None:
    durations = iter([0.004, 0.001, 0.009, 0.002, 0.0035])
    backwards = []
    x = torch.ones(3, requires_grad=True)
    x.register_hook(lambda g: backwards.append(1))

    def call() -> torch.Tensor:
        clock.advance(next(durations))
        return (x * 2).sum()

    assert quickbench.timed(call, 5) == pytest.approx(3.5)  # the median, not the mean (3.9)
    assert len(backwards) == 5 and x.grad.tolist() == [10.0, 10.0, 10.0]


# ---- variant: what each name builds
def test_variant_builds_the_named_mode_and_finds_torch_builtins() -> None:
    mse = stdlib.get("mse_loss")
    assert quickbench.variant(mse, "torch", {}, {}) is F.mse_loss
    assert quickbench.variant(stdlib.get("log_cosh_loss"), "torch", {}, {}) is None
    assert type(quickbench.variant(mse, "fused", {}, {})).__module__ == "lossdsl.fused"
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    for which in ("eager", "fused"):
        torch.testing.assert_close(quickbench.variant(mse, which, {}, {})(x, y), F.mse_loss(x, y))


def test_variant_passes_parameters_and_axis_sizes() -> None:
    x, y = torch.randn(6, 3), torch.randn(6, 3)
    huber = quickbench.variant(stdlib.get("huber_loss"), "eager", {"delta": 0.3}, {})
    torch.testing.assert_close(huber(x, y), F.huber_loss(x, y, delta=0.3))
    center = quickbench.variant(stdlib.get("center_loss"), "eager", {}, {"k": 5, "d": 3})
    assert tuple(center.centers.shape) == (5, 3)


# ---- run: the table
def test_run_reports_a_header_one_row_per_variant_and_progress() -> None:
    text, reported = bench("mse_loss", ["eager", "fused", "torch"], size=8, repeat=4)
    lines = text.splitlines()
    assert lines[0] == (f"bench mse_loss: input[8, 16], target[8, 16]; forward + backward, median of 4 runs "
                        f"(CPU threads: {torch.get_num_threads()})")
    assert lines[1].split() == ["variant", "ms", "peak", "memory", "note"]
    table = rows(text)
    assert list(table) == ["eager", "fused", "torch"] and len(lines) == 5
    for ms, kib, note in table.values():
        assert float(ms) > 0 and kib is not None and note == ""
    assert reported == ["[1/3] eager", "[2/3] fused", "[3/3] torch"]  # no "compiled in" without compiling


def test_header_shapes_are_the_sampled_inputs() -> None:
    text, _ = bench("focal_loss", ["eager"], size=3, repeat=1)
    assert text.startswith("bench focal_loss: x[3, 16, 16], y[3, 16]; ")
    text, _ = bench("wgan_gp_d_loss", ["eager"], size=2, repeat=1)  # the critic (fn) has no shape to show
    assert text.startswith("bench wgan_gp_d_loss: real[2, 16], fake[2, 16], u[2]; ")
    assert float(rows(text)["eager"][0]) > 0  # and a one-argument critic runs


@pytest.mark.parametrize("name", ["triplet_margin_with_distance_loss", "triplet_margin_with_distance_loss_swap"])
def test_a_loss_with_a_two_argument_fn_input_can_be_benched(name: str) -> None:
    text, _ = bench(name, ["eager"], size=2, repeat=1)
    assert text.startswith(f"bench {name}: a[2, 16], pos[2, 16], neg[2, 16]; ")
    assert rows(text)["eager"][0] != "failed", text


def test_the_torch_variant_takes_the_distance_by_keyword_and_computes_the_same_loss() -> None:
    """torch's triplet_margin_with_distance_loss takes its callable as distance_function=: the torch row runs,
    and the built-in it calls gives the stdlib module's value on the sampled inputs."""
    loss = stdlib.get("triplet_margin_with_distance_loss")
    text, _ = bench(loss, ["torch"], size=4, repeat=1)
    assert rows(text)["torch"][0] != "failed", text
    (a, pos, neg, distance), _ = quickbench.sample_inputs(loss, 4, torch.Generator().manual_seed(0))
    assert isinstance(distance, torch.nn.PairwiseDistance)
    builtin = quickbench.variant(loss, "torch", {}, {})
    expected = F.triplet_margin_with_distance_loss(a, pos, neg, distance_function=F.pairwise_distance)
    torch.testing.assert_close(builtin(a, pos, neg, distance), expected)
    torch.testing.assert_close(loss.compile()(a, pos, neg, distance), expected)


def test_ms_column_is_the_median_of_the_timed_runs_only(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    # calls of the torch variant: two warm-ups, then `repeat` timed runs, then one under the memory profiler
    steps = iter([5.0, 7.0, 0.004, 0.001, 0.009, 0.002, 0.0035, 3.0])
    spy_builtin(monkeypatch, "mse_loss", before=lambda args: clock.advance(next(steps, 0.0)))
    text, _ = bench("mse_loss", ["torch", "eager"], repeat=5)
    table = rows(text)
    assert table["torch"][0] == "3.500"  # median of the five timed runs in ms; not the mean (3.900)
    assert table["eager"][0] == "0.000"  # the clock moved only inside the torch variant's calls
    assert table["torch"][2] == ""  # only compiled variants note their first call


def test_ms_column_measures_wall_time_in_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    spy_builtin(monkeypatch, "mse_loss", before=lambda args: time.sleep(0.02))
    text, _ = bench("mse_loss", ["torch", "eager"], repeat=3)
    table = rows(text)
    torch_ms, eager_ms = float(table["torch"][0]), float(table["eager"][0])
    assert 20.0 <= torch_ms < 2000.0, text  # each run sleeps 20 ms
    assert torch_ms > eager_ms, text


def test_peak_memory_counts_at_least_the_gradient_and_stays_near_it() -> None:
    size = 1024
    grad_kib = size * OTHER * 4 / 1024  # one float32 gradient of an input: 64 KiB
    text, _ = bench("mse_loss", ["eager", "fused", "torch"], size=size, repeat=2)
    for which, (_, kib, _) in rows(text).items():
        assert grad_kib <= kib <= 10 * grad_kib, (which, kib)


def test_peak_memory_sees_an_allocation_made_inside_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    mib = 1 << 20

    def allocate(args: tuple) -> None:
        block = torch.ones(mib // 4)  # 1 MiB of float32, freed on return
        assert block.sum() > 0

    spy_builtin(monkeypatch, "mse_loss", before=allocate)
    table = rows(bench("mse_loss", ["torch", "eager"], size=8, repeat=2)[0])
    torch_kib, eager_kib = table["torch"][1], table["eager"][1]
    assert 1024 <= torch_kib <= 1024 + 64, torch_kib
    assert eager_kib < 64, eager_kib  # 8 x 16 inputs: a few KiB


def test_differentiable_kinds_require_grad_and_labels_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_builtin(monkeypatch, "cross_entropy")
    bench("cross_entropy", ["torch"], size=6, repeat=1)
    logits, target = calls[0]
    assert logits.requires_grad and logits.shape == (6, OTHER)
    assert not target.requires_grad and target.dtype == torch.int64 and 0 <= target.min() <= target.max() < OTHER
    calls = spy_builtin(monkeypatch, "soft_margin_loss")
    bench(lossdsl.parse("loss soft_margin_loss(x, y: sign):\n    log(1 + exp(-y*x))\n"), ["torch"], repeat=1)
    x, y = calls[0]
    assert x.requires_grad and not y.requires_grad and set(y.unique().tolist()) <= {-1.0, 1.0}
    assert all(c[0] is x and c[1] is y for c in calls)  # the same inputs for every run


def test_parameters_and_axis_sizes_reach_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[torch.nn.Module] = []
    real = quickbench.variant

    def spy(loss: lossdsl.api.Loss, which: str, params: dict, sizes: dict) -> Callable | None:
        built.append(real(loss, which, params, sizes))
        return built[-1]

    monkeypatch.setattr(quickbench, "variant", spy)
    text, _ = bench("huber_loss", ["eager"], params={"delta": 0.25}, repeat=1)
    x, y = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(built[0](x, y), F.huber_loss(x, y, delta=0.25))
    text, _ = bench("center_loss", ["eager"], repeat=1)  # builds only with k (no input fixes it)
    assert rows(text)["eager"][0] != "failed", text
    assert tuple(built[1].centers.shape) == (OTHER, OTHER)


def test_a_loss_torch_lacks_gets_an_na_row() -> None:
    text, reported = bench("log_cosh_loss", ["torch", "eager"], repeat=1)
    table = rows(text)
    assert table["torch"] == ("n/a", None, "torch.nn.functional has no log_cosh_loss")
    assert float(table["eager"][0]) > 0 and reported == ["[1/2] torch", "[2/2] eager"]


def test_a_failing_variant_is_a_row_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(args: tuple) -> None:
        raise ValueError("x" * 200 + "\nsecond line")

    spy_builtin(monkeypatch, "mse_loss", before=boom)
    table = rows(bench("mse_loss", ["torch", "eager"], repeat=1)[0])
    assert table["torch"] == ("failed", None, "ValueError: " + "x" * 80)
    assert float(table["eager"][0]) > 0


def test_a_builtin_returning_per_element_losses_fails_its_backward() -> None:
    table = rows(bench("pairwise_distance", ["torch", "eager"], repeat=1)[0])
    assert table["torch"][0] == "failed" and table["torch"][2].startswith("RuntimeError: grad can be implicitly")
    assert float(table["eager"][0]) > 0  # the lossdsl module reduces to a scalar


@pytest.mark.parametrize("choice, note", [({"float32": "symbolic"}, "backward=symbolic"), ({}, "")])
def test_an_auto_backward_choice_is_noted(monkeypatch: pytest.MonkeyPatch, choice: dict, note: str) -> None:
    """backward="auto" modules carry `backward_choice` (signature -> choice); the row names the first one."""
    def with_choice(*args: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(*args)

    with_choice.backward_choice = choice
    monkeypatch.setattr(F, "mse_loss", with_choice)
    got = rows(bench("mse_loss", ["torch"], repeat=1)[0])["torch"][2]
    assert got.endswith(note) and got.count("backward=") == bool(note), got


# ---- errors and defaults
def test_unknown_variant_is_an_error_before_any_work() -> None:
    reported: list[str] = []
    with pytest.raises(lossdsl.ParameterError) as caught:
        quickbench.run(stdlib.get("mse_loss"), variants=["eager", "fast", "slow"], report=reported.append)
    message = str(caught.value)
    assert message.startswith("unknown variant 'fast'") and "slow" not in message
    for name in ("eager", "fused", "compiled", "compiled_sym", "compiled_fwd", "compiled_auto", "torch"):
        assert name in message
    assert reported == []


def test_a_loss_with_nothing_to_differentiate_is_a_kind_error() -> None:
    loss = lossdsl.parse("loss tally(y: binary, s: sign, k: count):\n    y*s + k\n")
    reported: list[str] = []
    with pytest.raises(lossdsl.KindError, match="'tally' has no differentiable input"):
        quickbench.run(loss, size=4, repeat=1, variants=["eager"], report=reported.append)
    assert reported == []


@pytest.fixture
def no_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """quickbench._row replaced by a stub: which variants run is visible without compiling any."""
    seen: list[str] = []

    def row(loss: object, which: str, *rest: object) -> str:
        seen.append(which)
        return f"  {which}"

    monkeypatch.setattr(quickbench, "_row", row)
    yield seen


def test_default_variants_are_eager_compiled_and_torch(no_rows: list[str]) -> None:
    """docs/cli.md: `lossdsl bench NAME [--variants eager,compiled,torch]`."""
    quickbench.run(stdlib.get("mse_loss"), size=4, repeat=1, report=lambda line: None)
    assert no_rows == ["eager", "compiled", "torch"]


def test_variants_run_in_the_order_given(no_rows: list[str]) -> None:
    order = ["torch", "compiled_auto", "eager", "compiled_fwd", "fused", "compiled_sym", "compiled"]
    quickbench.run(stdlib.get("mse_loss"), size=4, repeat=1, variants=order, report=lambda line: None)
    assert no_rows == order
    assert sorted(quickbench.VARIANTS) == sorted(order)

