"""A loss of a linear layer's output, computed chunk by chunk of rows: the fused linear + cross-entropy idea
for any lossdsl loss whose rows are independent.

`loss(h @ weight.T + bias, target)` over a large vocabulary holds the [N, V] logits and, in the backward,
their [N, V] gradient (N = 16k tokens, V = 128k: 8 GB each in float32). Here each chunk of rows goes through
the compiled loss and autograd at once, and its logits' gradient is contracted into d/dh (the chunk's rows)
and d/dweight, d/dbias (accumulated) before the next chunk, so the peak is O(chunk * V). The loss's math is
the pipeline's own module (stdlib `cross_entropy`, label smoothing, a user's loss): this module only cuts
rows and contracts gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sympy as sp
import torch

from . import ir
from .api import Loss
from .errors import LossError, ParameterError
from .scope import ELLIPSIS


class LinearLoss(torch.nn.Module):
    """`loss(h @ weight.T + bias, *others)`, its value and gradients computed `chunk` rows at a time.

    forward(h[..., D], weight[V, D], *others, bias=None): every position of h's leading axes is a row
    (language-model hidden states [batch, sequence, D] need no reshape). `others` are the loss's other inputs
    in their declared order; those whose first axis is the rows' start with h's leading shape and are cut
    with it, the rest passed whole. Only h, weight and bias get gradients. reduction: "mean" (the loss's
    own: weighted where it says `reduce mean weighted by`, nan when the total weight is 0, like torch) or
    "sum"."""

    def __init__(self, loss: Loss, *, chunk: int = 1024, reduction: str | None = None, input: str | None = None,
                 mode: str = "eager", **params) -> None:
        super().__init__()
        if chunk < 1:
            raise ParameterError(f"chunk must be a positive number of rows, got {chunk}")
        self.loss, self.chunk = loss, chunk
        self.input_name = input or loss.inputs[0].name
        row = _row_axis(loss, self.input_name)
        self.per_row = loss.compile(reduction="none", mode=mode, **params)
        self.reduction = reduction or self.per_row.default_reduction
        if self.reduction not in ("mean", "sum"):
            raise ParameterError(f"a chunked loss reduces by 'mean' or 'sum', got {self.reduction!r}")
        weighted = self.reduction == "mean" and loss.ir.reduce_weight is not None
        self.weights = _weight_loss(loss, self.input_name).compile(reduction="sum", **params) if weighted else None
        self.position = [i.name for i in loss.inputs].index(self.input_name)
        others = [i for i in loss.inputs if i.name != self.input_name]
        self.others = [i.name for i in others]
        self.cut = [bool(i.axes) and _axis(loss, i.axes[0]) == _axis(loss, row) for i in others]

    def forward(self, h: torch.Tensor, weight: torch.Tensor, *others: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        if len(others) != len(self.others):
            raise LossError(f"{self.loss.name} chunked takes h, weight and {len(self.others)} more input(s) "
                            f"({', '.join(self.others) or 'none'}), got {len(others)}")
        if h.dim() < 2 or weight.dim() != 2 or h.shape[-1] != weight.shape[1]:
            raise LossError(f"h must be [..., D] and weight [V, D]; got {tuple(h.shape)} and {tuple(weight.shape)}")
        lead = tuple(h.shape[:-1])  # [batch, sequence, D] hidden states: every position is a row
        for name, cut, t in zip(self.others, self.cut, others, strict=True):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise LossError(f"input '{name}' requires grad, but only h, weight and bias get gradients here")
            if cut and (not isinstance(t, torch.Tensor) or tuple(t.shape[:len(lead)]) != lead):
                raise LossError(f"input '{name}' must start with h's leading shape {lead}")
        rows = [t.reshape(-1, *t.shape[len(lead):]) if cut else t for cut, t in zip(self.cut, others, strict=True)]
        return _Chunked.apply(self, h.reshape(-1, h.shape[-1]), weight, bias, *rows)

    def parts(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              others: Sequence[torch.Tensor], rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk: (sum of its losses, their count or total weight, d sum / d logits). Half-precision logits
        are handed over in float32, which the loss computes in anyway, so the gradient is not rounded twice."""
        with torch.enable_grad():
            logits = h[rows] @ weight.T
            if bias is not None:
                logits = logits + bias
            logits = logits.detach().to(_accumulated(h.dtype)).requires_grad_()
            args = [t[rows] if cut else t for cut, t in zip(self.cut, others, strict=True)]
            args.insert(self.position, logits)
            out = self.per_row(*args)
            total = out.sum()
            (grad,) = torch.autograd.grad(total, logits)
        count = self.weights(*args).detach() if self.weights is not None else torch.tensor(float(out.numel()))
        return total.detach(), count, grad


