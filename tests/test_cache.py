"""The disk cache: keys, hits and misses, and a second process that skips the pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lossdsl
from lossdsl import api, cache

DICE = """
loss dice(p[n, c, *s]: prob, g[n, c, *s]: binary; eps = 1e-5 > 0):
    1 - (2*sum_{*s}(p*g) + eps) / (sum_{*s}(p^2) + sum_{*s}(g^2) + eps)
"""


def test_key_depends_on_every_part_and_the_generator() -> None:
    assert cache.key("a", "b") == cache.key("a", "b")
    assert cache.key("a", "b") != cache.key("ab")
    assert cache.key("a") != cache.key("b")
    assert len(cache.fingerprint()) == 64


def test_memo_builds_once(cache_dir: Path) -> None:
    calls = []
    for _ in range(3):
        assert cache.memo(("x",), lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    assert len(calls) == 1
    assert list(cache_dir.glob("ir/*/*.pkl"))


def test_disabled_cache_always_builds(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSSDSL_CACHE", "0")
    calls = []
    for _ in range(2):
        cache.memo(("x",), lambda: calls.append(1) or 1)
    assert len(calls) == 2
    assert not list(cache_dir.glob("ir/*/*.pkl"))


def test_corrupt_entry_is_a_miss(cache_dir: Path) -> None:
    cache.memo(("y",), lambda: 1)
    (path,) = cache_dir.glob("ir/*/*.pkl")
    path.write_bytes(b"not a pickle")
    assert cache.memo(("y",), lambda: 2) == 2
    assert cache.memo(("y",), lambda: 3) == 2


def test_unpicklable_value_is_returned_uncached(cache_dir: Path) -> None:
    assert cache.memo(("z",), lambda: (lambda: 0))() == 0
    assert not list(cache_dir.glob("ir/*/*.pkl"))


def test_cached_loss_equals_fresh_loss(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = lossdsl.parse(DICE)
    monkeypatch.setattr(api, "_lower_fresh", lambda d, defs: pytest.fail("pipeline ran on a cache hit"))
    hit = lossdsl.parse(DICE)
    assert hit.to_source() == fresh.to_source()
    p, g = torch.rand(2, 3, 4, 4), (torch.rand(2, 3, 4, 4) > 0.5).double()
    torch.testing.assert_close(hit.compile()(p, g), fresh.compile()(p, g))
    assert "_lazy" in vars(hit.ir), "building the module should not unpickle the SymPy expression"
    assert hit.expr == fresh.expr
    assert hit.ir == fresh.ir
    assert "_lazy" not in vars(hit.ir)


def test_a_cached_field_with_a_default_is_read_from_the_cache(cache_dir: Path) -> None:
    """reduce_weight and doc default to None on LossIR's class: the first thing read from a cache hit must
    still be the cached value, not that default (reduce_weight once read None until another field was)."""
    src = "loss wmse(x[n], w[n]):\n    \"weighted\"\n    w * x^2\n    reduce mean weighted by w\n"
    fresh = lossdsl.parse(src)
    for field in ("reduce_weight", "doc", "reduce_mode"):
        hit = lossdsl.parse(src)
        assert "_lazy" in vars(hit.ir)
        assert getattr(hit.ir, field) == getattr(fresh.ir, field) is not None


def test_formula_parameters_are_part_of_the_key(cache_dir: Path) -> None:
    """A formula's parameters (and their given values, its defaults) change what it lowers to."""
    x = torch.rand(5)
    a = lossdsl.compile("(x - m)^2", m=1.0, reduction="none")
    b = lossdsl.compile("(x - m)^2", reduction="none", inputs=["x", "m"])
    torch.testing.assert_close(a(x), (x - 1) ** 2)
    torch.testing.assert_close(b(x, torch.full((5,), 2.0)), (x - 2) ** 2)


def test_second_process_skips_the_pipeline(cache_dir: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time, torch, lossdsl
        from lossdsl import api
        if sys.argv[1] == "warm":
            api._lower_fresh = None  # a cache miss would call it and fail
        t = time.perf_counter()
        loss = lossdsl.compile({DICE!r})
        print(time.perf_counter() - t)
        print(float(loss(torch.full((1, 2, 3), 0.5), torch.ones(1, 2, 3))))
    """)
    env = {**os.environ, "LOSSDSL_CACHE_DIR": str(cache_dir)}
    runs = []
    for mode in ("cold", "warm"):
        done = subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout.split())
    assert runs[0][1] == runs[1][1]
    assert float(runs[1][0]) < 0.5
    assert list(cache_dir.glob("lark/*.lark"))


def test_a_pass_registered_at_run_time_is_part_of_the_key(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The package's files are in every key; a user's pass (passes.register) is not one of them, so a lowering
    cached before it was registered came back without it."""
    import dataclasses

    from lossdsl import passes

    text = "loss sq(x):\n    x^2\n"
    before = lossdsl.parse(text)

    def doubled(loss_ir):
        return dataclasses.replace(loss_ir, expr=2 * loss_ir.expr)

    monkeypatch.setattr(passes, "PIPELINE", [*passes.PIPELINE, ("double", doubled)])
    after = lossdsl.parse(text)
    x = torch.tensor([3.0])
    assert float(before.compile(reduction="sum")(x)) == 9.0
    assert float(after.compile(reduction="sum")(x)) == 18.0
