"""lossdsl/builtins.py: the CTC recursion's backward stays linear in the number of frames."""

from __future__ import annotations

import torch

from lossdsl import builtins


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


def test_ctc_reads_frames_through_one_unbind() -> None:
    """emit[t] in the time loop is a SelectBackward per frame, each zero-filling a gradient of the whole
    emission tensor (T^2 work: 3.1-3.7 s against 0.53-0.63 s at T = 128, N = 1024, C = 32)."""
    steps, batch, classes = 12, 3, 5
    log_probs = torch.log_softmax(torch.randn(steps, batch, classes, dtype=torch.float64), 2).requires_grad_()
    targets = torch.randint(1, classes, (batch, 4))
    lengths = torch.full((batch,), steps), torch.tensor([4, 3, 2])
    nll = builtins.ctc_nll(log_probs, targets, *lengths, blank=0)
    names = _node_names(nll.sum().grad_fn)
    assert names.count("UnbindBackward0") == 1
    assert names.count("SelectBackward0") < steps // 2
    expected = torch.nn.functional.ctc_loss(log_probs, targets, *lengths, reduction="sum")
    torch.testing.assert_close(nll.sum(), expected)


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
