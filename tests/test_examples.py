"""Every example runs (quick mode: a few steps, outputs in a temporary folder) and prints its results.

The full runs, with meaningful numbers, are `bash scripts/examples.sh`; here we check that each example's
code path works and that what it computes is well-formed, in-process (no extra interpreter start-up).
"""

from __future__ import annotations

import runpy
import warnings
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).parents[1] / "examples"
NAMES = ["imbalanced_classification", "segmentation_shapes", "contrastive_pretraining", "paper_to_code"]

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


@pytest.fixture
def example(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSDSL_EXAMPLES_QUICK", "1")
    monkeypatch.setenv("LOSSDSL_EXAMPLES_OUT", str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def run(name: str):
        main = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")["main"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a 3-step run leaves the probe's solver unconverged
            return main()

    threads = torch.get_num_threads()
    yield run
    torch.set_num_threads(threads)  # the examples run single-threaded; the rest of the suite should not


def test_the_script_runs_every_example():
    script = (EXAMPLES.parent / "scripts" / "examples.sh").read_text()
    assert sorted(NAMES) == sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))
    assert all(name in script for name in NAMES) and "scripts/setup.sh" in script


def test_imbalanced_classification(example, capsys):
    result = example("imbalanced_classification")
    assert set(result) == {"cross-entropy", "focal (alpha=0.75, gamma=2)"}
    assert all(0 <= v <= 1 for pair in result.values() for v in pair)
    assert "minority recall" in capsys.readouterr().out


def test_segmentation_shapes(example, capsys):
    result = example("segmentation_shapes")
    assert len(result) == 3 and all(0 <= v <= 1 for v in result.values())
    assert "test IoU" in capsys.readouterr().out


def test_contrastive_pretraining(example, capsys):
    result = example("contrastive_pretraining")
    assert set(result) == {"untrained encoder", "InfoNCE pre-trained"}
    assert all(0.05 < v <= 1 for v in result.values())
    assert "InfoNCE" in capsys.readouterr().out


def test_paper_to_code(example, tmp_path, capsys):
    result = example("paper_to_code")
    assert result["gap"] < 1e-9 and result["export_gap"] < 1e-9 and result["verified"] == 1.0
    assert (tmp_path / "wing_loss.py").read_text().startswith(("import", "\"\"\"", "#"))
    assert (tmp_path / "wing_vs_l1_huber.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "loss wing(y_hat, y; w = 10.0, epsilon = 2.0):" in out
    assert r"\mathcal{L}_{\text{wing}} &= \begin{cases} w \log\left(1 + \frac{\left|\hat{y} - y\right|}" in out
