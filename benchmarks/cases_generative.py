"""Benchmark cases of stdlib/generative.loss: GAN, LSGAN, WGAN(-GP), VAE, perceptual and style terms.

The textbook versions follow the reference repositories (eriklindernoren/PyTorch-GAN, pytorch/examples'
VAE and fast_neural_style): `log(sigmoid(.))` for the GAN log losses, per-sample sums for the VAE, `bmm`
Gram matrices for the style term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from case_kit import Case, Tensor, leaf


# ---- input generators
def scores_pair(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Discriminator outputs on a real and a fake batch, both differentiable (the D step)."""
    return leaf(torch.randn(n, device=dev, dtype=dt) * 2), leaf(torch.randn(n, device=dev, dtype=dt) * 2)


def scores_fake(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    return (leaf(torch.randn(n, device=dev, dtype=dt) * 2),)


def vae_batch(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """recon, x [N, 1, 32, 32] (x in [0, 1)), mu, logvar [N, 32]; the data x needs no gradient."""
    rows = max(n // 1024, 1)
    recon = leaf(torch.rand(rows, 1, 32, 32, device=dev, dtype=dt))
    x = torch.rand(rows, 1, 32, 32, device=dev, dtype=dt)
    mu = leaf(torch.randn(rows, 32, device=dev, dtype=dt))
    logvar = leaf(torch.randn(rows, 32, device=dev, dtype=dt) * 0.5)
    return recon, x, mu, logvar


def wgan_gp_batch(n: int, dev: torch.device, dt: torch.dtype) -> tuple:
    """critic, real, fake [N, 1, 32, 32], u [N]; the generator's fake is the differentiable input. The
    critic is kept small (1024 -> 16 -> 1) so that the loss, not the network, is what is timed."""
    rows = max(n // 1024, 1)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 16), torch.nn.LeakyReLU(0.2),
                    torch.nn.Linear(16, 1)).to(device=dev, dtype=dt)
    real = torch.randn(rows, 1, 32, 32, device=dev, dtype=dt)
    fake = leaf(torch.randn(rows, 1, 32, 32, device=dev, dtype=dt))
    return critic, real, fake, torch.rand(rows, device=dev, dtype=dt)


def feature_maps(n: int, dev: torch.device, dt: torch.dtype) -> tuple[Tensor, ...]:
    """Post-ReLU feature maps [4, C, H, W] (C = 256 at 64 x 64 for the large size, like VGG's relu3); only the
    generated image's features need a gradient."""
    c = 256 if n >= 1 << 16 else 16
    side = max(int(math.sqrt(n / (4 * c))), 1)
    f = torch.randn(4, c, side, side, device=dev, dtype=dt).relu()
    return leaf(f), torch.randn(4, c, side, side, device=dev, dtype=dt).relu()


# ---- textbook versions and built-ins
def gan_d_textbook(real: Tensor, fake: Tensor) -> Tensor:
    return -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()


def gan_d_builtin(real: Tensor, fake: Tensor) -> Tensor:
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def gan_g_textbook(fake: Tensor, non_saturating: bool = True) -> Tensor:
    if non_saturating:
        return -torch.log(torch.sigmoid(fake)).mean()
    return torch.log(1 - torch.sigmoid(fake)).mean()


def gan_g_builtin(fake: Tensor, non_saturating: bool = True) -> Tensor:
    if non_saturating:
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    return -F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def lsgan_d_textbook(real: Tensor, fake: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    return 0.5 * ((real - b) ** 2).mean() + 0.5 * ((fake - a) ** 2).mean()


def lsgan_d_builtin(real: Tensor, fake: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """PyTorch-GAN's LSGAN: nn.MSELoss against tensors of the labels."""
    return 0.5 * (F.mse_loss(real, torch.full_like(real, b)) + F.mse_loss(fake, torch.full_like(fake, a)))


def lsgan_g_builtin(fake: Tensor, c: float = 1.0) -> Tensor:
    return 0.5 * F.mse_loss(fake, torch.full_like(fake, c))


def vae_textbook(recon: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float = 1.0,
                 bce: bool = False) -> Tensor:
    if bce:
        rec = -(x * torch.log(torch.sigmoid(recon)) + (1 - x) * torch.log(1 - torch.sigmoid(recon)))
    else:
        rec = (recon - x) ** 2
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return (rec.flatten(1).sum(1) + beta * kld).mean()


def vae_builtin(recon: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float = 1.0,
                bce: bool = False) -> Tensor:
    """pytorch/examples' VAE loss (reduction='sum' reconstruction plus the KL by hand), divided by the batch
    size: the stdlib averages the per-sample losses over the batch."""
    if bce:
        rec = F.binary_cross_entropy_with_logits(recon, x, reduction="sum")
    else:
        rec = F.mse_loss(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (rec + beta * kld) / recon.shape[0]


def wgan_gp_textbook(critic: torch.nn.Module, real: Tensor, fake: Tensor, u: Tensor,
                     lambda_: float = 10.0) -> Tensor:
    """PyTorch-GAN's compute_gradient_penalty, with the interpolation weights u given."""
    alpha = u.view(-1, *([1] * (real.dim() - 1)))
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    d_interpolates = critic(interpolates)
    gradients = torch.autograd.grad(outputs=d_interpolates, inputs=interpolates,
                                    grad_outputs=torch.ones_like(d_interpolates), create_graph=True,
                                    retain_graph=True, only_inputs=True)[0]
    gradients = gradients.view(gradients.size(0), -1)
    gradient_penalty = ((gradients.norm(2, dim=1) - 1) ** 2).mean()
    return -torch.mean(critic(real)) + torch.mean(critic(fake)) + lambda_ * gradient_penalty


def feature_builtin(f: Tensor, g: Tensor, l1: bool = False) -> Tensor:
    return F.l1_loss(f, g) if l1 else F.mse_loss(f, g)


def gram(features: Tensor) -> Tensor:
    """fast_neural_style's gram_matrix: per sample, F F^T / (C H W)."""
    b, ch, h, w = features.size()
    f = features.view(b, ch, w * h)
    return f.bmm(f.transpose(1, 2)) / (ch * h * w)


def gram_textbook(f: Tensor, g: Tensor) -> Tensor:
    return F.mse_loss(gram(f), gram(g))


CASES: dict[str, Case] = {
    "gan_d_loss": Case(scores_pair, gan_d_textbook, gan_d_builtin,
                       builtin_name="F.binary_cross_entropy_with_logits"),
    "gan_g_loss": Case(scores_fake, gan_g_textbook, gan_g_builtin,
                       builtin_name="F.binary_cross_entropy_with_logits"),
    "lsgan_d_loss": Case(scores_pair, lsgan_d_textbook, lsgan_d_builtin, builtin_name="F.mse_loss"),
    "lsgan_g_loss": Case(scores_fake, lambda fake, c=1.0: 0.5 * ((fake - c) ** 2).mean(), lsgan_g_builtin,
                         builtin_name="F.mse_loss"),
    "wgan_d_loss": Case(scores_pair, lambda real, fake: -torch.mean(real) + torch.mean(fake)),
    "wgan_g_loss": Case(scores_fake, lambda fake: -torch.mean(fake)),
    "vae_loss": Case(vae_batch, vae_textbook, vae_builtin, builtin_name="F.mse_loss(sum) + KL"),
    "wgan_gp_d_loss": Case(wgan_gp_batch, wgan_gp_textbook),
    "feature_distance": Case(feature_maps, lambda f, g, l1=False: ((f - g).abs() if l1 else (f - g) ** 2).mean(),
                             feature_builtin, builtin_name="F.mse_loss"),
    "gram_distance": Case(feature_maps, gram_textbook),
}
