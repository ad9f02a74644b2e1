"""The `lossdsl` command, run as a subprocess (one per command: each pays a torch import), plus in-process
checks of what the commands compute."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lossdsl

FOCAL = """\
# binary focal loss on probabilities
loss focal(p: prob, y: binary; alpha = 0.25 in [0, 1], gamma = 2.0 >= 0):
    pt = where(y == 1, p, 1 - p)
    at = where(y == 1, alpha, 1 - alpha)
    -at * (1 - pt)^gamma * log(pt)
"""
HUBER_TEX = r"""\mathcal{L}_{Huber} = \begin{cases} \frac{1}{2}(y - \hat{y})^2 & \text{if } |y-\hat{y}| \leq \delta \\
\delta |y - \hat{y}| - \frac{1}{2}\delta^2 & \text{otherwise} \end{cases}"""


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    exe = shutil.which("lossdsl")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "lossdsl.cli", *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def test_compile_writes_standalone_source_that_imports_and_matches(tmp_path):
    (tmp_path / "focal.loss").write_text(FOCAL)
    done = run("compile", "focal.loss", "-o", "focal_out.py", cwd=tmp_path)
    assert "wrote focal_out.py" in done.stderr
    spec = importlib.util.spec_from_file_location("focal_out", tmp_path / "focal_out.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "import lossdsl" not in (tmp_path / "focal_out.py").read_text()
    exported = module.Focal(gamma=1.5, reduction="none")
    ours = lossdsl.compile(FOCAL, gamma=1.5, reduction="none")
    p, y = torch.rand(50, dtype=torch.float64) * 0.9 + 0.05, torch.randint(0, 2, (50,)).double()
    torch.testing.assert_close(exported(p, y), ours(p, y))
    pt = torch.where(y == 1, p, 1 - p)
    at = torch.where(y == 1, 0.25, 0.75)
    torch.testing.assert_close(exported(p, y), -at * (1 - pt) ** 1.5 * pt.log())


def test_show_reads_latex_and_prints_formula_parameters_latex_and_gradient(tmp_path):
    done = run("show", HUBER_TEX, cwd=tmp_path)
    out = done.stdout
    assert out.startswith("loss huber\n")
    assert "inputs:     y, y_hat" in out and "parameters: delta (required)" in out
    assert "latex:      \\mathcal{L}_{\\text{huber}} = \\begin{cases}" in out and "\\delta" in out
    assert "definition:\n  # from LaTeX" in out and "  loss huber(y, y_hat; delta):" in out  # what it became
    assert "gradient:   d huber/d y = " in out and "sign(y - y_hat)" in out
    assert "deriving d huber/d y" in done.stderr


def test_show_of_a_stdlib_loss_prints_its_own_definition_and_stable_forms(capsys):
    from lossdsl import cli

    assert cli.main(["show", "focal_loss"]) == 0
    out = capsys.readouterr().out
    definition = out.split("definition:\n", 1)[1].split("latex:", 1)[0]
    assert definition.startswith("  loss focal_loss(x[n, c, *d]: logits") and "loss label_smoothing" not in definition
    assert definition.rstrip().endswith("-alpha[y] * (1 - exp(lpt))^gamma * lpt")
    assert "latex:      \\begin{aligned} \\mathrm{lp} &= \\log\\operatorname{softmax}_{c}" in out
    assert "stable:     frac_pow_at_zero (result)" in out


def test_grad_prints_latex_of_the_symbolic_gradient(tmp_path):
    (tmp_path / "sq.loss").write_text("loss sq(x, y; w = 3.0):\n    w * (x - y)^2\n")
    out = run("grad", "sq.loss", "--wrt", "x", "--latex", "--reduction", "sum", cwd=tmp_path).stdout
    assert out.startswith(r"\frac{\partial L}{\partial x} = ")
    assert "2 w" in out.replace("\\cdot", "") and "x - y" in out


def test_check_verifies_gradients_and_reports_stability(tmp_path):
    pytest.importorskip("lossdsl.verify")
    pytest.importorskip("lossdsl.stability")
    (tmp_path / "focal.loss").write_text(FOCAL)
    done = run("check", "focal.loss", "--trials", "2", cwd=tmp_path)
    assert "verify focal: PASS" in done.stdout and "checking focal" in done.stderr


def test_plot_writes_a_png_of_loss_and_gradient_curves(tmp_path):
    mpimg = pytest.importorskip("matplotlib.image")
    done = run("plot", "mse_loss", "huber_loss", "--range", "-2", "2", "-o", "cmp.png", cwd=tmp_path)
    assert "over the error" in done.stdout and "[2/2] huber_loss" in done.stderr
    image = mpimg.imread(tmp_path / "cmp.png")
    assert image.shape[0] >= 300 and image.shape[1] >= 800 and image.std() > 0.05


def test_list_prints_every_stdlib_loss(tmp_path):
    out = run("list", cwd=tmp_path).stdout
    missing = [n for n in lossdsl.stdlib.names() if f"{n}(" not in out]
    assert not missing and "segmentation" in out


def test_bench_times_eager_and_torch_builtin(tmp_path):
    done = run("bench", "mse_loss", "--size", "256", "--repeat", "3", "--variants", "eager,fused,torch",
               cwd=tmp_path)
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"eager", "fused", "torch"}
    assert all(float(r[1]) > 0 and r[3] == "KiB" for r in rows.values()), done.stdout
    assert "[3/3] torch" in done.stderr


@pytest.mark.slow
def test_bench_default_variants_include_torch_compile(tmp_path):
    done = run("bench", "sigmoid_focal_loss", "--size", "256", "--repeat", "3", cwd=tmp_path)
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[2:]}
    assert list(rows) == ["eager", "compiled", "torch"] and "first call" in rows["compiled"], done.stdout
    assert "compiled in" in done.stderr and "[3/3] torch" in done.stderr


@pytest.mark.slow
def test_bench_counts_the_gradients_in_forward_holds(tmp_path):
    """The peak column is a whole step's: in_forward's gradients, computed in the forward and kept on ctx
    rather than saved for backward, are in it (mse_loss at 256 x 16 float32: the input's 16 KiB gradient;
    the target is data, not differentiated)."""
    done = run("bench", "mse_loss", "--size", "256", "--repeat", "3", "--variants", "compiled_fwd,eager",
               cwd=tmp_path)
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
    assert rows["compiled_fwd"][3] == "KiB" and float(rows["compiled_fwd"][2]) >= 16, done.stdout
    assert "peak memory" in done.stdout.splitlines()[1]


@pytest.mark.slow
def test_bench_compiled_auto_names_its_choice(tmp_path):
    done = run("bench", "log_cosh_loss", "--size", "4096", "--repeat", "3", "--variants", "compiled_auto",
               cwd=tmp_path)
    row = done.stdout.splitlines()[2]
    chosen = row.split("backward=")[1].split(";")[0].strip()
    assert chosen in ("autograd", "symbolic", "in_forward"), row


def test_syntax_error_in_a_file_prints_the_caret_and_exits_1(tmp_path):
    (tmp_path / "bad.loss").write_text("loss bad(x, y):\n    (x - y)^^2\n")
    done = run("compile", "bad.loss", cwd=tmp_path, ok=False)
    assert done.returncode == 1 and done.stdout == ""
    assert "line 2, column" in done.stderr and "    (x - y)^^2" in done.stderr and "^" in done.stderr


# ---- in-process: what the commands compute and print
def test_unreadable_latex_prints_the_caret_and_returns_1(capsys):
    from lossdsl import cli

    assert cli.main(["show", r"\mathcal{L} = \int p(x) dx"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert "cannot read \\int" in lines[0] and lines[-1] == "    " + " " * 14 + "^"


def test_plot_curves_match_torch_and_pick_the_axis_by_kind():
    from lossdsl import plot, stdlib

    c = plot.curve(stdlib.get("huber_loss"), lo=-3, hi=3, points=61, params={"delta": 1.0})
    ref = torch.nn.functional.huber_loss(c.x, torch.zeros_like(c.x), reduction="none")
    torch.testing.assert_close(c.loss, ref)
    torch.testing.assert_close(c.grad, c.x.clamp(-1, 1))
    logit = plot.curve(stdlib.get("hinge_loss"), lo=-2, hi=2, points=5)
    assert logit.over == "logit" and logit.loss.tolist() == [3.0, 2.0, 1.0, 0.0, 0.0]
    with pytest.raises(lossdsl.KindError, match="elementwise"):
        plot.curve(stdlib.get("cross_entropy"))


def test_parameter_and_target_parsing(capsys):
    from lossdsl import cli

    assert cli.main(["bench", "mse_loss", "--variants", "eager,fast"]) == 1
    assert "unknown variant 'fast'" in capsys.readouterr().err

    assert cli.parse_params(["gamma=2", "alpha=0.5", "swap=true"]) == {"gamma": 2, "alpha": 0.5, "swap": True}
    with pytest.raises(lossdsl.LossError, match="NAME=VALUE"):
        cli.parse_params(["gamma"])
    with pytest.raises(lossdsl.UnknownNameError, match="did you mean 'focal_loss'"):
        cli.resolve("focal_los")
    assert cli.resolve("x^2 + y").name == "formula"
    assert cli.resolve(r"\frac{1}{2} x^2").name == "latex_loss"


def test_compile_reads_a_tex_file(tmp_path, capsys):
    from lossdsl import cli

    (tmp_path / "sq.tex").write_text(r"\mathcal{L}_{Sq} = \frac{1}{2}(x - y)^2")
    assert cli.main(["compile", str(tmp_path / "sq.tex")]) == 0
    source = capsys.readouterr().out
    assert "class Sq(" in source and "import torch" in source


def test_check_passes_parameters_to_verify_and_the_stability_report(capsys):
    pytest.importorskip("lossdsl.verify")
    pytest.importorskip("lossdsl.stability")
    from lossdsl import cli

    assert cli.main(["check", r"\gamma (x - y)^2", "-p", "gamma=2", "--trials", "1"]) == 0
    out = capsys.readouterr().out
    assert "verify latex_loss: PASS" in out and "float32" in out and "not measured" not in out


def test_vectors_option_gives_latex_inputs_a_feature_axis(capsys):
    from lossdsl import cli

    tex = r"-\log \frac{\exp(q \cdot k_+ / \tau)}{\sum_{i=0}^{K} \exp(q \cdot k_i / \tau)}"
    assert cli.main(["show", tex, "--vectors", "q,k"]) == 0
    out = capsys.readouterr().out
    assert "inputs:     q[d], k_pos[d], k[i, d]" in out and "logsumexp_i(" in out


def test_params_of_a_formula_become_defaults_of_the_exported_module(tmp_path, capsys):
    from lossdsl import cli

    out = tmp_path / "focal_formula.py"
    argv = ["compile", "-p", "alpha=0.25", "-p", "gamma=2", "-o", str(out), "--", "-alpha*(1-p)^gamma*log(p)"]
    assert cli.main(argv) == 0
    spec = importlib.util.spec_from_file_location("focal_formula", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    p = torch.rand(20, dtype=torch.float64) * 0.9 + 0.05
    torch.testing.assert_close(module.Formula()(p), (-0.25 * (1 - p) ** 2 * p.log()).mean())
    assert cli.main(["compile", "mse_loss", "-p", "eps=1"]) == 1
    assert "declares its own" in capsys.readouterr().err
