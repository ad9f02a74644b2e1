"""Loss and gradient curves, as textbooks draw them to compare losses (MSE, MAE, Huber, Smooth L1 over the error;
BCE, focal, hinge over the logit). Used by `lossdsl plot`; needs matplotlib (the `examples` extra).

The gradient is autograd's through the compiled module, so the plot shows what training will see, kinks
and saturations included. Over the logit a probability input gets sigmoid(logit), as a network's sigmoid output
would feed it, and the gradient is with respect to the logit. One figure has one x axis: losses that would be
drawn over different axes are refused together (`common_axis`), not drawn over a mislabelled one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .api import Loss
from .errors import KindError, ParameterError, UnknownNameError, did_you_mean

STYLES = ("-", "--", "-.", ":")


@dataclass
class Curve:
    name: str
    over: str  # "error" or "logit"
    x: torch.Tensor
    loss: torch.Tensor
    grad: torch.Tensor
    note: str = ""  # how the x axis reaches the loss, where not directly ("p = σ(logit)")


def axis_for(loss: Loss, over: str = "auto") -> str:
    """'logit' for losses of logits or of binary/sign targets (drawn at target 1), else 'error'."""
    if over != "auto":
        return over
    kinds = [i.kind for i in loss.inputs]
    return "logit" if kinds[:1] == ["logits"] or kinds[1:2] in (["binary"], ["sign"]) else "error"


def common_axis(losses: list[Loss], over: str = "auto") -> str:
    """The one axis every loss is drawn over; losses whose kinds pick different axes are an error that says
    which is which (a figure labelled 'error' with a hinge curve over the logit in it would mislead)."""
    axes = {loss.name: axis_for(loss, over) for loss in losses}
    if len(set(axes.values())) > 1:
        which = ", ".join(f"{name} over the {axis}" for name, axis in axes.items())
        raise KindError(f"one plot has one x axis, but these losses are drawn over different ones ({which}): "
                        "plot them separately, or choose one axis for all with --over")
    return next(iter(axes.values()), "error")


def check_params(losses: list[Loss], params: dict) -> None:
    """Every -p name is a parameter of at least one loss: each loss takes its own, so one that none takes is
    a misspelling, not a value to drop silently."""
    known = {p.name for loss in losses for p in loss.parameters}
    for key in params:
        if key not in known:
            names = ", ".join(loss.name for loss in losses)
            raise UnknownNameError(f"no loss plotted ({names}) has a parameter '{key}'" + did_you_mean(key, known))


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
    through = over == "logit" and ins[0].kind == "prob"
    pred = torch.sigmoid(x) if through else x
    out = module(pred, target) if len(ins) == 2 else module(pred)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return Curve(loss.name, over, x.detach(), out.detach(), grad, f"{ins[0].name} = σ(logit)" if through else "")


def save(curves: list[Curve], path: str | Path) -> Path:
    """Two panels, loss and gradient, one line per loss, written with matplotlib in the format the suffix names
    (PNG without one: `curves` is written as curves.png); returns the path written."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ParameterError("plots need matplotlib: pip install 'lossdsl[examples]'") from None
    if len({c.over for c in curves}) > 1:
        raise KindError("one plot has one x axis: " + ", ".join(f"{c.name} is over the {c.over}" for c in curves))
    fig = Figure(figsize=(10, 4), layout="constrained")
    out = _output(Path(path), fig.canvas.get_supported_filetypes())
    ax_loss, ax_grad = fig.subplots(1, 2)
    label = {"error": "error (prediction − target)", "logit": "logit (target = 1)"}
    for k, c in enumerate(curves):
        style = STYLES[k % len(STYLES)]  # losses that coincide (Huber, Smooth L1 at 1) stay visible
        name = f"{c.name} ({c.note})" if c.note else c.name
        ax_loss.plot(c.x.numpy(), c.loss.numpy(), style, label=name)
        ax_grad.plot(c.x.numpy(), c.grad.numpy(), style, label=name)
    for ax, title in ((ax_loss, "loss"), (ax_grad, f"gradient d loss / d {curves[0].over}")):
        ax.set_title(title)
        ax.set_xlabel(label[curves[0].over])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(out, dpi=100)
    return out


def _output(path: Path, formats: dict[str, str]) -> Path:
    """The file that will be written: matplotlib adds .png to a name without a suffix, so the caller is told
    that name; a suffix matplotlib cannot write is an error before any drawing."""
    if not path.suffix:
        return path.with_name(path.name + ".png")
    if path.suffix[1:].lower() not in formats:
        raise ParameterError(f"cannot write {path}: plots are written as {', '.join(sorted(formats))}")
    return path
