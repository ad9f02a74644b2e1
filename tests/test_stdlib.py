"""lossdsl.stdlib, the loader: names(), get(), build(), the attribute factories, the catalog's bookkeeping and the
Python wrappers (RandomInterpolation, LayerSum, perceptual_loss, style_loss).

The losses' values are tested in tests/stdlib/; here the loader is checked against what a reader of the
`stdlib/*.loss` files finds by scanning them with regular expressions (names, files, docstrings, input
declarations), against torch's functions for parameter pass-through, and with stand-in modules for the
wrappers, so that a wrong lookup, a dropped parameter or a mis-wired wrapper fails here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import stdlib

STDLIB = Path(stdlib.__file__).resolve().parents[1] / "stdlib"
DECL = re.compile(r"^loss\s+(\w+)\s*\(", re.M)
# a definition: its name, the header between the parentheses (may span lines), then an optional docstring
HEADER = re.compile(r"^loss\s+(\w+)\s*\((.*?)\)\s*:[ \t]*(?:#[^\n]*)?\n"
                    r"(?:[ \t]*(?:\"\"\"(.*?)\"\"\"|\"([^\"\n]*)\"|'([^'\n]*)'))?", re.M | re.S)


def scanned() -> dict[str, tuple[str, str, str | None]]:
    """Loss name -> (file name, header text, docstring), read from the .loss files with regular expressions."""
    out: dict[str, tuple[str, str, str | None]] = {}
    for path in sorted(STDLIB.glob("*.loss")):
        for m in HEADER.finditer(path.read_text(encoding="utf-8")):
            doc = next((g for g in m.group(3, 4, 5) if g is not None), None)
            out.setdefault(m.group(1), (path.name, m.group(2), doc))
    return out


def squash(text: str | None) -> str:
    return " ".join((text or "").split())


def pair(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 3, dtype=torch.float64)


# ---- names() and get()
def test_names_are_exactly_the_declarations_in_the_loss_files() -> None:
    declared = [name for path in STDLIB.glob("*.loss") for name in DECL.findall(path.read_text(encoding="utf-8"))]
    assert declared, "the regex found no declaration"
    assert stdlib.names() == sorted(set(declared))
    assert len(stdlib.names()) == len(set(stdlib.names()))


def test_the_header_scan_and_the_declaration_scan_agree() -> None:
    """Guards the helper the docstring tests rely on: every declaration is found with its header."""
    assert set(scanned()) == set(stdlib.names())


@pytest.mark.parametrize("name", ["mse_loss", "focal_loss", "info_nce", "wgan_gp_d_loss", "ctc_loss"])
def test_get_returns_the_named_checked_loss_once(name: str) -> None:
    loss = stdlib.get(name)
    assert isinstance(loss, lossdsl.api.Loss) and loss.name == name
    assert stdlib.get(name) is loss  # parsed and lowered once
    declared = scanned()[name][1].split(";")[0]
    assert [i.name for i in loss.inputs] == [part.split("[")[0].split(":")[0].strip()
                                             for part in re.split(r",(?![^\[]*\])", declared)]


@pytest.mark.parametrize("typo, meant", [("huber_los", "huber_loss"), ("info_ncee", "info_nce"),
                                         ("tverski_loss", "tversky_loss")])
def test_unknown_name_suggests_the_closest(typo: str, meant: str) -> None:
    with pytest.raises(lossdsl.UnknownNameError, match=rf"no loss '{typo}'; did you mean '{meant}'\?"):
        stdlib.get(typo)


def test_unknown_name_far_from_every_loss_has_no_suggestion() -> None:
    with pytest.raises(lossdsl.UnknownNameError) as caught:
        stdlib.get("qqqqzzzz")
    assert "did you mean" not in str(caught.value) and "qqqqzzzz" in str(caught.value)


# ---- build(): parameters, reduction, mode and axis sizes go through to Loss.compile
@settings(max_examples=12, deadline=None)
@given(delta=st.floats(0.05, 4.0), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_build_passes_parameters_and_reduction_through(delta: float, reduction: str) -> None:
    x, y = pair()
    module = stdlib.build("huber_loss", delta=delta, reduction=reduction)
    torch.testing.assert_close(module(x, y), F.huber_loss(x, y, delta=delta, reduction=reduction))
    assert module.loss is stdlib.get("huber_loss")


def test_build_with_default_parameters_uses_the_declared_defaults() -> None:
    x, y = pair()
    torch.testing.assert_close(stdlib.build("smooth_l1_loss")(x, y), F.smooth_l1_loss(x, y, beta=1.0))
    torch.testing.assert_close(stdlib.build("smooth_l1_loss", beta=0.3)(x, y), F.smooth_l1_loss(x, y, beta=0.3))


def test_build_passes_the_mode_and_axis_sizes() -> None:
    fused = stdlib.build("mse_loss", mode="fused")
    assert type(fused).__module__ == "lossdsl.fused"
    x, y = pair()
    torch.testing.assert_close(fused(x, y), F.mse_loss(x, y))
    center = stdlib.build("center_loss", k=3, d=4)
    assert dict((n, tuple(p.shape)) for n, p in center.named_parameters()) == {"centers": (3, 4)}


def test_build_rejects_parameters_the_loss_does_not_declare() -> None:
    with pytest.raises(lossdsl.UnknownNameError, match="delta"):
        stdlib.build("mse_loss", delta=1.0)
    with pytest.raises(lossdsl.ParameterError, match="delta"):
        stdlib.build("huber_loss", delta=0.0)  # declared `delta = 1.0 > 0`


def test_only_sampled_losses_are_wrapped_in_random_interpolation() -> None:
    assert isinstance(stdlib.build("wgan_gp_d_loss"), stdlib.RandomInterpolation)
    plain = stdlib.build("wgan_d_loss")
    assert not isinstance(plain, stdlib.RandomInterpolation) and plain.loss is stdlib.get("wgan_d_loss")
    wrapped = stdlib.build("wgan_gp_d_loss", lambda_=2.5)
    assert wrapped.loss is stdlib.get("wgan_gp_d_loss") and wrapped.inner.loss is wrapped.loss


# ---- module attributes: factories with the .loss file's docstring
def test_every_attribute_factory_carries_its_name_and_the_file_docstring() -> None:
    found = scanned()
    for name in stdlib.names():
        factory = getattr(stdlib, name)
        assert factory.__name__ == name and factory.__qualname__ == name
        assert squash(factory.__doc__) == squash(found[name][2]), name


def test_attribute_factory_builds_with_keywords() -> None:
    x, y = pair()
    module = stdlib.huber_loss(delta=0.7, reduction="sum")
    torch.testing.assert_close(module(x, y), F.huber_loss(x, y, delta=0.7, reduction="sum"))


def test_dunder_and_unknown_attributes_raise_attribute_error() -> None:
    assert not hasattr(stdlib, "__wrapped__")  # tools probing dunders must not get a factory or a parse error
    with pytest.raises(AttributeError, match="did you mean 'style_loss'"):
        stdlib.style_los  # noqa: B018 - the attribute access is the test


def test_dir_lists_every_loss_and_the_public_api() -> None:
    listing = dir(stdlib)
    assert set(stdlib.names()) <= set(listing)
    assert set(stdlib.__all__) <= set(listing)
    assert listing == sorted(listing)


# ---- the catalog's bookkeeping (the text itself is tested in tests/stdlib/test_catalog.py)
def test_catalog_entries_match_the_files_headers_and_docstrings() -> None:
    found = scanned()
    entries = [e for e in stdlib.catalog() if e.name not in stdlib.COMPOSITES]
    assert sorted(e.name for e in entries) == stdlib.names()
    for e in entries:
        file, header, doc = found[e.name]
        assert e.file == file and e.task == stdlib.TASKS[Path(file).stem]
        assert ", ".join(e.inputs) == squash(header.split(";")[0]), e.name
        assert e.description and squash(doc).startswith(e.description), e.name


def test_catalog_is_ordered_by_task_then_name() -> None:
    order = list(stdlib.TASKS.values())
    keys = [(order.index(e.task), e.name) for e in stdlib.catalog()]
    assert keys == sorted(keys)
    assert len(keys) == len(stdlib.names()) + len(stdlib.COMPOSITES)


@pytest.mark.parametrize("doc, first", [
    ("One sentence. Another one.", "One sentence"),
    ("Focal loss (Lin et al., 2017). It down-weights.", "Focal loss (Lin et al., 2017)"),
    ("Smith et al. show it. More.", "Smith et al. show it"),
    ("Uses 0.5 (see a. b) here. Then.", "Uses 0.5 (see a. b) here"),
    ("No full stop", "No full stop"),
])
def test_summary_is_the_first_sentence(doc: str, first: str) -> None:
    assert stdlib._summary(doc) == first


# ---- the Python wrappers
class Recorder(torch.nn.Module):
    """Stands in for a compiled loss: records its arguments, returns a known function of them."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn, self.calls, self.loss = fn, [], "stand-in"

    def forward(self, *args: object) -> torch.Tensor:
        self.calls.append(args)
        return self.fn(*args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_interpolation_draws_u_per_sample_in_the_inputs_dtype(dtype: torch.dtype) -> None:
    inner = Recorder(lambda critic, real, fake, u: u.sum())
    wrapper = stdlib.RandomInterpolation(inner)
    real = torch.randn(7, 2, 3, dtype=dtype)
    torch.manual_seed(3)
    wrapper(torch.nn.Identity(), real, real.clone())
    torch.manual_seed(3)
    expected = torch.rand(7, dtype=dtype)
    (_, got_real, _, u), = inner.calls
    assert got_real is real and u.shape == (7,) and u.dtype == dtype
    torch.testing.assert_close(u, expected, rtol=0, atol=0)
    assert wrapper.loss == "stand-in"


def test_random_interpolation_passes_a_given_u_unchanged() -> None:
    inner = Recorder(lambda critic, real, fake, u: (u * real.sum() + fake.sum()))
    critic, real, fake, u = torch.nn.Identity(), torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0.1, 0.5, 0.9])
    stdlib.RandomInterpolation(inner)(critic, real, fake, u)
    assert all(a is b for a, b in zip(inner.calls[0], (critic, real, fake, u), strict=True))


