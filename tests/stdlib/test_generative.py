"""stdlib/generative.loss against plain-torch references (float64), edge cases and extreme inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lossdsl import stdlib

from .helpers import assert_finite, check, low_precision


def scores(n: int) -> torch.Tensor:
    return torch.randn(n, 1, dtype=torch.float64) * 2


def bce(x, target: float):
    return F.binary_cross_entropy_with_logits(x, torch.full_like(x, target))


# ---- GAN, LSGAN, WGAN (real and fake batches of different sizes)
def test_gan_losses_match_bce() -> None:
    real, fake = scores(5), scores(3)
    check(stdlib.gan_d_loss(), lambda r, f: bce(r, 1.0) + bce(f, 0.0), real, fake)
    check(stdlib.gan_g_loss(), lambda f: bce(f, 1.0), fake)
    check(stdlib.gan_g_loss(non_saturating=False), lambda f: torch.log(1 - torch.sigmoid(f)).mean(), fake)


def test_gan_perfect_discriminator_and_saturation() -> None:
    real, fake = torch.full((4,), 50.0, dtype=torch.float64), torch.full((4,), -50.0, dtype=torch.float64)
    assert stdlib.gan_d_loss()(real, fake).item() < 1e-20
    fake.requires_grad_(True)
    saturating = torch.autograd.grad(stdlib.gan_g_loss(non_saturating=False)(fake), fake)[0]
    non_saturating = torch.autograd.grad(stdlib.gan_g_loss()(fake), fake)[0]
    assert saturating.abs().max() < 1e-20 < non_saturating.abs().min()  # why the non-saturating loss exists


@pytest.mark.parametrize("a, b, c", [(0.0, 1.0, 1.0), (-1.0, 1.0, 0.0)])
def test_lsgan_matches_mao(a: float, b: float, c: float) -> None:
    real, fake = scores(4), scores(6)
    check(stdlib.lsgan_d_loss(a=a, b=b),
          lambda r, f: 0.5 * F.mse_loss(r, torch.full_like(r, b)) + 0.5 * F.mse_loss(f, torch.full_like(f, a)),
          real, fake)
    check(stdlib.lsgan_g_loss(c=c), lambda f: 0.5 * F.mse_loss(f, torch.full_like(f, c)), fake)


def test_wgan_matches_reference() -> None:
    real, fake = scores(4), scores(2)
    check(stdlib.wgan_d_loss(), lambda r, f: f.mean() - r.mean(), real, fake)
    check(stdlib.wgan_g_loss(), lambda f: -f.mean(), fake)


@low_precision
@pytest.mark.parametrize("name", ["gan_d_loss", "wgan_d_loss", "lsgan_d_loss"])
def test_discriminator_losses_extreme_scores(name: str, dtype: torch.dtype) -> None:
    scale = 100.0 if name.startswith("lsgan") else 1e4  # LSGAN squares its scores: 1e4^2 is past float16
    x = torch.tensor([1.0, -1.0, 0.0, 1.0]) * scale
    assert_finite(getattr(stdlib, name)(), x, x.flip(0), dtype=dtype)


@low_precision
@pytest.mark.parametrize("name, params", [("gan_g_loss", {}), ("gan_g_loss", {"non_saturating": False}),
                                          ("wgan_g_loss", {}), ("lsgan_g_loss", {})])
def test_generator_losses_extreme_scores(name: str, params: dict, dtype: torch.dtype) -> None:
    scale = 100.0 if name.startswith("lsgan") else 1e4
    assert_finite(getattr(stdlib, name)(**params), torch.tensor([1.0, -1.0, 0.0]) * scale, dtype=dtype)


# ---- VAE (pytorch/examples: per-sample sums, batch mean)
def ref_vae(recon, x, mu, logvar, beta=1.0, use_bce=False):
    if use_bce:
        rec = F.binary_cross_entropy_with_logits(recon, x, reduction="none")
    else:
        rec = F.mse_loss(recon, x, reduction="none")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return (rec.flatten(1).sum(1) + beta * kld).mean()


@pytest.mark.parametrize("beta, use_bce", [(1.0, False), (4.0, False), (1.0, True), (0.0, True)])
def test_vae_matches_reference(beta: float, use_bce: bool) -> None:
    recon = torch.randn(3, 2, 4, dtype=torch.float64)
    x = torch.rand(3, 2, 4, dtype=torch.float64)
    mu, logvar = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    check(stdlib.vae_loss(beta=beta, bce=use_bce), lambda *a: ref_vae(*a, beta, use_bce), recon, x, mu, logvar)


def test_vae_posterior_equal_to_prior_has_no_kl() -> None:
    x = torch.rand(2, 6, dtype=torch.float64)
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    assert stdlib.vae_loss(beta=10.0)(x, x, zeros, zeros).item() == 0.0


@low_precision
@pytest.mark.parametrize("use_bce", [False, True])
def test_vae_extreme_inputs(use_bce: bool, dtype: torch.dtype) -> None:
    recon = torch.tensor([[1e4, -1e4, 0.0, 50.0]]) if use_bce else torch.tensor([[30.0, -30.0, 0.0, 1.0]])
    x = torch.tensor([[1.0, 0.0, 0.5, 1.0]])
    mu, logvar = torch.tensor([[30.0, -30.0]]), torch.tensor([[10.0, -10.0]])  # exp(10) still fits float16
    assert_finite(stdlib.vae_loss(bce=use_bce), recon, x, mu, logvar, dtype=dtype)


# ---- WGAN-GP: a small random critic, u given (deterministic) or drawn by the stdlib wrapper
def critic_net(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 4 * 4, 1)).to(dtype)


def ref_wgan_gp(critic, real, fake, u, lam=10.0):
    w = u.view(-1, 1, 1, 1)
    xhat = w * real + (1 - w) * fake
    if not xhat.requires_grad:
        xhat = xhat.detach().requires_grad_(True)
    g = torch.autograd.grad(critic(xhat).sum(), xhat, create_graph=True)[0]
    penalty = ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
    return critic(fake).mean() - critic(real).mean() + lam * penalty


@pytest.mark.parametrize("lam", [10.0, 1.0])
def test_wgan_gp_matches_reference_including_critic_gradients(lam: float) -> None:
    critic = critic_net()
    real, fake = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    u = torch.rand(3, dtype=torch.float64)
    module = stdlib.wgan_gp_d_loss(lambda_=lam)
    out = check(lambda r, f, w: module(critic, r, f, w), lambda r, f, w: ref_wgan_gp(critic, r, f, w, lam),
                real, fake, u)
    mine = torch.autograd.grad(module(critic, real, fake, u), list(critic.parameters()))
    theirs = torch.autograd.grad(ref_wgan_gp(critic, real, fake, u, lam), list(critic.parameters()))
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert out.requires_grad


def test_wgan_gp_draws_uniform_interpolation_weights_per_sample() -> None:
    critic, module = critic_net(), stdlib.wgan_gp_d_loss()
    real, fake = torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.randn(5, 2, 4, 4, dtype=torch.float64)
    torch.manual_seed(7)
    drawn = module(critic, real, fake)
    torch.manual_seed(7)
    u = torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(drawn, ref_wgan_gp(critic, real, fake, u), rtol=1e-9, atol=1e-11)
    assert module(critic, real, fake).item() != drawn.item()  # fresh draws on every call


@low_precision
def test_wgan_gp_extreme_inputs(dtype: torch.dtype) -> None:
    critic = critic_net(torch.float32)
    real = torch.full((2, 2, 4, 4), 1e4)
    fake = -real
    out = stdlib.wgan_gp_d_loss()(critic, real.to(dtype), fake.to(dtype).requires_grad_(True), torch.rand(2).to(dtype))
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out, list(critic.parameters())))


# ---- perceptual and style: a small random CNN returning named layers; no downloaded weights
class Features(torch.nn.Module):
    """A two-block random CNN standing in for VGG: returns {'relu1': ..., 'relu2': ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
        self.block2 = torch.nn.Sequential(torch.nn.Conv2d(4, 5, 3, stride=2, padding=1), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.block1(x)
        return {"relu1": a, "relu2": self.block2(a)}


def gram(features: torch.Tensor) -> torch.Tensor:
    """The textbook snippet's Gram matrix, G = F F^T / (C H W)."""
    n, c, h, w = features.size()
    f = features.view(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, dtype=torch.float64)


@pytest.mark.parametrize("weights", [None, {"relu1": 0.5, "relu2": 2.0}, {"relu2": 1.0}])
@pytest.mark.parametrize("l1", [False, True])
def test_perceptual_matches_reference(weights: dict | None, l1: bool) -> None:
    phi = Features().double()
    distance = F.l1_loss if l1 else F.mse_loss

    def ref(x, y):
        fx, fy = phi(x), phi(y)
        return sum(w * distance(fx[k], fy[k]) for k, w in (weights or {"relu1": 1.0, "relu2": 1.0}).items())

    module = stdlib.perceptual_loss(weights=weights, l1=l1)
    check(lambda x, y: module(phi, x, y), ref, images(), images())


@pytest.mark.parametrize("weights", [None, {"relu1": 1e3, "relu2": 10.0}])
def test_style_matches_reference(weights: dict | None) -> None:
    phi = Features().double()

    def ref(x, y):
        fx, fy = phi(x), phi(y)
        return sum(w * F.mse_loss(gram(fx[k]), gram(fy[k]))
                   for k, w in (weights or {"relu1": 1.0, "relu2": 1.0}).items())

    module = stdlib.style_loss(weights=weights)
    check(lambda x, y: module(phi, x, y), ref, images(), images())


def test_perceptual_and_style_extractors_returning_lists() -> None:
    phi = Features().double()

    def as_list(x):
        return list(phi(x).values())

    x, y = images(), images()
    assert stdlib.style_loss()(as_list, x, y).item() == pytest.approx(stdlib.style_loss()(phi, x, y).item())
    assert stdlib.perceptual_loss(weights={1: 1.0})(as_list, x, y).item() == pytest.approx(
        stdlib.perceptual_loss(weights={"relu2": 1.0})(phi, x, y).item())


def test_an_extractor_returning_one_tensor_is_one_layer() -> None:
    phi, x, y = Features().double(), images(), images()

    def last(t):
        return phi(t)["relu2"]

    assert stdlib.perceptual_loss()(last, x, y).item() == pytest.approx(F.mse_loss(last(x), last(y)).item())


def test_perceptual_and_style_identical_images_are_zero() -> None:
    phi, x = Features().double(), images()
    assert stdlib.perceptual_loss()(phi, x, x).item() == 0.0
    assert stdlib.style_loss()(phi, x, x).item() == 0.0


@low_precision
@pytest.mark.parametrize("name", ["perceptual_loss", "style_loss"])
def test_perceptual_and_style_extreme_inputs(name: str, dtype: torch.dtype) -> None:
    phi = Features().to(dtype)
    scale = 10.0 if dtype == torch.float16 else 1e4  # larger images make float16 features (and Grams) overflow
    x = torch.tensor([scale, -scale, 0.0])[torch.randint(0, 3, (2, 3, 6, 6))]
    module = getattr(stdlib, name)()
    assert_finite(lambda a, b: module(phi, a, b), x, torch.zeros_like(x), dtype=dtype)
