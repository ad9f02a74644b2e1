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
