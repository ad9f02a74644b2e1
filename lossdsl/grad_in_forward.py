"""compiled mode's backward="in_forward": the forward kernel writes the loss's gradient as it computes the loss.

Why: a scalar loss's gradient with respect to an input is (its gradient for grad_out = 1) x grad_out, and a
training step calls backward() right after the loss. Computed in the forward, by the one compiled kernel
that reads the inputs for the loss anyway, the gradient costs no second read of the inputs and shares the
loss's own subterms (log-cosh's exp(-2|e|) is both its value and its tanh); the backward only scales it by
grad_out, and returns it as it is when grad_out is 1 on the CPU (`loss.backward()`). Liger-Kernel's fused
linear cross-entropy computes its gradient in the forward for the same reason.

What it costs: with grad mode on and an input requiring grad, the forward also writes the gradients, which
then live until the backward (they would be allocated there anyway; a loss is the last op of a step); under
torch.no_grad() or with no input requiring grad it computes the loss alone. The first backward takes the
gradients over (no copy, nothing aliased later); a second one (retain_graph=True) and a backward that
builds a graph (create_graph=True, double backward) run fused mode's symbolic backward from the saved
inputs instead.

Applies to losses with a symbolic gradient and a reduced output (reduction "mean", "sum", "batchmean" or a
weighted mean); compiled.build falls back to backward="symbolic" otherwise and says so.
"""

from __future__ import annotations

import torch

from . import fused, inductor_call, ir
from .gradient import effective_reduction


def applies(loss_ir: ir.LossIR, reduction: str | None) -> bool:
    """Whether the module's output is reduced to a scalar, whose backward seed is one number. (With
    reduction="none" a loss can still be a scalar, when its body sums everything; left out, conservatively.)"""
    return effective_reduction(loss_ir, reduction) != "none"


def install(module: torch.nn.Module, dynamic: bool | None) -> None:
    """Makes a fused module compute its gradients in the forward, through a torch.compile'd function of its
    own: its own code object, since torch.compile keeps at most recompile_limit (8) graphs per code object
    and each module instance would add its own (see fused._own_code). Inductor's reorder_for_locality
    is off for it: that pass moves each node next to its first use, which put the gradients (used by
    the graph's output only) after the loss and undid the order _loss_and_grads writes them in. Unless
    shapes are dynamic, calls go to Inductor's kernels without Dynamo on the way (lossdsl.inductor_call)."""
    name = f"in_forward_{type(module).__name__}_{id(module):x}"
    options = {"reorder_for_locality": False}
    compiled = torch.compile(fused._own_code(_loss_and_grads, name), dynamic=dynamic, options=options)

    def traced(module: torch.nn.Module, want: tuple[str, ...], *inputs):
        """Dynamo traces the lookup of the backward's class, not the SymPy work of building it."""
        if want:
            fused.prepare_vjp(module, want, inputs)
        return compiled(module, want, *inputs)

    run = traced
    if not dynamic and hasattr(torch.compiler, "_is_compiling_flag"):
        run = inductor_call.DirectRun(_loss_and_grads, traced, options, limit=2 if dynamic is None else 8)
    module._lossdsl_run = run
    module._lossdsl_function = _InForward


def _loss_and_grads(module: torch.nn.Module, want: tuple[str, ...], *inputs: torch.Tensor):
    """The loss and, for each name in `want`, its gradient for grad_out = 1, as one graph. The gradients come
    first: Inductor's CPU scheduler fuses a pointwise node into a later reduction over the same elements
    (one loop, each input read once), not a reduction into a later pointwise node (two loops: MSE at 4M
    float32 read its inputs twice). The loss is (value, flag) while compiled (codegen._raise_late)."""
    grads = ()
    if want:
        device = next(a.device for a in inputs if isinstance(a, torch.Tensor))
        grads = fused.vjp(module, want, inputs, torch.ones((), device=device), fused.kernel_bits(list(inputs)))
    return module._lossdsl_eager_forward(*inputs), grads


class _InForward(fused._Fused):
    """forward: the compiled loss and gradients, the gradients kept on ctx; backward: them, scaled.

    Not traced by Dynamo itself (compiled mode does not compile the module's forward here, only
    _loss_and_grads), so it may branch on the range checks' flag and on grad_out."""

    @classmethod
    def apply(cls, module: torch.nn.Module, *args):
        """Under torch.no_grad() the loss alone, without a graph: Function.forward cannot tell (its
        ctx.needs_input_grad follows requires_grad only). A reduction set to "none" after building gives
        no scalar to seed the gradient with: fused mode's Function then runs, uncompiled; so it does inside
        a torch.compile of the caller's (a training step compiled whole), which traces it. Outside functorch
        transforms it calls the C++ Function.apply: torch's Python one around it binds default arguments
        (for a Function with setup_context, which this is not) and unwraps functorch's dead wrappers, ~2 us
        of a 60 us step."""
        if not applies(fused._LOSSES[module._lossdsl_key], module.reduction) or torch.compiler.is_compiling():
            return fused._Fused.apply(module, *args)
        if not torch.is_grad_enabled():
            return _run(module, (), args[:len(module.input_names)])[0]
        if torch._C._are_functorch_transforms_active():
            return super().apply(module, *args)
        return super(torch.autograd.Function, cls).apply(module, *args)  # the C++ apply

    @staticmethod
    def forward(ctx, module: torch.nn.Module, *args):
        fused.save_inputs(ctx, module, args)
        out, ctx.grads = _run(module, ctx.want, args[:len(module.input_names)])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grads, ctx.grads = ctx.grads, None
        if not grads or torch.is_grad_enabled():
            return fused._Fused.backward(ctx, grad_out)
        return fused.by_position(ctx.module, ctx.want, _scaled(grads, grad_out, ctx.saved_tensors))


def _run(module: torch.nn.Module, want: tuple[str, ...], inputs: tuple) -> tuple:
    """The compiled loss and gradients; a range check that flagged raises its own message."""
    out, grads = module._lossdsl_run(module, want, *inputs)
    return fused.unflagged(module, out, inputs), grads


def _scaled(grads: tuple[torch.Tensor, ...], grad_out: torch.Tensor,
            inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The gradients times grad_out. grad_out of 1 on the CPU, loss.backward()'s, is checked and skipped; on
    an accelerator the check would wait for the device, which costs more than the multiply. In place when
    each gradient is a dense buffer of its own (they are this backward's alone now). Out of place when
    gradients share memory with each other or with an input: a gradient that does not depend on the inputs
    comes back from Inductor expanded from one number, two equal ones may share a buffer (mean(x + y)), and
    the gradient of sum(x * y) with respect to x is y itself, which an in-place multiply changed."""
    if grad_out.device.type == "cpu" and grad_out.numel() == 1 and grad_out.item() == 1.0:
        return grads
    storages = [g.untyped_storage().data_ptr() for g in grads]
    theirs = {t.untyped_storage().data_ptr() for t in inputs}
    if len(set(storages)) == len(grads) and theirs.isdisjoint(storages) and all(g.is_contiguous() for g in grads):
        return tuple(g.mul_(grad_out) for g in grads)
    return tuple(g * grad_out for g in grads)
