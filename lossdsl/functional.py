"""Drop-ins for the losses of `torch.nn.functional`, compiled from `stdlib/torch_nn.loss`.

Each function has torch's signature, defaults and semantics. Its body only translates arguments: it picks
a definition (by target dtype, by an option), reshapes unbatched inputs to a batch of one, and validates what
torch validates in Python; every formula lives in the `.loss` file. Compiled modules are cached: a loss is
lowered once, its class built once, and a module with only scalar parameters is reused across calls.
Any other name (`F.relu`, `F.softmax`, ...) is torch.nn.functional's own, so the import swap is one line.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

import torch

from .api import STDLIB_DIR, Loss, load
from .errors import InputError, ParameterError
from .fused import kernel_bits

SOURCE = STDLIB_DIR / "torch_nn.loss"
Tensor = torch.Tensor
_REDUCTIONS = ("none", "mean", "sum")

__all__ = [
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cosine_embedding_loss", "cross_entropy",
    "ctc_loss", "gaussian_nll_loss", "hinge_embedding_loss", "huber_loss", "kl_div", "l1_loss",
    "margin_ranking_loss", "mse_loss", "multi_margin_loss", "multilabel_margin_loss",
    "multilabel_soft_margin_loss", "nll_loss", "pairwise_distance", "poisson_nll_loss", "smooth_l1_loss",
    "soft_margin_loss", "triplet_margin_loss", "triplet_margin_with_distance_loss",
]


def __getattr__(name: str):
    """The rest of torch.nn.functional, so `import lossdsl.functional as F` replaces only the losses."""
    return getattr(torch.nn.functional, name)


# ---- compiled modules
@functools.cache
def definitions() -> dict[str, Loss]:
    """Every definition of stdlib/torch_nn.loss, lowered once."""
    return load(SOURCE)


@functools.lru_cache(maxsize=512)
def _scalar_module(name: str, reduction: str, params: tuple) -> torch.nn.Module:
    return definitions()[name].compile(reduction=reduction, **dict(params))


def module(name: str, reduction: str, **params) -> torch.nn.Module:
    """The compiled module of a definition; cached unless a parameter is a tensor (a per-call weight)."""
    if any(isinstance(v, Tensor) for v in params.values()):
        return definitions()[name].compile(reduction=reduction, **params)
    return _scalar_module(name, reduction, tuple(sorted(params.items())))


def _run(name: str, reduction: str, *inputs, **params) -> Tensor:
    return module(name, reduction, **{k: v for k, v in params.items() if v is not None})(*inputs)


# ---- argument translation shared by the wrappers
def _reduction(reduction: str, size_average: bool | None = None, reduce: bool | None = None,
               allowed: Sequence[str] = _REDUCTIONS) -> str:
    """torch's legacy size_average/reduce flags, then the check every torch loss makes."""
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        reduction = "none" if not reduce else ("mean" if size_average else "sum")
    if reduction not in allowed:
        raise ParameterError(f"{reduction!r} is not a valid value for reduction; expected one of "
                             + ", ".join(repr(r) for r in allowed))
    return reduction


def _tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _warn_size(input: Tensor, target: Tensor) -> None:
    if target.size() != input.size():
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size "
                      f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", stacklevel=3)


def _same_size(a: Tensor, b: Tensor, message: str) -> None:
    if a.size() != b.size():
        raise InputError(message)


def _fits(a: Tensor, input: Tensor, what: str) -> None:
    """a broadcasts to input's shape without enlarging it: torch writes the loss into input's shape."""
    try:
        fits = torch.broadcast_shapes(a.shape, input.shape) == input.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise InputError(f"{what} of shape {tuple(a.shape)} does not broadcast to the input's shape "
                         f"{tuple(input.shape)}")


def _labels(target: Tensor, *inputs: Tensor) -> Tensor:
    """-1/+1 labels in the inputs' floating dtype: torch's margin losses return the input's dtype, not that of
    a wider target (a float64 target to a float32 input gave float64). -1 and +1 are exact in every dtype."""
    floats = [t.dtype for t in inputs if isinstance(t, Tensor) and t.is_floating_point()]
    if not floats or not isinstance(target, Tensor) or not target.is_floating_point():
        return target
    dtype = functools.reduce(torch.promote_types, floats)
    return target if target.dtype == dtype else target.to(dtype)