def test_random_interpolation_of_integer_inputs_draws_floats() -> None:
    inner = Recorder(lambda critic, real, fake, u: u.sum())
    stdlib.RandomInterpolation(inner)(torch.nn.Identity(), torch.arange(4), torch.arange(4))
    assert inner.calls[0][3].dtype == torch.get_default_dtype() and inner.calls[0][3].shape == (4,)


def sq_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum()


def features(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"a": x, "b": 2 * x, "c": x.flip(0)}


@pytest.mark.parametrize("weights", [None, {"b": 0.5}, {"a": 2.0, "c": -1.0}])
def test_layer_sum_weights_each_named_layer(weights: dict | None) -> None:
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    out = stdlib.LayerSum(Recorder(sq_distance), weights)(features, x, y)
    fx, fy = features(x), features(y)
    expected = sum(w * sq_distance(fx[k], fy[k]) for k, w in (weights or dict.fromkeys(fx, 1.0)).items())
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("wrap", [list, tuple])
def test_layer_sum_numbers_the_layers_of_a_sequence(wrap: type) -> None:
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    term = Recorder(sq_distance)
    out = stdlib.LayerSum(term, {1: 3.0})(lambda t: wrap([t, t**2]), x, y)
    torch.testing.assert_close(out, 3.0 * sq_distance(x**2, y**2))
    assert len(term.calls) == 1


