"""Example 4: paper to code. A loss typed from its LaTeX, verified, plotted and exported to a .py file.

The Wing loss (Feng et al., 2018, for facial landmarks) as the paper prints it: logarithmic for small errors,
L1 for large ones, joined continuously by the constant C. `lossdsl.from_latex` reads it (w and epsilon are
its parameters) and prints it back as LaTeX; we then check the reading against a hand-written torch version,
verify its symbolic gradient against autograd and finite differences, plot it next to L1 and Huber, and
export standalone PyTorch source that imports only torch.
"""

from __future__ import annotations

import importlib.util

import torch
from _common import out_dir, seed, single_thread

import lossdsl
from lossdsl import plot

WING = r"""
\mathcal{L}_{wing} = \begin{cases}
    w \ln\left(1 + \frac{|\hat{y} - y|}{\epsilon}\right) & \text{if } |\hat{y} - y| < w \\
    |\hat{y} - y| - C & \text{otherwise}
\end{cases}, \quad C = w - w \ln\left(1 + \frac{w}{\epsilon}\right)
"""


def reference(pred: torch.Tensor, target: torch.Tensor, w: float = 10.0, eps: float = 2.0) -> torch.Tensor:
    """Wing loss written by hand, as in the paper's released code."""
    e = (pred - target).abs()
    c = w - w * torch.log1p(torch.tensor(w / eps, dtype=e.dtype))
    return torch.where(e < w, w * torch.log1p(e / eps), e - c)


def main() -> dict[str, float]:
    single_thread()
    seed(0)
    out = out_dir()
    loss = lossdsl.from_latex(WING, params={"w": 10.0, "epsilon": 2.0})
    print("read from LaTeX as:\n" + "\n".join("    " + line for line in loss.lossdsl_source.splitlines()))
    print(f"and back to LaTeX (Loss.latex(), what Jupyter renders):\n    {loss.latex()}")

    pred, target = 30 * torch.randn(1000, dtype=torch.float64), torch.zeros(1000, dtype=torch.float64)
    module = loss.compile(reduction="none")
    gap = (module(pred, target) - reference(pred, target)).abs().max().item()
    print(f"max |from_latex - hand-written torch| over 1000 errors in [-90, 90]: {gap:.2e}")

    report = lossdsl.verify(loss)
    print(report)
    if hasattr(loss, "stability_report"):
        print(loss.stability_report())

    curves = [plot.curve(loss, lo=-20, hi=20)] + [
        plot.curve(lossdsl.stdlib.get(name), lo=-20, hi=20) for name in ("l1_loss", "huber_loss")]
    png = plot.save(curves, out / "wing_vs_l1_huber.png")
    print(f"plot: {png}")

    path = out / "wing_loss.py"
    path.write_text(loss.to_source(), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("wing_loss", path)
    exported = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exported)
    standalone = getattr(exported, loss.class_name)(w=10.0, epsilon=2.0, reduction="none")
    export_gap = (standalone(pred, target) - reference(pred, target)).abs().max().item()
    print(f"exported {path} (class {loss.class_name}); max |exported - reference| {export_gap:.2e}")
    return {"gap": gap, "export_gap": export_gap, "verified": float(report.passed)}


if __name__ == "__main__":
    main()