def _broadcast(what: str, *tensors: Tensor) -> list[Tensor]:
    """torch.broadcast_tensors, as torch's distance losses broadcast their embeddings ((4, 3) with (1, 3))."""
    try:
        return list(torch.broadcast_tensors(*tensors))
    except RuntimeError:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise InputError(f"{what}: inputs of shapes {shapes} do not broadcast together") from None


def _batched(out: Tensor, unbatched: bool, reduction: str) -> Tensor:
    """Undo the batch of one added for an unbatched input (only visible with reduction='none')."""
    return out.squeeze(0) if unbatched and reduction == "none" else out


# ---- regression
def l1_loss(input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
            reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    """Mean absolute error (torch.nn.functional.l1_loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    _warn_size(input, target)
    if weight is None:
        return _run("l1_loss", reduction, input, target)
    _same_size(weight, input, "Weights and input must have the same size.")
    return _run("l1_loss_weighted", reduction, input, target, weight)


def mse_loss(input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
             reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    """Mean squared error (torch.nn.functional.mse_loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    _warn_size(input, target)
    if weight is None:
        return _run("mse_loss", reduction, input, target)
    _same_size(weight, input, "Weights and input must have the same size.")
    return _run("mse_loss_weighted", reduction, input, target, weight)


def smooth_l1_loss(input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
                   reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """Smooth L1 (torch.nn.functional.smooth_l1_loss); beta = 0 is the L1 loss, as in torch. So is a beta
    below the compute dtype's smallest normal number (float32 for float32/16/bf16 inputs): rounded, it
    divides by (almost) 0 in the square's branch, which only |e| < beta would take, where it differs from
    |e| by less than beta; torch, which keeps beta in double, gives the L1 gradient sign(e) there too."""
    reduction = _reduction(reduction, size_average, reduce)
    _warn_size(input, target)
    if beta < 0:
        raise ParameterError(f"smooth_l1_loss does not support negative values for beta, got {beta}")
    compute = torch.float64 if kernel_bits([input, target]) == 53 else torch.float32
    if beta < torch.finfo(compute).tiny:
        return _run("l1_loss", reduction, input, target)
    return _run("smooth_l1_loss", reduction, input, target, beta=float(beta))


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    """Huber loss (torch.nn.functional.huber_loss); a weight gives torch's plain mean of weighted terms."""
    reduction = _reduction(reduction)
    _warn_size(input, target)
    if delta <= 0:
        raise ParameterError(f"huber_loss does not support non-positive values for delta, got {delta}")
    if weight is None:
        return _run("huber_loss", reduction, input, target, delta=float(delta))
    _same_size(weight, input, "Weights and input must have the same size.")
    return _run("huber_loss_weighted", reduction, input, target, weight, delta=float(delta))


def poisson_nll_loss(input: Tensor, target: Tensor, log_input: bool = True, full: bool = False,
                     size_average: bool | None = None, eps: float = 1e-8, reduce: bool | None = None,
                     reduction: str = "mean") -> Tensor:
    """Poisson negative log likelihood (torch.nn.functional.poisson_nll_loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    name = "poisson_nll_loss" + ("" if log_input else "_rate") + ("_full" if full else "")
    return _run(name, reduction, input, target, eps=None if log_input else float(eps))


def gaussian_nll_loss(input: Tensor, target: Tensor, var: Tensor | float, full: bool = False, eps: float = 1e-6,
                      reduction: str = "mean") -> Tensor:
    """Gaussian negative log likelihood (torch.nn.functional.gaussian_nll_loss), with torch's var shapes."""
    if isinstance(var, (int, float)):
        if var < 0:
            raise InputError("var has negative entry/entries")
        var = var * torch.ones_like(input)
    elif bool((var < 0).any()):
        raise InputError("var has negative entry/entries")
    reduction = _reduction(reduction)
    return _run("gaussian_nll_loss", reduction, input, target, _var_shape(var, input), full=bool(full),
                eps=float(eps))


def _var_shape(var: Tensor, input: Tensor) -> Tensor:
    """One variance per element, one per row (missing last dim), or one broadcast dim of size 1."""
    if var.size() == input.size():
        return var
    if input.size()[:-1] == var.size():
        return var.unsqueeze(-1)
    if input.dim() == var.dim() and sum(v for i, v in zip(input.size(), var.size(), strict=True) if i != v) == 1:
        return var
    raise InputError(f"var is of incorrect size: {tuple(var.shape)} for input {tuple(input.shape)}; expected "
                     "the input's shape, its shape without the last dim, or one dim of size 1")


# ---- classification
def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         size_average: bool | None = None, reduce: bool | None = None,
                         reduction: str = "mean") -> Tensor:
    """Binary cross entropy on probabilities (torch.nn.functional.binary_cross_entropy)."""
    reduction = _reduction(reduction, size_average, reduce)
    _same_size(target, input, f"Using a target size ({target.size()}) that is different to the input size "
                              f"({input.size()}) is deprecated. Please ensure they have the same size.")
    if weight is not None:
        _fits(weight, input, "binary_cross_entropy: weight")
        weight = weight.expand(torch.broadcast_shapes(target.size(), weight.size()))
    return _run("binary_cross_entropy", reduction, input, target, weight=weight)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                     size_average: bool | None = None, reduce: bool | None = None,
                                     reduction: str = "mean", pos_weight: Tensor | None = None) -> Tensor:
    """Binary cross entropy on logits (torch.nn.functional.binary_cross_entropy_with_logits)."""
    reduction = _reduction(reduction, size_average, reduce)
    _same_size(target, input, f"Target size ({target.size()}) must be the same as input size ({input.size()})")
    return _run("binary_cross_entropy_with_logits", reduction, input, target, weight=weight,
                pos_weight=pos_weight)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: bool | None = None,
                  ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross entropy of logits (torch.nn.functional.cross_entropy): class indices or class probabilities."""
    reduction = _reduction(reduction, size_average, reduce)
    _tensor(input, "input"), _tensor(target, "target")
    if target.is_floating_point():
        _same_size(target, input, f"cross_entropy: probability targets must have the input's shape "
                                  f"{tuple(input.shape)}, got {tuple(target.shape)}")
        return _run("cross_entropy_probs", reduction, _classes_last(input, "cross_entropy"), _classes_last(target),
                    weight=weight, label_smoothing=float(label_smoothing))
    target = _one_index(input, target)
    if label_smoothing == 0:
        return _run("cross_entropy", reduction, _classes_last(input, "cross_entropy"), target, weight=weight,
                    ignore_index=int(ignore_index))
    return _run("cross_entropy_smoothed", reduction, _classes_last(input, "cross_entropy"), target, weight=weight,
                ignore_index=int(ignore_index), label_smoothing=float(label_smoothing))


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: bool | None = None,
             ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Negative log likelihood of class indices (torch.nn.functional.nll_loss), any number of trailing dims."""
    reduction = _reduction(reduction, size_average, reduce)
    return _run("nll_loss", reduction, _classes_last(input, "nll_loss"), _one_index(input, target), weight=weight,
                ignore_index=int(ignore_index))


def _one_index(input: Tensor, target: Tensor) -> Tensor:
    """An unbatched (C,) input's class index given as a (1,) tensor, which torch takes as the 0-d index."""
    return target.reshape(()) if input.dim() == 1 and target.dim() == 1 and target.numel() == 1 else target


def _classes_last(t: Tensor, name: str = "") -> Tensor:
    """torch's (N, C, d1, ...) as (N, d1, ..., C), the layout of the definitions; (C,) stays as it is."""
    if t.dim() == 0:
        raise InputError(f"{name}: input must have a class dimension, got a 0-d tensor")
    return t.movedim(1, -1) if t.dim() > 1 else t


def kl_div(input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
           reduction: str = "mean", log_target: bool = False) -> Tensor:
    """KL divergence (torch.nn.functional.kl_div): input holds log-probabilities; 'batchmean' as in torch."""
    reduction = _reduction(reduction, size_average, reduce, allowed=(*_REDUCTIONS, "batchmean"))
    if reduction == "mean" and size_average is None and reduce is None:
        warnings.warn("reduction: 'mean' divides the total loss by both the batch size and the support size."
                      "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
                      "'mean' will be changed to behave the same as 'batchmean' in the next major release.",
                      stacklevel=2)
    if reduction == "batchmean" and input.dim() == 0:
        reduction = "sum"
    return _run("kl_div_log_target" if log_target else "kl_div", reduction, input, target)


def soft_margin_loss(input: Tensor, target: Tensor, size_average: bool | None = None, reduce: bool | None = None,
                     reduction: str = "mean") -> Tensor:
    """Two-class logistic loss (torch.nn.functional.soft_margin_loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    _fits(target, input, "soft_margin_loss: target")
    return _run("soft_margin_loss", reduction, input, _labels(target, input))


def multilabel_soft_margin_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                size_average: bool | None = None, reduce: bool | None = None,
                                reduction: str = "mean") -> Tensor:
    """One-versus-all logistic loss (torch.nn.functional.multilabel_soft_margin_loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    _same_size(target, input, f"multilabel_soft_margin_loss: target size {tuple(target.shape)} must match "
                              f"input size {tuple(input.shape)}")
    if weight is not None and weight.dim() > 1:  # per sample or per element: an input of the weighted form
        _fits(weight, input, "multilabel_soft_margin_loss: weight")
        return _run("multilabel_soft_margin_loss_weighted", reduction, input, target, weight.expand(input.shape))
    return _run("multilabel_soft_margin_loss", reduction, input, target, weight=weight)


def multilabel_margin_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
                           reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Multi-label hinge loss (torch.nn.functional.multilabel_margin_loss); target rows end at the first -1."""
    reduction = _reduction(reduction, size_average, reduce)
    if input.dim() > 2 or target.size() != input.size():
        raise InputError(f"multilabel_margin_loss: expected input of 1 or 2 dims and a target of the same shape, "
                         f"got input {tuple(input.shape)} and target {tuple(target.shape)}")
    if input.dim() == 0:  # one class, as torch reads it
        return _run("multilabel_margin_loss", reduction, input.reshape(1), target.reshape(1)).reshape(())
    return _run("multilabel_margin_loss", reduction, input, target)


def multi_margin_loss(input: Tensor, target: Tensor, p: int = 1, margin: float = 1.0, weight: Tensor | None = None,
                      size_average: bool | None = None, reduce: bool | None = None,
                      reduction: str = "mean") -> Tensor:
    """Multi-class hinge loss (torch.nn.functional.multi_margin_loss), p = 1 or 2."""
    reduction = _reduction(reduction, size_average, reduce)
    if p not in (1, 2):
        raise ParameterError(f"only p == 1 and p == 2 supported, got p = {p}")
    if weight is not None and weight.dim() != 1:
        raise InputError(f"multi_margin_loss: weight must be one-dimensional, got shape {tuple(weight.shape)}")
    if input.dim() > 2 or target.dim() > 1:
        raise InputError(f"multi_margin_loss: expected input of 1 or 2 dims and target of 0 or 1, got input "
                         f"{tuple(input.shape)} and target {tuple(target.shape)}")
    unbatched = input.dim() < 2 and target.dim() == 0  # a (C,) input with a (1,) target: torch's output is (1,)
    if input.dim() < 2:
        input, target = input.reshape(1, -1), target.reshape(1)
    out = _run("multi_margin_loss", reduction, input, target, p=int(p), margin=float(margin), weight=weight)
    return _batched(out, unbatched, reduction)


# ---- embeddings and ranking
def hinge_embedding_loss(input: Tensor, target: Tensor, margin: float = 1.0, size_average: bool | None = None,
                         reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Hinge embedding loss (torch.nn.functional.hinge_embedding_loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    return _run("hinge_embedding_loss", reduction, input, _labels(target, input), margin=float(margin))


def margin_ranking_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
                        size_average: bool | None = None, reduce: bool | None = None,
                        reduction: str = "mean") -> Tensor:
    """Margin ranking loss (torch.nn.functional.margin_ranking_loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    if input1.dim() != input2.dim() or input1.dim() != target.dim():
        raise InputError(f"margin_ranking_loss : All input tensors should have same dimension but got sizes: "
                         f"input1: {input1.size()}, input2: {input2.size()}, target: {target.size()} ")
    return _run("margin_ranking_loss", reduction, input1, input2, target, margin=float(margin))


def cosine_embedding_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
                          size_average: bool | None = None, reduce: bool | None = None,
                          reduction: str = "mean") -> Tensor:
    """Cosine embedding loss (torch.nn.functional.cosine_embedding_loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    if target.dim() not in (0, 1):
        raise InputError("0D or 1D target tensor expected, multi-target not supported")
    need = target.dim() + 1
    if input1.dim() != need or input2.dim() != need:
        raise InputError(f"{target.dim()}D target tensor expects {need}D input tensors, but found inputs with "
                         f"sizes {list(input1.shape)} and {list(input2.shape)}.")
    unbatched = target.dim() == 0
    if unbatched:
        input1, input2, target = input1.unsqueeze(0), input2.unsqueeze(0), target.unsqueeze(0)
    input1, input2 = _broadcast("cosine_embedding_loss", input1, input2)
    out = _run("cosine_embedding_loss", reduction, input1, input2, _labels(target, input1, input2),
               margin=float(margin))
    return _batched(out, unbatched, reduction)


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> Tensor:
    """The p-norm of x1 - x2 + eps over the last dim (torch.pairwise_distance); the triplet losses' default.
    p = inf is the max-norm and p = 0 the count of nonzero entries, each a definition of its own: the p-norm's
    sum(|d|^p)^(1/p) is 1 at p = inf and divides by zero at p = 0."""
    name, params = _distance(p, eps)
    out = _run(name, "none", *_broadcast("pairwise_distance", x1, x2), **params)
    return out.unsqueeze(-1) if keepdim else out


def _distance(p: float, eps: float) -> tuple[str, dict]:
    """The stdlib definition of torch's p-norm distance for this p, with its parameters."""
    p = float(p)
    if p == math.inf:
        return "pairwise_distance_max", {"eps": float(eps)}
    if p == 0:
        return "pairwise_distance_count", {"eps": float(eps)}
    return "pairwise_distance", {"p": p, "eps": float(eps)}


def _same_rank(anchor: Tensor, positive: Tensor, negative: Tensor) -> None:
    a, p, n = anchor.dim(), positive.dim(), negative.dim()
    if not a == p == n:
        raise InputError("The anchor, positive, and negative tensors are expected to have the same number of "
                         f"dimensions, but got: anchor {a}D, positive {p}D, and negative {n}D inputs")


def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0, p: float = 2,
                        eps: float = 1e-6, swap: bool = False, size_average: bool | None = None,
                        reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Triplet margin loss with the p-norm distance (torch.nn.functional.triplet_margin_loss)."""
    reduction = _reduction(reduction, size_average, reduce)
    if margin <= 0:
        raise ParameterError(f"margin must be greater than 0, got {margin}")
    _same_rank(anchor, positive, negative)
    if anchor.dim() == 0:
        raise InputError("triplet_margin_loss: expected inputs of at least 1 dim (the embedding), got 0-d ones")
    anchor, positive, negative = _broadcast("triplet_margin_loss", anchor, positive, negative)
    lead = anchor.shape[:-1]  # (N,) batched, () unbatched, more for torch's (B, N, D): one batch of rows here
    anchor, positive, negative = (t.reshape(-1, t.shape[-1]) for t in (anchor, positive, negative))
    name, params = _distance(p, eps)
    if name == "pairwise_distance":
        out = _run("triplet_margin_loss_swap" if swap else "triplet_margin_loss", reduction, anchor, positive,
                   negative, margin=float(margin), **params)
    else:  # the max-norm or the count: the triplet loss with that distance as its function
        out = _run("triplet_margin_with_distance_loss_swap" if swap else "triplet_margin_with_distance_loss",
                   reduction, anchor, positive, negative, module(name, "none", **params), margin=float(margin))
    return out.reshape(lead) if reduction == "none" else out


def triplet_margin_with_distance_loss(anchor: Tensor, positive: Tensor, negative: Tensor, *,
                                      distance_function: Callable[[Tensor, Tensor], Tensor] | None = None,
                                      margin: float = 1.0, swap: bool = False, reduction: str = "mean") -> Tensor:
    """Triplet loss with any distance (torch.nn.functional.triplet_margin_with_distance_loss)."""
    reduction = _reduction(reduction)
    if margin <= 0:
        raise ParameterError(f"margin must be greater than 0, got {margin}")
    _same_rank(anchor, positive, negative)
    anchor, positive, negative = _broadcast("triplet_margin_with_distance_loss", anchor, positive, negative)
    given = pairwise_distance if distance_function is None else distance_function
    kept: list[bool] = []

    def distance(a: Tensor, b: Tensor) -> Tensor:
        """The given distance; one that keeps the embedding dim (keepdim=True) gives torch's (N, 1) output."""
        d = given(a, b)
        if d.dim() == a.dim() and d.shape[-1] == 1:
            kept.append(True)
            return d.squeeze(-1)
        return d

    name = "triplet_margin_with_distance_loss" + ("_swap" if swap else "")
    out = _run(name, reduction, anchor, positive, negative, distance, margin=float(margin))
    return out.unsqueeze(-1) if kept and reduction == "none" else out


# ---- sequences
def ctc_loss(log_probs: Tensor, targets: Tensor, input_lengths: Tensor | Sequence[int],
             target_lengths: Tensor | Sequence[int], blank: int = 0, reduction: str = "mean",
             zero_infinity: bool = False) -> Tensor:
    """Connectionist temporal classification (torch.nn.functional.ctc_loss); the DP is the builtin ctc_nll.

    'mean' divides each sample's loss by its target length before the batch mean, as torch does; that is the
    separate definition ctc_loss_mean.
    """
    reduction = _reduction(reduction)
    unbatched = log_probs.dim() == 2
    if log_probs.dim() not in (2, 3):
        raise InputError(f"ctc_loss: log_probs must be (T, N, C) or unbatched (T, C), got {tuple(log_probs.shape)}")
    if unbatched:
        log_probs = log_probs.unsqueeze(1)
    input_lengths = _lengths(input_lengths, "input_lengths", log_probs.shape[0])
    target_lengths = _lengths(target_lengths, "target_lengths", None)
    targets = _padded_targets(targets.reshape(1, -1) if unbatched else targets, target_lengths)
    _check_targets(targets, target_lengths, log_probs.shape[2], int(blank))
    name = "ctc_loss_mean" if reduction == "mean" else "ctc_loss"
    out = _run(name, reduction, log_probs, targets, input_lengths, target_lengths, blank=int(blank),
               zero_infinity=bool(zero_infinity))
    return _batched(out, unbatched, reduction)


def _lengths(lengths, name: str, most: int | None) -> Tensor:
    lengths = torch.as_tensor(lengths).reshape(-1)
    if lengths.is_floating_point():
        raise InputError(f"ctc_loss: {name} must hold integers, got {lengths.dtype}")
    if bool((lengths < 0).any()):
        raise InputError(f"ctc_loss: {name} must be non-negative, got {lengths.tolist()}")
    if most is not None and bool((lengths > most).any()):
        raise InputError(f"ctc_loss: expected {name} to have value at most {most} (the number of frames), "
                         f"but got value {int(lengths.max())}")
    return lengths.long()


def _padded_targets(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """(N, S) targets as they are; torch's concatenated 1-D form is cut into rows padded with 0."""
    if targets.dim() == 2:
        longest = int(target_lengths.max()) if target_lengths.numel() else 0
        if targets.shape[1] < longest:
            raise InputError(f"ctc_loss: targets have {targets.shape[1]} columns but a target length is {longest}")
        return targets
    if targets.dim() != 1 or targets.numel() != int(target_lengths.sum()):
        raise InputError(f"ctc_loss: concatenated targets must be 1-D with sum(target_lengths) = "
                         f"{int(target_lengths.sum())} entries, got shape {tuple(targets.shape)}")
    if not target_lengths.numel():
        return targets.reshape(0, 0)
    rows = torch.split(targets, target_lengths.tolist())
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)


def _check_targets(targets: Tensor, target_lengths: Tensor, classes: int, blank: int) -> None:
    if not 0 <= blank < classes:
        raise ParameterError(f"ctc_loss: blank = {blank} is not a class of log_probs (C = {classes})")
    inside = torch.arange(targets.shape[1])[None, :] < target_lengths[:, None]
    bad = inside & ((targets < 0) | (targets >= classes))
    if bool(bad.any()):
        raise InputError(f"ctc_loss: targets hold class {int(targets[bad][0])} outside [0, {classes})")
    blanks = (inside & (targets == blank)).nonzero()
    if len(blanks):  # torch documents it invalid, then computes something; a loss of another alignment
        n, s = blanks[0].tolist()
        raise InputError(f"ctc_loss: target {n} holds the blank ({blank}) at position {s}; targets may not "
                         "contain the blank")
