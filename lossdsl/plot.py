"""Loss and gradient curves, as textbooks draw them to compare losses (MSE, MAE, Huber, Smooth L1 over the error;
BCE, focal, hinge over the logit). Used by `lossdsl plot`; needs matplotlib (the `examples` extra).

The gradient is autograd's through the compiled module, so the plot shows what training will see, kinks
and saturations included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .api import Loss
from .errors import KindError, ParameterError

STYLES = ("-", "--", "-.", ":")


@dataclass
class Curve:
    name: str
    over: str  # "error" or "logit"
    x: torch.Tensor
    loss: torch.Tensor
    grad: torch.Tensor


def axis_for(loss: Loss, over: str = "auto") -> str:
    """'logit' for losses of logits or of binary/sign targets (drawn at target 1), else 'error'."""
    if over != "auto":
        return over
    kinds = [i.kind for i in loss.inputs]
    return "logit" if kinds[:1] == ["logits"] or kinds[1:2] in (["binary"], ["sign"]) else "error"


def curve(loss: Loss, *, over: str = "auto", lo: float = -3.0, hi: float = 3.0, points: int = 401,
          params: dict | None = None) -> Curve:
    """Evaluate an elementwise loss of (prediction[, target]) and its gradient on a grid."""
    ins = loss.inputs
    if not 1 <= len(ins) <= 2 or any(i.axes is not None or i.kind == "fn" for i in ins):
        raise KindError(f"plot draws elementwise losses of (prediction, target); '{loss.name}' takes "
                        + ", ".join(f"{i.name}{list(i.axes) if i.axes else ''}" for i in ins))
    if not lo < hi or points < 2:
        raise ParameterError(f"the range must satisfy a < b with at least 2 points, got [{lo}, {hi}], {points}")
    over = axis_for(loss, over)
    if over == "error" and len(ins) == 2 and ins[1].kind in ("binary", "sign", "index", "int", "count"):
        raise KindError(f"'{loss.name}' compares with a {ins[1].kind} target; plot it over the logit (--over logit)")
    known = {p.name for p in loss.parameters}
    module = loss.compile(reduction="none", **{k: v for k, v in (params or {}).items() if k in known}).double()
    x = torch.linspace(lo, hi, points, dtype=torch.float64, requires_grad=True)
    target = torch.zeros_like(x) if over == "error" else torch.ones_like(x)
    out = module(x, target) if len(ins) == 2 else module(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return Curve(loss.name, over, x.detach(), out.detach(), grad)


def save(curves: list[Curve], path: str | Path) -> Path:
    """Two panels, loss and gradient, one line per loss; written as PNG with matplotlib's Agg canvas."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ParameterError("plots need matplotlib: pip install 'lossdsl[examples]'") from None
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_grad = fig.subplots(1, 2)
    label = {"error": "error (prediction − target)", "logit": "logit (target = 1)"}
    for k, c in enumerate(curves):
        style = STYLES[k % len(STYLES)]  # losses that coincide (Huber, Smooth L1 at 1) stay visible
        ax_loss.plot(c.x.numpy(), c.loss.numpy(), style, label=c.name)
        ax_grad.plot(c.x.numpy(), c.grad.numpy(), style, label=c.name)
    for ax, title in ((ax_loss, "loss"), (ax_grad, f"gradient d loss / d {curves[0].over}")):
        ax.set_title(title)
        ax.set_xlabel(label[curves[0].over])
        ax.grid(alpha=0.3)
        ax.legend()
    out = Path(path)
    fig.savefig(out, dpi=100)
    return out
