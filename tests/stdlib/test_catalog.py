"""lossdsl.stdlib as a library: factories by name, the catalog, docstrings of every issue-6 loss."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

import lossdsl
from lossdsl import stdlib
from lossdsl.parser import parse_text

STDLIB = Path(stdlib.__file__).parents[1] / "stdlib"
MINE = ["classification", "regression", "segmentation", "metric", "generative", "multitask"]
ISSUE_6 = ["sigmoid_focal_loss", "focal_loss", "label_smoothing_cross_entropy", "weighted_bce", "hinge_loss",
           "poly1_cross_entropy", "rmse_loss", "log_cosh_loss", "dice_loss", "jaccard_loss", "tversky_loss",
           "combo_loss", "box_iou_loss", "contrastive_loss", "triplet_loss", "info_nce", "nt_xent",
           "clip_loss", "supcon_loss", "center_loss", "gan_d_loss", "gan_g_loss", "lsgan_d_loss",
           "lsgan_g_loss", "wgan_d_loss", "wgan_g_loss", "wgan_gp_d_loss", "vae_loss", "perceptual_loss",
           "style_loss", "uncertainty_weighting", "dynamic_weighting", "distillation_loss",
           "ohem_cross_entropy", "faster_rcnn_loss"]


def my_definitions() -> list:
    return [d for stem in MINE for d in parse_text((STDLIB / f"{stem}.loss").read_text(encoding="utf-8"))]


def test_every_issue_loss_is_a_factory_returning_a_module() -> None:
    for name in ISSUE_6:
        factory = getattr(lossdsl.stdlib, name)
        assert callable(factory) and factory.__doc__, name
        assert isinstance(factory(), torch.nn.Module), name


def test_no_loss_name_is_defined_twice_across_the_stdlib() -> None:
    counts = Counter(d.name for path in STDLIB.glob("*.loss") for d in parse_text(path.read_text(encoding="utf-8")))
    assert [n for n, c in counts.items() if c > 1] == []
    assert not {"huber_loss", "smooth_l1_loss"} & {d.name for d in my_definitions()}  # part 1 owns them


def test_every_definition_documents_its_paper_and_defaults() -> None:
    for d in my_definitions():
        assert d.doc and len(d.doc) > 80, d.name
        for p in d.params:
            assert p.name in d.doc or p.name.rstrip("_") in d.doc, (d.name, p.name)


def test_catalog_lists_every_loss_with_task_inputs_parameters_and_description() -> None:
    entries = {e.name: e for e in stdlib.catalog()}
    assert set(ISSUE_6) <= set(entries)
    assert set(stdlib.names()) <= set(entries)
    focal = entries["focal_loss"]
    assert focal.task == "classification"
    assert focal.inputs == ("x[n, c, *d]: logits", "y[n, *d]: index(c)")
    assert focal.parameters == ("alpha[c] = 1", "gamma = 2.0")
    assert "down-weights easy examples" in focal.description and "\n" not in focal.description
    assert entries["info_nce"].task == "metric learning"
    assert entries["style_loss"].inputs == ("phi: fn", "x", "y")
    assert all(e.description and e.task for e in entries.values())


def test_format_catalog_is_one_block_per_task() -> None:
    text = stdlib.format_catalog()
    for task in ["classification:", "regression:", "segmentation:", "metric learning:", "generative:",
                 "multi-task and recipes:"]:
        assert f"\n{task}\n" in f"\n{text}"
    for name in ISSUE_6:
        assert f"  {name}(" in text
    assert "  dice_loss(p[n, c, *s], g[n, c, *s]: prob; eps = 1e-05, use_sigmoid: bool = false" in text


def test_unknown_names_suggest_the_nearest() -> None:
    with pytest.raises(AttributeError, match="focal_loss"):
        stdlib.focal_los  # noqa: B018 - the attribute access is the test
    with pytest.raises(lossdsl.UnknownNameError, match="dice_loss"):
        stdlib.build("dice_los")


def test_parameters_are_checked_by_name_and_constraint() -> None:
    with pytest.raises(lossdsl.ParameterError, match="gamma"):
        stdlib.focal_loss(gamma=-1.0)
    with pytest.raises(lossdsl.UnknownNameError, match="temperature"):
        stdlib.nt_xent(temprature=0.1)


def test_stdlib_losses_are_callable_from_other_losses() -> None:
    """A user's loss inlines a stdlib definition by name."""
    module = lossdsl.compile("""
loss my_loss(x, y):
    2 * sigmoid_focal_loss(x, y, alpha = -1, gamma = 0)
""")
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4, 3)).double()
    torch.testing.assert_close(module(x, y), 2 * torch.nn.functional.binary_cross_entropy_with_logits(x, y))


@pytest.mark.parametrize("name, inputs, shape", [
    ("focal_loss", (torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4))), (2, 4)),
    ("dice_loss", (torch.rand(2, 3, 4, 4), torch.randint(0, 2, (2, 3, 4, 4)).float()), (2, 3)),
    ("info_nce", (torch.randn(5, 4), torch.randn(5, 4)), (5,)),
    ("supcon_loss", (torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])), (5,)),
    ("vae_loss", (torch.randn(3, 2, 2), torch.rand(3, 2, 2), torch.randn(3, 4), torch.randn(3, 4)), (3,)),
    ("rmse_loss", (torch.randn(3, 2), torch.randn(3, 2)), ()),
    ("gan_d_loss", (torch.randn(3, 1), torch.randn(5, 1)), ()),
])
def test_reduction_none_keeps_the_batch_axes(name: str, inputs: tuple, shape: tuple) -> None:
    out = getattr(stdlib, name)(reduction="none")(*inputs)
    assert out.shape == shape
    torch.testing.assert_close(out.mean(), getattr(stdlib, name)()(*inputs))