class _Chunked(torch.autograd.Function):
    """The whole value and its gradients are computed in the forward, chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, mod: LinearLoss, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                *others: torch.Tensor) -> torch.Tensor:
        acc = _accumulated(h.dtype)
        want = ctx.needs_input_grad[1:4]
        grad_h = torch.empty_like(h) if want[0] else None
        grad_w = torch.zeros_like(weight, dtype=acc) if want[1] else None
        grad_b = torch.zeros_like(bias, dtype=acc) if want[2] else None
        total = torch.zeros((), dtype=acc, device=h.device)
        count = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, h.shape[0], mod.chunk):
            rows = slice(start, start + mod.chunk)
            s, c, g = mod.parts(h, weight, bias, others, rows)
            total += s  # s and g are in acc already: parts() hands the loss logits in acc
            count += c.to(device=h.device, dtype=acc)
            if grad_h is not None:
                grad_h[rows] = g.to(weight.dtype) @ weight
            if grad_w is not None:
                grad_w.addmm_(g.T, h[rows].to(acc))
            if grad_b is not None:
                grad_b += g.sum(dim=0)
            del g  # before the next chunk's logits exist
        empty = count == 0
        scale = 1 / (count + empty) if mod.reduction == "mean" else torch.ones((), dtype=acc, device=h.device)
        grads = [None if g is None else g * scale.to(g.dtype) for g in (grad_h, grad_w, grad_b)]
        ctx.save_for_backward(*(g for g in grads if g is not None))
        ctx.have = tuple(g is not None for g in grads)
        ctx.dtypes = (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        value = total * scale
        if mod.reduction == "mean":  # like torch: a zero total weight gives nan, with zero gradients
            value = value.masked_fill(empty, float("nan"))
        return value.to(h.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        saved = iter(ctx.saved_tensors)
        grads = [(next(saved) * grad_out).to(dt) if have else None
                 for have, dt in zip(ctx.have, ctx.dtypes, strict=True)]
        return (None, *grads, *([None] * (len(ctx.needs_input_grad) - 4)))


def _accumulated(dtype: torch.dtype) -> torch.dtype:
    """At least float32: the dtype logits, losses and gradients are summed in."""
    return torch.promote_types(dtype, torch.float32)


def linear_loss(loss: Loss | str, **options) -> LinearLoss:
    """A stdlib loss (by name) or a Loss, chunked over the rows of a linear layer's output (see LinearLoss)."""
    if isinstance(loss, str):
        from . import stdlib

        loss = stdlib.get(loss)
    return LinearLoss(loss, **options)


def _axis(loss: Loss, label: str) -> str:
    return loss.ir.axis_of.get(label, label)


def _row_axis(loss: Loss, name: str) -> str:
    """The first axis of input `name`, once checked that each row of the loss reads only its own row: nothing
    reduces over that axis or reads its size, the inputs cut with it are read at the row itself, and no
    input holds it as a later axis (which would be passed whole and read at a chunk's local row)."""
    inp = loss.ir.input(name)
    if inp is None or not inp.axes or len(inp.axes) < 2:
        raise LossError(f"{loss.name}: the linear layer's output '{name}' must be an input with declared axes "
                        "[rows, classes, ...]")
    row = _axis(loss, inp.axes[0])
    cut = {i.name for i in loss.inputs if i.axes and _axis(loss, i.axes[0]) == row}
    for i in loss.inputs:
        if i.axes and row in (_axis(loss, a) for a in i.axes[1:]):
            raise LossError(f"{loss.name}: input '{i.name}' has the rows' axis {row} after its first; it cannot be "
                            "cut into chunks of rows")
    for e in (loss.ir.expr, loss.ir.reduce_weight):
        for node in sp.preorder_traversal(e) if e is not None else ():
            if _couples_rows(loss, node, cut, row):
                raise LossError(f"{loss.name} couples the rows of '{name}' (axis {row}) through {node}: its rows "
                                "are not independent, so it cannot be computed chunk by chunk")
    return row


def _couples_rows(loss: Loss, node: sp.Basic, cut: set[str], row: str) -> bool:
    if isinstance(node, ir._Reduction):
        return any(i == ELLIPSIS or _axis(loss, str(i)) == row for i in node.indices)
    if isinstance(node, ir.Size):
        return _axis(loss, str(node.args[0])) == row
    if isinstance(node, sp.Indexed) and node.base.name in cut:
        return _axis(loss, str(node.indices[0])) != row
    return False


def _weight_loss(loss: Loss, name: str) -> Loss:
    """The loss's `reduce mean weighted by w` weight as a loss of its own (summed per chunk), when it does
    not depend on the logits: d(sum / weight) would then need the weight's gradient too."""
    w = loss.ir.reduce_weight
    if ir.reads(w, name):
        raise LossError(f"{loss.name} weights its mean by a function of '{name}'; chunked, use reduction='sum'")
    return Loss(dataclasses.replace(loss.ir, expr=w, reduce_weight=None, reduce_mode=None, statements=[],
                                    notes=[]))
