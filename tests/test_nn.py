"""lossdsl.nn against torch.nn: the same constructors, and modules that compute what torch's compute."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as TF

import lossdsl
import lossdsl.nn as lnn

torch.set_num_threads(1)  # tiny tensors: OpenMP threads only contend on the shared CPUs


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rand(*shape, seed: int = 0) -> torch.Tensor:
    return 0.05 + 0.9 * torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def signs(n: int) -> torch.Tensor:
    return torch.tensor([1.0, -1.0] * n, dtype=torch.float64)[:n]


W3 = torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64)
COUNTS = torch.tensor([0.0, 1, 2, 5], dtype=torch.float64).repeat(3, 1)
LABELS = torch.tensor([[0.0, 1, 1], [1, 0, 0]], dtype=torch.float64)
CTC_LP = torch.log_softmax(randn(6, 2, 4), -1)
# class name -> (constructor keywords, forward inputs): options away from their defaults where torch has any
CASES = {
    "L1Loss": ({"reduction": "sum"}, (randn(3, 2), randn(3, 2, seed=1))),
    "MSELoss": ({"size_average": False}, (randn(3, 2), randn(3, 2, seed=1))),
    "SmoothL1Loss": ({"beta": 0.4}, (randn(3, 2), randn(3, 2, seed=1))),
    "HuberLoss": ({"delta": 0.4, "reduction": "none"}, (randn(3, 2), randn(3, 2, seed=1))),
    "BCELoss": ({"weight": W3}, (rand(2, 3), rand(2, 3, seed=1))),
    "BCEWithLogitsLoss": ({"weight": W3, "pos_weight": W3 + 1}, (randn(2, 3), rand(2, 3, seed=1))),
    "CrossEntropyLoss": ({"weight": W3, "ignore_index": 1, "label_smoothing": 0.1},
                         (randn(4, 3, 2), torch.tensor([[0, 1], [2, 2], [1, 1], [0, 2]]))),
    "NLLLoss": ({"weight": W3, "ignore_index": 0}, (randn(4, 3), torch.tensor([0, 1, 2, 2]))),
    "KLDivLoss": ({"reduction": "batchmean", "log_target": True}, (randn(3, 4), randn(3, 4, seed=1))),
    "PoissonNLLLoss": ({"log_input": False, "full": True}, (rand(3, 4), COUNTS)),
    "GaussianNLLLoss": ({"full": True, "eps": 1e-3}, (randn(3, 2), randn(3, 2, seed=1), rand(3, seed=2))),
    "SoftMarginLoss": ({}, (randn(4), signs(4))),
    "MultiLabelSoftMarginLoss": ({"weight": W3}, (randn(2, 3), LABELS)),
    "MultiLabelMarginLoss": ({}, (randn(2, 3), torch.tensor([[2, 0, -1], [1, -1, 0]]))),
    "MultiMarginLoss": ({"p": 2, "margin": 0.5, "weight": W3}, (randn(4, 3), torch.tensor([0, 1, 2, 1]))),
    "HingeEmbeddingLoss": ({"margin": 0.5}, (randn(4), signs(4))),
    "MarginRankingLoss": ({"margin": 0.2}, (randn(4), randn(4, seed=1), signs(4))),
    "CosineEmbeddingLoss": ({"margin": 0.1}, (randn(4, 3), randn(4, 3, seed=1), signs(4))),
    "TripletMarginLoss": ({"p": 1.0, "swap": True}, (randn(4, 3), randn(4, 3, seed=1), randn(4, 3, seed=2))),
    "TripletMarginWithDistanceLoss": ({"distance_function": lambda a, b: 1 - TF.cosine_similarity(a, b),
                                       "margin": 0.5, "swap": True},
                                      (randn(4, 3), randn(4, 3, seed=1), randn(4, 3, seed=2))),
    "CTCLoss": ({"blank": 3, "zero_infinity": True},
                (CTC_LP, torch.tensor([[0, 1, 1], [2, 0, 0]]), torch.tensor([6, 2]), torch.tensor([3, 2]))),
}


def test_every_torch_loss_has_a_case():
    assert set(CASES) == set(lnn.__all__)


@pytest.mark.parametrize("name", sorted(CASES))
def test_constructor_matches_torch(name):
    ours = inspect.signature(getattr(lnn, name).__init__).parameters
    theirs = inspect.signature(getattr(torch.nn, name).__init__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == \
        [(p.name, p.kind, p.default) for p in theirs.values()]


@pytest.mark.parametrize("name", sorted(CASES))
def test_module_matches_torch(name):
    kwargs, inputs = CASES[name]
    ours, theirs = getattr(lnn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    first = name != "CTCLoss"  # torch's CTC gradient assumes log_softmax inputs; test_functional goes through one
    a = [t.clone().requires_grad_(first and k == 0) for k, t in enumerate(inputs)]
    b = [t.clone().requires_grad_(first and k == 0) for k, t in enumerate(inputs)]
    out, ref = ours(*a), theirs(*b)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    if first:
        grad, = torch.autograd.grad(out.sum(), a[0])
        torch.testing.assert_close(grad, torch.autograd.grad(ref.sum(), b[0])[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [1.5, -0.25])
def test_bce_rejects_a_target_outside_0_1_as_torch_does(bad: float) -> None:
    """torch's BCELoss raises for a target outside [0, 1] (the log terms would be weighted by a negative
    factor, and the loss unbounded below); the stdlib declares the target a probability and says which input."""
    x, y = torch.rand(2, 3, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64)
    y[1, 2] = bad
    with pytest.raises(RuntimeError, match="target"):
        torch.nn.BCELoss()(x, y)
    with pytest.raises(lossdsl.InputError, match=r"'target'.*outside \[0, 1\]"):
        lnn.BCELoss()(x, y)


def test_weights_are_buffers_like_torch():
    ours, theirs = lnn.BCEWithLogitsLoss(weight=W3, pos_weight=W3), torch.nn.BCEWithLogitsLoss(weight=W3,
                                                                                               pos_weight=W3)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert ours.float().weight.dtype == torch.float32


def test_legacy_flags_fold_into_reduction():
    assert lnn.L1Loss(size_average=False).reduction == torch.nn.L1Loss(size_average=False).reduction == "sum"
    assert lnn.NLLLoss(reduce=False).reduction == "none"


def test_bad_reduction_is_a_loss_error():
    with pytest.raises(lossdsl.LossError, match="not a valid value for reduction"):
        lnn.MSELoss(reduction="average")(randn(2), randn(2))


def test_other_names_are_torch_nn_own():
    assert lnn.Linear is torch.nn.Linear and lnn.init is torch.nn.init
    assert lossdsl.functional.relu is TF.relu
    with pytest.raises(AttributeError):
        lnn.NoSuchLayer  # noqa: B018 - the attribute access is the test


def test_one_line_swap_trains():
    """`import lossdsl.nn as nn` in place of torch.nn: one optimiser step lowers the loss, as torch's does."""
    torch.manual_seed(0)
    x, y = randn(16, 5), torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(1))
    losses = []
    for nn in (lnn, torch.nn):
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3).double()
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        before = criterion(model(x), y)
        before.backward()
        opt.step()
        losses.append((before.item(), criterion(model(x), y).item()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)
    assert losses[0][1] < losses[0][0]
