"""in_forward's compiled function, called without Dynamo on the way: make_fx's graph compiled by Inductor.

Why: the kernels of a loss like nll_loss take less time than the Python between the call and them. Through
torch.compile a call passes Dynamo's frame hook, its guards and AOTAutograd's runtime wrappers; the same
Inductor kernel called as the callable `torch._inductor.compile` returns skips all three (nll_loss's loss
and gradient, one CPU thread: 27 -> 9 us a call at 4 x 1024, 1.24 -> 1.11 ms at 4096 x 1024, where the
16 MB gradient evicts the wrappers' code and data from the cache between calls).

What it gives up is what Dynamo does per call, so it is taken only where that can be done here instead:
- guards: each entry is keyed by everything the trace read (the inputs' and buffers' shapes, strides,
  dtypes and devices, the module's reduction, validate flag and int/bool parameters, the loss it is
  retargeted to, and the gradients wanted); a call that matches no entry compiles one;
- dynamic shapes: entries are made for at most `limit` distinct input shapes (2 by default: the batches'
  and the last one's, each with and without gradients, in training and in evaluation); a call with a further
  shape goes to the torch.compile'd function instead, whose dynamic shapes take over;
- data-dependent control flow: the trace runs on fake tensors, so a branch on a tensor's value, or a
  tensor that is neither an input nor a buffer, fails the trace (the module then always uses the
  fallback) rather than being written into the graph as a constant.
The module's buffers are graph inputs, so an in-place change to a weight is read by the next call. Modules
with learnable parameters (lazily shaped ones among them) take the fallback.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
from torch.fx.experimental.proxy_tensor import make_fx


class DirectRun:
    """Calls `fn(module, want, *inputs)`, which returns (loss, gradients), through Inductor callables keyed
    by what the trace read, or `fallback` (the torch.compile'd fn) where no entry can be made."""

    def __init__(self, fn: Callable, fallback: Callable, options: dict, limit: int = 2) -> None:
        self.fn, self.fallback, self.options, self.limit = fn, fallback, options, limit
        self.table: dict[tuple, tuple[Callable, bool, tuple]] = {}  # key -> (kernel, flagged, input shapes)
        self.broken = False  # a trace failed: this module's graph is not traceable without Dynamo

    def __call__(self, module: torch.nn.Module, want: tuple[str, ...], *inputs):
        buffers = {name: b for name, b in module._buffers.items() if b is not None}
        key = None if self.broken else _key(module, want, inputs, buffers)
        entry = self.table.get(key) if key is not None else None
        if entry is None:
            if key is None or not self._room(key[0], tuple(t.shape for t in inputs)):
                return self.fallback(module, want, *inputs)
            entry = self._compile(module, want, inputs, buffers)
            if entry is None:
                return self.fallback(module, want, *inputs)
            self.table[key] = entry
        run, flagged, _ = entry
        return _unflattened(run(*inputs, *buffers.values()), flagged)

    def _room(self, loss_key: int, shapes: tuple) -> bool:
        """Whether an entry for these input shapes may be made. Entries of another loss are dropped first:
        compiled mode's Specializer retargets the module to a loss with new parameter values written in,
        after which the old entries are never hit again."""
        self.table = {k: v for k, v in self.table.items() if k[0] == loss_key}
        seen = {entry[2] for entry in self.table.values()}
        return shapes in seen or len(seen) < self.limit

    def _compile(self, module: torch.nn.Module, want: tuple[str, ...], inputs: tuple,
                 buffers: dict[str, torch.Tensor]) -> tuple[Callable, bool, tuple] | None:
        """Traces and compiles; None (and the fallback from now on) when the trace fails. The entry's bool
        says whether the loss comes with a range checks' flag; the shapes are the inputs'."""
        names, n = list(buffers), len(inputs)
        flagged: list[bool] = []

        def flat(*tensors: torch.Tensor) -> tuple:
            with _swapped(module, dict(zip(names, tensors[n:], strict=True))):
                out, grads = self.fn(module, want, *tensors[:n])
            flagged.append(isinstance(out, tuple))
            return (*(out if flagged[-1] else (out,)), *grads)

        example = [t.detach() for t in (*inputs, *buffers.values())]
        try:
            with _compiling(), torch.autocast(inputs[0].device.type, enabled=False):
                graph = make_fx(flat, tracing_mode="fake")(*example)
        except Exception:  # any failure to trace means: let Dynamo handle this module
            self.broken = True
            return None
        try:
            run = torch._inductor.compile(graph, example, options=self.options)
        except Exception as err:  # the same graph may still compile through Dynamo; said, not silent
            warnings.warn(f"lossdsl: in_forward's direct path could not compile ({type(err).__name__}: {err}); "
                          "this module runs through torch.compile", RuntimeWarning, stacklevel=2)
            self.broken = True
            return None
        return run, flagged[-1], tuple(t.shape for t in inputs)


def _unflattened(outputs: list, flagged: bool) -> tuple:
    """fn's (loss, gradients), the loss being (value, flag) where flagged. By hand: torch's pytree
    unflatten took 11 us of a 78 us step (nll_loss, 4 x 1024)."""
    if flagged:
        return (outputs[0], outputs[1]), tuple(outputs[2:])
    return outputs[0], tuple(outputs[1:])


def _key(module: torch.nn.Module, want: tuple[str, ...], inputs: tuple,
         buffers: dict[str, torch.Tensor]) -> tuple | None:
    """Everything the traced graph depends on besides the tensors' values; None for a call the direct path
    does not take (a non-tensor input, learnable parameters). Not autocast's state: the generated forward
    and backward turn it off, so the graph is the same either way (and is traced with it off)."""
    if module._lossdsl_learnable or not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        return None
    return (module._lossdsl_key, want, module.reduction, module.validate, tuple(buffers),
            *[getattr(module, py) for _, py in module._lossdsl_fixed],
            *[(t.shape, t.stride(), t.dtype, t.device) for t in (*inputs, *buffers.values())])


@contextlib.contextmanager
def _swapped(module: torch.nn.Module, buffers: dict[str, torch.Tensor]) -> Iterator[None]:
    """The module reading the traced graph's buffer inputs instead of its own buffers."""
    saved = {name: module._buffers[name] for name in buffers}
    module._buffers.update(buffers)
    try:
        yield
    finally:
        module._buffers.update(saved)


@contextlib.contextmanager
def _compiling() -> Iterator[None]:
    """torch.compiler.is_compiling() true while make_fx traces, as during torch.export's non-strict trace:
    the generated code then takes the paths it takes under torch.compile (range checks as an output flag,
    no host reads of parameters)."""
    old = torch.compiler._is_compiling_flag
    torch.compiler._is_compiling_flag = True
    try:
        yield
    finally:
        torch.compiler._is_compiling_flag = old
