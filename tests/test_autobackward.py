"""backward="auto": the faster backward per signature, timed on detached inputs, with shared parameters."""

from __future__ import annotations

import time

import pytest
import torch

import lossdsl
from lossdsl import autobackward


def _square(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum()


def _slow_square(x: torch.Tensor) -> torch.Tensor:
    time.sleep(0.004)
    return (x * x).sum()


def test_pick_takes_the_faster_variant_without_touching_the_callers_graph() -> None:
    w = torch.randn(8, requires_grad=True)
    x = w * 2  # the network before the loss: timing must not backpropagate into w
    choice, medians, peaks = autobackward.pick({"slow": _slow_square, "fast": _square}, (x,), {}, [])
    assert choice == "fast" and medians["slow"] > 0.004 > medians["fast"]
    assert set(peaks) == {"slow", "fast"}
    assert w.grad is None
    _square(x).backward()  # the caller's graph is still whole
    torch.testing.assert_close(w.grad, 8 * w.detach())


def test_pick_order_does_not_decide() -> None:
    assert autobackward.pick({"fast": _square, "slow": _slow_square}, (torch.randn(8, requires_grad=True),), {},
                             [])[0] == "fast"


def _heavy_square(x: torch.Tensor) -> torch.Tensor:
    """_square's value, holding an 8 MB temporary until its backward (saved for the product)."""
    big = x.new_ones(1 << 21, requires_grad=True)
    return (x * x).sum() + (big * big).sum() * 0


def test_pick_passes_over_a_faster_variant_that_holds_far_more_memory() -> None:
    x = torch.randn(8, requires_grad=True)
    def lean(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)
        return (x * x).sum()

    choice, medians, peaks = autobackward.pick({"heavy": _heavy_square, "lean": lean}, (x,), {}, [])
    assert medians["heavy"] < 0.1 < medians["lean"], "the heavy variant is the faster one"
    assert peaks["heavy"] >= 8 << 20 > peaks["lean"]
    assert choice == "lean"


def test_pick_says_when_it_could_not_weigh_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose profiler records no allocations: the choice falls back to time, with a warning, not
    silently (the heavy variant, faster, is kept)."""
    monkeypatch.setattr(autobackward.peak_memory, "peak_bytes", lambda run, device: None)
    x = torch.randn(8, requires_grad=True)

    def lean(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return (x * x).sum()

    with pytest.warns(RuntimeWarning, match="chose by time alone"):
        choice, _, peaks = autobackward.pick({"heavy": _heavy_square, "lean": lean}, (x,), {}, [])
    assert (choice, peaks) == ("heavy", {})


@pytest.mark.parametrize(("peaks", "expected"), [
    ({"a": 100 << 20, "b": 30 << 20}, "b"),  # a: more than MEMORY_SLACK times b's peak
    ({"a": 36 << 20, "b": 30 << 20}, "a"),  # within the slack: the faster
    ({"a": 3 << 20, "b": 1 << 20}, "b"),  # 3x and 2 MB more: beyond both
    ({"a": 2 << 20, "b": 1 << 20}, "a"),  # 2x, but within MEMORY_FLOOR (1 MB) of b's
    ({"a": 1 << 19, "b": 1 << 10}, "a"),  # 512x, but a few hundred kilobytes: time decides
    ({}, "a"),  # not measured: time alone
])
def test_choose_weighs_memory_only_where_it_differs_much(peaks: dict, expected: str) -> None:
    assert autobackward.choose({"a": 1.0, "b": 1.2}, peaks) == expected


def test_without_a_gradient_nothing_is_timed() -> None:
    calls = []

    def counted(x):
        calls.append(x)
        return x.sum()

    x = torch.randn(4)
    assert autobackward.pick({"autograd": counted, "symbolic": counted}, (x,), {}, []) == ("autograd", {}, {})
    with torch.no_grad():
        assert autobackward.pick({"autograd": counted, "symbolic": counted}, (x.requires_grad_(),), {},
                                 [])[0] == "autograd"
    assert not calls


def test_the_twins_share_parameters_and_buffers() -> None:
    """An optimizer over module.parameters() and load_state_dict must reach the other variants too."""
    fast = lossdsl.stdlib.uncertainty_weighting(t=3, mode="compiled", backward="auto")
    assert fast.compile_options["backward"] == "auto" and set(fast._lossdsl_twins) == {"symbolic", "in_forward"}
    for how, twin in fast._lossdsl_twins.items():
        assert twin.compile_options["backward"] == how
        assert twin.log_var is fast.log_var and type(twin) is not type(fast)
    state = {"log_var": torch.tensor([0.5, -1.0, 2.0])}
    fast.load_state_dict(state)
    for twin in fast._lossdsl_twins.values():
        torch.testing.assert_close(twin.log_var.detach(), state["log_var"])


def test_an_unreduced_loss_has_no_in_forward_twin() -> None:
    """reduction="none": no scalar to seed the gradient in the forward with (grad_in_forward.applies)."""
    fast = lossdsl.stdlib.mse_loss(mode="compiled", backward="auto", reduction="none")
    assert set(fast._lossdsl_twins) == {"symbolic"}


def test_a_loss_without_a_symbolic_gradient_compiles_autograd_only() -> None:
    loss = lossdsl.parse("loss f(g: fn, x[n]):\n    g(x)^2")
    fast = loss.compile(mode="compiled", backward="auto")
    assert fast.compile_options["backward"] == "autograd" and not hasattr(fast, "_lossdsl_twins")


def test_identity_changes_with_what_decides_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    focal = lossdsl.stdlib.get("focal_loss")
    options = {"dynamic": None, "recompute": "masks", "specialize": True}
    same = autobackward.identity(focal, focal.compile(), options)
    assert same == autobackward.identity(focal, focal.compile(), dict(options))
    others = [autobackward.identity(focal, focal.compile(gamma=3.0), options),
              autobackward.identity(focal, focal.compile(reduction="sum"), options),
              autobackward.identity(focal, focal.compile(), {**options, "recompute": "all"}),
              autobackward.identity(lossdsl.stdlib.get("cross_entropy"), lossdsl.stdlib.cross_entropy(), options)]
    monkeypatch.setattr(autobackward, "CHOICES", ("autograd", "symbolic"))  # as stored before in_forward was one
    others.append(autobackward.identity(focal, focal.compile(), options))
    assert len({same, *others}) == 6


def test_a_stored_choice_is_read_back_and_a_damaged_one_is_a_miss(cache_dir, monkeypatch) -> None:
    sig = (((4, 3), torch.float32, "cpu"),)
    assert autobackward._stored("abc", sig) is None
    found = autobackward.Pick("symbolic", {"autograd": 2.0, "symbolic": 1.0}, {"autograd": 64, "symbolic": 32})
    autobackward._store("abc", sig, found)
    assert autobackward._stored("abc", sig) == found._asdict()
    assert autobackward._stored("abd", sig) is None and autobackward._stored("abc", (sig[0], sig[0])) is None
    with monkeypatch.context() as other_machine:
        other_machine.setattr(torch, "get_num_threads", lambda: 97)  # another machine's threads: another entry
        assert autobackward._stored("abc", sig) is None
    [entry] = cache_dir.glob("auto/*/*.pkl")
    entry.write_bytes(b"not a pickle")
    assert autobackward._stored("abc", sig) is None
    autobackward._store("abc", sig, found)
    monkeypatch.setenv("LOSSDSL_CACHE", "0")
    assert autobackward._stored("abc", sig) is None


@pytest.mark.slow
def test_auto_matches_eager_and_picks_once_per_signature(monkeypatch: pytest.MonkeyPatch, cache_dir) -> None:
    picks = []
    real_pick = autobackward.pick
    monkeypatch.setattr(autobackward, "pick", lambda *a: picks.append(1) or real_pick(*a))
    fast = lossdsl.stdlib.focal_loss(mode="compiled", backward="auto")
    eager = lossdsl.stdlib.focal_loss()
    x = torch.randn(64, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (64,))
    with torch.no_grad():  # an evaluation pass first: nothing to time, nothing decided
        torch.testing.assert_close(fast(x, y), eager(x, y))
    assert fast.backward_choice == {} and len(picks) == 1
    for _ in range(2):
        out, ref = fast(x, y), eager(x, y)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    assert len(picks) == 2 and set(fast.backward_choice.values()) <= set(autobackward.CHOICES)
    [seconds] = fast.backward_seconds.values()
    assert set(seconds) == set(autobackward.CHOICES) and all(s > 0 for s in seconds.values())
    assert fast.compile_seconds > 0
    assert not fast.backward_cached

    again = lossdsl.stdlib.focal_loss(mode="compiled", backward="auto")  # as a second process would
    out, ref = again(x, y), eager(x, y)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    assert len(picks) == 2, "the stored choice is used, nothing is timed"
    assert again.backward_choice == fast.backward_choice and again.backward_cached == set(fast.backward_choice)
    assert len(again.compile_log) == 1 < len(fast.compile_log), "only the chosen variant is compiled"
    other = lossdsl.stdlib.focal_loss(gamma=3.0, mode="compiled", backward="auto")
    other(x, y)
    assert len(picks) == 3
