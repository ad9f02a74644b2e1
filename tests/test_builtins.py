"""lossdsl/builtins.py: the CTC forward-backward: its gradient, memory, per-frame cost and log-sums."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lossdsl import builtins
from tests.conftest import AtenOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from measure import peak_bytes  # the benchmarks' allocator-event peak


def _node_names(root: torch.autograd.graph.Node) -> list[str]:
    seen, stack, names = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(node.name())
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def _problem(steps: int, batch: int, classes: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(steps, batch, classes, dtype=torch.float64, generator=gen)
    targets = torch.randint(1, classes, (batch, width), generator=gen)
    target_lengths = torch.randint(0, width + 1, (batch,), generator=gen)
    input_lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=gen)
    return logits, targets, input_lengths, target_lengths


def test_ctc_backward_is_one_node_whose_gradient_is_the_numerical_one() -> None:
    """The gradient is the forward-backward algorithm's (one autograd node, nothing per frame), checked
    against finite differences with respect to log_probs themselves (torch's ctc_loss gradient assumes they
    come from log_softmax, so it is no reference here). A sample with no alignment has a zero gradient."""
    logits, targets, input_lengths, target_lengths = _problem(7, 3, 4, 3)
    targets[2], target_lengths[2], input_lengths[2] = torch.tensor([2, 2, 2]), 3, 4  # needs 5 frames
    log_probs = torch.log_softmax(logits, 2).requires_grad_()
    nll = builtins.ctc_nll(log_probs, targets, input_lengths, target_lengths, blank=0)
    assert _node_names(nll.sum().grad_fn) == ["SumBackward0", "_CtcNllBackward", "torch::autograd::AccumulateGrad"]
    assert torch.isinf(nll[2]) and torch.isfinite(nll[:2]).all()
    grad = torch.autograd.grad(nll[:2].sum() + 0 * nll[2], log_probs)[0]
    assert (grad[:, 2] == 0).all() and (grad[input_lengths[0]:, 0] == 0).all()

    def feasible(lp: torch.Tensor) -> torch.Tensor:
        return builtins.ctc_nll(lp, targets[:2], input_lengths[:2], target_lengths[:2], blank=0)

    assert torch.autograd.gradcheck(feasible, (log_probs[:, :2].detach().requires_grad_(),))


def test_ctc_peak_memory_is_below_torchs() -> None:
    """Only the alphas ([T, N, 2S + 1]) are kept for the backward; autograd through the recursion kept a
    dozen temporaries per frame (130 MB against torch's 68 at T = 64, N = 2048, C = 32)."""
    logits, targets, input_lengths, target_lengths = _problem(32, 256, 32, 8)
    log_probs = torch.log_softmax(logits.float(), 2).requires_grad_()
    lengths = (input_lengths, target_lengths)

    def ours() -> None:
        torch.autograd.grad(builtins.ctc_nll(log_probs, targets, *lengths, blank=0).sum(), log_probs)

    def theirs() -> None:
        torch.autograd.grad(torch.nn.functional.ctc_loss(log_probs, targets, *lengths, reduction="sum"), log_probs)

    cpu = torch.device("cpu")
    assert peak_bytes(ours, cpu) < peak_bytes(theirs, cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_sum_is_logsumexp_without_subnormals(dtype: torch.dtype) -> None:
    """Terms more than 80 below the largest are dropped before exp (they cannot change the sum, and exp of
    subnormal results is 30x slower); all -inf stays -inf."""
    inf = float("inf")
    a = torch.tensor([0.0, -inf, -1e4, 3.0, -90.0, -inf], dtype=dtype)
    b = torch.tensor([-1.0, -inf, -1e4 - 0.5, -200.0, -95.0, 2.0], dtype=dtype)
    c = torch.tensor([-inf, -inf, -inf, -90.0, -99.0, -inf], dtype=dtype)
    torch.testing.assert_close(builtins._log_sum(a, b, c), torch.logsumexp(torch.stack([a, b, c]), 0))


def test_torch_compile_does_not_unroll_the_ctc_recursion() -> None:
    """Dynamo would trace one set of ops per frame (T = 64: 57-105 s of Inductor compilation, again for each
    new T); the recursion runs outside the graph, so what is traced does not grow with T."""
    def traced_ops(steps: int) -> int:
        log_probs = torch.log_softmax(torch.randn(steps, 2, 5), 2)
        targets, lengths = torch.randint(1, 5, (2, 3)), (torch.full((2,), steps), torch.tensor([3, 2]))
        torch._dynamo.reset()
        report = torch._dynamo.explain(lambda *a: builtins.ctc_nll(*a, blank=0).sum())(log_probs, targets, *lengths)
        return report.op_count

    assert traced_ops(40) == traced_ops(10) < 10


def test_ctc_frame_costs_few_torch_calls() -> None:
    """Below ASR batch sizes a frame's cost is the number of torch calls it makes, not its arithmetic
    (T = 400, N = 16: 81 ms against torch's 25 with the 75 calls a frame of shifted copies). Forward and
    backward together now make 9 a frame: two logaddexp each way over views of padded buffers, per-frame
    views from one unbind, and the gammas scattered for many frames at once."""
    def calls(steps: int) -> int:
        log_probs = torch.log_softmax(torch.randn(steps, 3, 5), 2).requires_grad_()
        targets, target_lengths = torch.randint(1, 5, (3, 4)), torch.tensor([4, 2, 3])
        with AtenOps() as seen:
            nll = builtins.ctc_nll(log_probs, targets, torch.full((3,), steps), target_lengths, blank=0)
            torch.autograd.grad(nll.sum(), log_probs)
        return len(seen.ops)

    assert (calls(40) - calls(20)) / 20 <= 12
