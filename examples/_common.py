"""What the examples share: quick mode (fewer steps, used by tests/test_examples.py), the output folder, seeds.

`LOSSDSL_EXAMPLES_QUICK=1` runs each example for a few steps only (the numbers it prints are then not
meaningful, the code path is the same); `LOSSDSL_EXAMPLES_OUT` moves the outputs (default examples/out/).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def quick() -> bool:
    return os.environ.get("LOSSDSL_EXAMPLES_QUICK") == "1"


def steps(full: int, short: int) -> int:
    return short if quick() else full


def out_dir() -> Path:
    out = Path(os.environ.get("LOSSDSL_EXAMPLES_OUT", Path(__file__).parent / "out"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def single_thread() -> None:
    """The examples' models are tiny: one thread beats several, whose start-up and spinning cost more than the
    work (and on a shared machine several threads contend for the cores)."""
    torch.set_num_threads(1)


def seed(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