def test_layer_sum_takes_a_single_tensor_as_layer_zero_not_as_samples() -> None:
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    term = Recorder(sq_distance)
    out = stdlib.LayerSum(term, None)(lambda t: t, x, y)
    torch.testing.assert_close(out, sq_distance(x, y))
    assert len(term.calls) == 1 and term.calls[0][0].shape == (5, 3)


def test_layer_sum_with_a_layer_the_extractor_lacks_fails_loudly() -> None:
    with pytest.raises(KeyError):
        stdlib.LayerSum(Recorder(sq_distance), {"missing": 1.0})(features, torch.randn(2, 3), torch.randn(2, 3))


@pytest.mark.parametrize("factory, term", [(stdlib.perceptual_loss, "feature_distance"),
                                           (stdlib.style_loss, "gram_distance")])
def test_composites_wrap_their_stdlib_term(factory: Callable, term: str) -> None:
    weights = {"relu1": 0.5}
    module = factory(weights=weights)
    assert isinstance(module, stdlib.LayerSum) and module.weights == weights
    assert module.loss is stdlib.get(term) and module.term.loss is stdlib.get(term)
    assert stdlib.COMPOSITES[factory.__name__] == (factory, term)
    with pytest.raises(lossdsl.UnknownNameError, match=term):
        factory(gamma=1.0)


def test_perceptual_loss_passes_parameters_to_its_term() -> None:
    x, y = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    mse = stdlib.perceptual_loss(reduction="sum")(lambda t: {"id": t}, x, y)
    l1 = stdlib.perceptual_loss(l1=True, reduction="sum")(lambda t: {"id": t}, x, y)
    # feature_distance is per sample: the mean over each sample's features, summed over the batch
    torch.testing.assert_close(mse, ((x - y) ** 2).mean(dim=(1, 2)).sum())
    torch.testing.assert_close(l1, (x - y).abs().mean(dim=(1, 2)).sum())


# ---- _decls: the first file wins, in sorted order
@pytest.fixture
def fake_stdlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> Iterator[Path]:
    """stdlib.STDLIB_DIR pointed at a directory of our own, with the loader's caches cleared around it."""
    root = tmp_path / "lib"
    root.mkdir()
    stdlib._decls.cache_clear()
    stdlib.get.cache_clear()
    monkeypatch.setattr(stdlib, "STDLIB_DIR", root)
    yield root
    monkeypatch.undo()
    stdlib._decls.cache_clear()
    stdlib.get.cache_clear()


def test_the_first_file_in_sorted_order_wins_a_duplicate_name(fake_stdlib: Path) -> None:
    (fake_stdlib / "b_second.loss").write_text("loss dup(x, y):\n    |x - y|\n\nloss only_b(x):\n    x^2\n")
    (fake_stdlib / "a_first.loss").write_text("loss dup(x, y):\n    (x - y)^2\n")
    (fake_stdlib / "notes.txt").write_text("loss ignored(x):\n    x\n")
    assert stdlib.names() == ["dup", "only_b"]
    x, y = pair()
    torch.testing.assert_close(stdlib.build("dup", reduction="none")(x, y), (x - y) ** 2)
    torch.testing.assert_close(stdlib.build("only_b", reduction="sum")(x), (x**2).sum())
