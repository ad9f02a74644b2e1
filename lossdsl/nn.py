"""Drop-ins for the loss modules of `torch.nn`: `import lossdsl.nn as nn` and keep `nn.CrossEntropyLoss(...)`.

Every other name (`nn.Linear`, `nn.Module`, ...) is torch.nn's own, so the swap is one line for a whole script.

Each class is generated from one row of `SPECS`: torch's constructor (argument names, order, defaults) and the
`lossdsl.functional` function that forward() calls with the stored options. Like torch's `_WeightedLoss`,
tensor options (weight, pos_weight) are buffers, so `.to(device)` and `state_dict()` carry them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import functional as F


@dataclass(frozen=True)
class Spec:
    """One torch loss module: its functional, constructor options (name, default) and forward arguments."""

    functional: Callable[..., torch.Tensor]
    options: tuple[tuple[str, object], ...]
    forward: tuple[str, ...] = ("input", "target")
    keyword_only: bool = False  # torch declares the options after `*`


LEGACY = (("size_average", None), ("reduce", None), ("reduction", "mean"))
BUFFERS = ("weight", "pos_weight")

SPECS: dict[str, Spec] = {
    "L1Loss": Spec(F.l1_loss, LEGACY),
    "MSELoss": Spec(F.mse_loss, LEGACY),
    "SmoothL1Loss": Spec(F.smooth_l1_loss, (*LEGACY, ("beta", 1.0))),
    "HuberLoss": Spec(F.huber_loss, (("reduction", "mean"), ("delta", 1.0))),
    "BCELoss": Spec(F.binary_cross_entropy, (("weight", None), *LEGACY)),
    "BCEWithLogitsLoss": Spec(F.binary_cross_entropy_with_logits, (("weight", None), *LEGACY,
                                                                   ("pos_weight", None))),
    "CrossEntropyLoss": Spec(F.cross_entropy, (("weight", None), ("size_average", None), ("ignore_index", -100),
                                               ("reduce", None), ("reduction", "mean"), ("label_smoothing", 0.0))),
    "NLLLoss": Spec(F.nll_loss, (("weight", None), ("size_average", None), ("ignore_index", -100),
                                 ("reduce", None), ("reduction", "mean"))),
    "KLDivLoss": Spec(F.kl_div, (*LEGACY, ("log_target", False))),
    "PoissonNLLLoss": Spec(F.poisson_nll_loss, (("log_input", True), ("full", False), ("size_average", None),
                                                ("eps", 1e-8), ("reduce", None), ("reduction", "mean")),
                           forward=("log_input", "target")),
    "GaussianNLLLoss": Spec(F.gaussian_nll_loss, (("full", False), ("eps", 1e-6), ("reduction", "mean")),
                            forward=("input", "target", "var"), keyword_only=True),
    "SoftMarginLoss": Spec(F.soft_margin_loss, LEGACY),
    "MultiLabelSoftMarginLoss": Spec(F.multilabel_soft_margin_loss, (("weight", None), *LEGACY)),
    "MultiLabelMarginLoss": Spec(F.multilabel_margin_loss, LEGACY),
    "MultiMarginLoss": Spec(F.multi_margin_loss, (("p", 1), ("margin", 1.0), ("weight", None), *LEGACY)),
    "HingeEmbeddingLoss": Spec(F.hinge_embedding_loss, (("margin", 1.0), *LEGACY)),
    "MarginRankingLoss": Spec(F.margin_ranking_loss, (("margin", 0.0), *LEGACY),
                              forward=("input1", "input2", "target")),
    "CosineEmbeddingLoss": Spec(F.cosine_embedding_loss, (("margin", 0.0), *LEGACY),
                                forward=("input1", "input2", "target")),
    "TripletMarginLoss": Spec(F.triplet_margin_loss, (("margin", 1.0), ("p", 2.0), ("eps", 1e-6), ("swap", False),
                                                      *LEGACY), forward=("anchor", "positive", "negative")),
    "TripletMarginWithDistanceLoss": Spec(F.triplet_margin_with_distance_loss,
                                          (("distance_function", None), ("margin", 1.0), ("swap", False),
                                           ("reduction", "mean")),
                                          forward=("anchor", "positive", "negative"), keyword_only=True),
    "CTCLoss": Spec(F.ctc_loss, (("blank", 0), ("reduction", "mean"), ("zero_infinity", False)),
                    forward=("log_probs", "targets", "input_lengths", "target_lengths")),
}


def _signature(spec: Spec) -> inspect.Signature:
    kind = inspect.Parameter.KEYWORD_ONLY if spec.keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(name, kind, default=default) for name, default in spec.options]
    return inspect.Signature(params)


def _legacy_reduction(options: dict) -> None:
    """torch's modules fold size_average/reduce into `reduction` once, at construction."""
    size_average, reduce = options.pop("size_average", None), options.pop("reduce", None)
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        options["reduction"] = "none" if not reduce else ("mean" if size_average else "sum")


def _make(name: str, spec: Spec) -> type[torch.nn.Module]:
    signature = _signature(spec)

    def __init__(self, *args, **kwargs) -> None:  # noqa: N807 - a generated method
        torch.nn.Module.__init__(self)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        options = dict(bound.arguments)
        del options["self"]
        _legacy_reduction(options)
        for key, value in options.items():
            if key in BUFFERS:
                self.register_buffer(key, value)
            else:
                setattr(self, key, value)
        self._options = tuple(options)

    inputs = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in spec.forward])

    def forward(self, *tensors, **by_name) -> torch.Tensor:
        """torch's names, positionally or by keyword (criterion(input=x, target=y) works on torch's too)."""
        try:
            bound = inputs.bind(*tensors, **by_name)
        except TypeError as err:
            raise TypeError(f"{name}.forward({', '.join(spec.forward)}): {err}") from None
        return spec.functional(*bound.args, **{key: getattr(self, key) for key in self._options})

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={getattr(self, key)!r}" for key in self._options if key not in BUFFERS)

    __init__.__signature__ = signature
    doc = f"Drop-in for torch.nn.{name}: forward({', '.join(spec.forward)}) calls {spec.functional.__qualname__}."
    return type(name, (torch.nn.Module,), {"__init__": __init__, "forward": forward, "extra_repr": extra_repr,
                                           "__doc__": doc, "__module__": __name__})


globals().update({name: _make(name, spec) for name, spec in SPECS.items()})
__all__ = sorted(SPECS)


def __getattr__(name: str):
    """The rest of torch.nn (layers, containers, init, ...), so `import lossdsl.nn as nn` replaces only losses."""
    return getattr(torch.nn, name)
