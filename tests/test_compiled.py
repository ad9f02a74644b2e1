"""mode="compiled": same values and gradients as eager, compile time reported, state and class kept."""

from __future__ import annotations

import pytest
import torch

import lossdsl
from lossdsl import compiled

FOCAL = """
loss focal(x: logits, y: prob; alpha = 0.25 in [0, 1], gamma = 2.0 >= 0):
    p  = sigmoid(x)
    pt = where(y == 1, p, 1 - p)
    at = where(y == 1, alpha, 1 - alpha)
    return -at * (1 - pt)^gamma * log(pt)
"""


def test_unknown_mode_is_a_parameter_error() -> None:
    with pytest.raises(lossdsl.ParameterError, match="mode must be one of"):
        lossdsl.compile("(x - y)^2", mode="fast")


def test_signature_separates_shapes_and_dtypes() -> None:
    a, b = torch.zeros(2, 3), torch.zeros(3, 2)
    assert compiled.signature((a,), {}) == compiled.signature((torch.ones(2, 3),), {})
    assert compiled.signature((a,), {}) != compiled.signature((b,), {})
    assert compiled.signature((a,), {}) != compiled.signature((a.double(),), {})


def test_only_the_first_call_per_signature_is_timed() -> None:
    module = torch.nn.Module()
    module.compile_seconds, module.compile_log = 0.0, []
    calls = []
    run = compiled._timed(module, lambda x: calls.append(x) or x)
    x = torch.zeros(3)
    for _ in range(3):
        run(x)
    run(torch.zeros(4))
    assert len(calls) == 4
    assert [sig for sig, _ in module.compile_log] == [compiled.signature((x,), {}),
                                                      compiled.signature((torch.zeros(4),), {})]


def test_first_call_compiles_under_the_recompute_policy() -> None:
    """The joint graph is partitioned during the first call per signature: only that call runs under the
    policy's config patches."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    def state() -> tuple:
        post = inductor_config.joint_custom_post_pass
        return functorch_config.activation_memory_budget, type(post).__name__ if post else None

    default = state()
    for policy, expected in (("masks", (default[0], "RecomputeMasks")), ("all", (0.0, default[1])),
                             ("none", default)):
        module = torch.nn.Module()
        module.compile_seconds, module.compile_log = 0.0, []
        seen: list[tuple] = []
        run = compiled._timed(module, lambda x, seen=seen: seen.append(state()), policy)
        run(torch.zeros(3))
        run(torch.zeros(3))
        assert seen == [expected, default], policy


def test_unknown_recompute_policy_is_refused() -> None:
    loss = lossdsl.parse("(x - y)^2")
    with pytest.raises(ValueError, match="recompute must be one of"):
        compiled.build(loss, loss.compile(), recompute="some")


def test_recompute_masks_tags_bools_and_elementwise_integers_only() -> None:
    """Masks and clamped indices are recomputed in the backward; floats and a sort's order are not."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils.checkpoint import CheckpointPolicy

    def huber_at(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = x.gather(1, y.clamp(0, 3)).abs()
        rank = torch.argsort(e, dim=0)
        return (torch.where(e < 1, 0.5 * e * e, e - 0.5) * rank).sum()

    gm = make_fx(huber_at)(torch.randn(8, 4), torch.randint(-1, 4, (8, 2)))
    compiled.RecomputeMasks()(gm.graph)
    tagged = {str(n.target) for n in gm.graph.nodes if n.meta.get("recompute") == CheckpointPolicy.MUST_RECOMPUTE}
    assert tagged == {"aten.clamp.default", "aten.lt.Scalar"}
    assert compiled.RecomputeMasks().uuid() == compiled.RecomputeMasks().uuid()


@pytest.mark.slow
def test_compiled_off_diagonal_mask_has_eager_gradients() -> None:
    """info_nce's [j != i] mask: eager sets a diagonal with diagonal_scatter, whose gradient Inductor gets
    wrong (pytorch/pytorch#183602: x.grad came out 12.44 -> 14.32 in |sum|); compiled mode selects instead."""
    loss = lossdsl.stdlib.get("info_nce")
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(16, 8, generator=gen, dtype=torch.float64) for _ in range(2)]
    grads = []
    for mode in ("eager", "compiled"):
        leaves = [a.clone().requires_grad_() for a in args]
        out = loss.compile(mode=mode)(*leaves)
        grads.append((out.detach(), *torch.autograd.grad(out, leaves)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_specializer_writes_scalar_parameters_in_and_follows_their_buffers() -> None:
    """No torch.compile needed: the specialised forward is a plain generated forward."""
    loss = lossdsl.parse(FOCAL)
    module = loss.compile(gamma=2.0)
    spec = compiled.Specializer(loss, module)
    assert set(spec.names) == {"gamma"}  # alpha is a factor: it stays a buffer
    assert spec.refresh() and not spec.refresh()
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(64) > 0.5).double()
    for gamma in (2.0, 3.5):
        module.gamma.fill_(gamma)
        assert spec.refresh()  # any in-place write counts, even of the same value
        out, ref = module(x, y), loss.compile(gamma=gamma)(x, y)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    module.load_state_dict(loss.compile(gamma=1.0).state_dict())
    assert spec.refresh()
    torch.testing.assert_close(module(x, y), loss.compile(gamma=1.0)(x, y))


def test_specializer_leaves_shaped_and_learnable_parameters() -> None:
    loss = lossdsl.parse("loss w(x[n, c], t[n, c]; weight[c] = 1, s: learnable = 0, k = 2.0, a = 1.0, b = 0.5):\n"
                         "    weight[c] * (x - t)^k * exp(-s) * (a if b >= 0 else 1) / b")
    assert set(compiled.Specializer(loss, loss.compile()).names) == {"k", "b"}


@pytest.mark.slow
def test_compiled_follows_a_changed_parameter() -> None:
    """One torch.compile per value: ~20-40 s on 2 cores with a cold Inductor cache."""
    fast = lossdsl.compile(FOCAL, mode="compiled")
    assert fast.compile_options["specialized"] == ["gamma"]
    x = torch.randn(100, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(100) > 0.5).double()
    for gamma in (2.0, 0.5):
        fast.gamma.fill_(gamma)
        out, ref = fast(x, y), lossdsl.compile(FOCAL, gamma=gamma)(x, y)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0])
    assert len(fast.compile_log) == 2


def test_a_loss_that_takes_a_gradient_runs_eagerly_in_compiled_mode() -> None:
    """WGAN-GP differentiates its critic inside the loss; torch.compile cannot differentiate that again, so
    compiled mode says so (a warning pointing at the caller, compile_options) and gives eager's numbers
    instead of raising on the first backward."""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(),
                                 torch.nn.Linear(8, 1)).double()
    real = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    fake = torch.randn(5, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    u = torch.rand(5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="wgan_gp_d_loss takes a gradient inside") as caught:
        fast = lossdsl.stdlib.wgan_gp_d_loss(mode="compiled")
    assert caught[0].filename == __file__
    assert fast.inner.compile_options["compiled"] is False
    eager = lossdsl.stdlib.wgan_gp_d_loss()
    wrt = [fake, *critic.parameters()]
    out, ref = fast(critic, real, fake, u), eager(critic, real, fake, u)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, wrt), torch.autograd.grad(ref, wrt), strict=True):
        torch.testing.assert_close(a, b)
