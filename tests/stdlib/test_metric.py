"""stdlib/metric.loss against plain-torch references (float64), edge cases and extreme inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lossdsl import stdlib

from .helpers import assert_finite, check, leaves, low_precision


def emb(n: int = 5, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, dtype=torch.float64)


def extreme_emb(n: int = 4, d: int = 3, scale: float = 1e4, zero: bool = False) -> torch.Tensor:
    """Huge and tiny rows (and a zero row if asked): cosine similarities must survive them."""
    z = torch.randn(n, d) * scale
    z[1] = 0.0 if zero else torch.randn(d) * 1e-3 * scale
    z[2] = torch.randn(d) * 1e-3
    return z


# ---- contrastive
def ref_contrastive(a, b, y, margin=1.0):
    d = torch.linalg.vector_norm(a - b, dim=1)
    return ((1 - y) * d.pow(2) + y * torch.clamp(margin - d, min=0).pow(2)).mean()


@pytest.mark.parametrize("margin", [1.0, 2.5])
def test_contrastive_matches_reference(margin: float) -> None:
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    check(stdlib.contrastive_loss(margin=margin), lambda a, b, t: ref_contrastive(a, b, t, margin), emb(), emb(), y)


def test_contrastive_identical_embeddings() -> None:
    a = emb(2)
    b, y = leaves([a])[0], torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = stdlib.contrastive_loss(reduction="none")(b, a, y)
    assert out.tolist() == [0.0, 1.0]  # similar: nothing to pull; dissimilar: the full margin
    assert torch.isfinite(torch.autograd.grad(out.sum(), b)[0]).all()


@low_precision
def test_contrastive_extreme_inputs(dtype: torch.dtype) -> None:
    a, b = extreme_emb(scale=30.0), extreme_emb(scale=30.0)
    b[3] = a[3]
    assert_finite(stdlib.contrastive_loss(), a, b, torch.tensor([0.0, 1.0, 1.0, 1.0]), dtype=dtype)


# ---- triplet
def cosine_distance(x, y):
    return 1 - F.cosine_similarity(x, y)


@pytest.mark.parametrize("margin", [1.0, 0.2])
def test_triplet_euclidean_matches_torch(margin: float) -> None:
    check(stdlib.triplet_loss(margin=margin), lambda a, p, q: F.triplet_margin_loss(a, p, q, margin=margin, eps=0.0),
          emb(), emb(), emb())


def test_triplet_cosine_matches_torch() -> None:
    def ref(a, p, q):
        return F.triplet_margin_with_distance_loss(a, p, q, distance_function=cosine_distance, margin=0.3)

    check(stdlib.triplet_loss(margin=0.3, cosine=True), ref, emb(), emb(), emb(), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("cosine", [False, True])
def test_triplet_identical_embeddings_give_the_margin(cosine: bool) -> None:
    a = leaves([emb(3)])[0]
    out = stdlib.triplet_loss(cosine=cosine)(a, a, a)
    assert out.item() == pytest.approx(1.0)
    assert torch.isfinite(torch.autograd.grad(out, a)[0]).all()


def test_triplet_all_easy_is_zero() -> None:
    a = emb(3)
    assert stdlib.triplet_loss()(a, a + 0.01, a + 10.0).item() == 0.0


@low_precision
@pytest.mark.parametrize("cosine", [False, True])
def test_triplet_extreme_inputs(cosine: bool, dtype: torch.dtype) -> None:
    scale = 1e4 if cosine else 30.0
    a = extreme_emb(scale=scale)
    assert_finite(stdlib.triplet_loss(cosine=cosine), a, a.clone(), extreme_emb(scale=scale), dtype=dtype)


# ---- info_nce, nt_xent, clip: the textbook snippets
def ref_info_nce(z_i, z_j, temperature=0.07):
    z_i, z_j = F.normalize(z_i, dim=1), F.normalize(z_j, dim=1)
    positive_sim = torch.sum(z_i * z_j, dim=1) / temperature
    sim_matrix = torch.mm(z_i, z_j.t()) / temperature
    return -torch.log(torch.exp(positive_sim) / torch.sum(torch.exp(sim_matrix), dim=1)).mean()


def ref_nt_xent(z_i, z_j, temperature=0.5):
    n = z_i.size(0)
    reps = torch.cat([F.normalize(z_i, dim=1), F.normalize(z_j, dim=1)], dim=0)
    sim = (reps @ reps.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), -9e15)
    pos = sim[torch.arange(2 * n), torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])]
    return -torch.log(torch.exp(pos) / torch.exp(sim).sum(dim=1)).mean()


def ref_clip(image_features, text_features, temperature=0.07):
    logits = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t() / temperature
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


@pytest.mark.parametrize("name, ref, temperature", [
    ("info_nce", ref_info_nce, 0.07), ("info_nce", ref_info_nce, 0.5), ("nt_xent", ref_nt_xent, 0.5),
    ("nt_xent", ref_nt_xent, 0.1), ("clip_loss", ref_clip, 0.07), ("clip_loss", ref_clip, 1.0)])
def test_contrastive_pretraining_losses_match_snippets(name: str, ref, temperature: float) -> None:
    module = getattr(stdlib, name)(temperature=temperature)
    check(module, lambda a, b: ref(a, b, temperature), emb(6, 5), emb(6, 5))


def test_info_nce_is_cross_entropy_on_the_diagonal_and_clip_is_symmetric() -> None:
    q, k = emb(3, 4), emb(3, 4)
    check(stdlib.info_nce(), lambda a, b: F.cross_entropy(F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / 0.07,
                                                          torch.arange(3)), q, k)
    x, t = emb(4), emb(4)
    assert stdlib.clip_loss()(x, t).item() == pytest.approx(stdlib.clip_loss()(t, x).item(), rel=1e-12)


def test_identical_embeddings_give_log_of_the_batch() -> None:
    """All embeddings equal: every candidate is as similar as the positive, so each loss is log(candidates)."""
    z = emb(1).expand(4, 4).contiguous()
    assert stdlib.info_nce()(z, z).item() == pytest.approx(math.log(4), rel=1e-9)
    assert stdlib.nt_xent()(z, z).item() == pytest.approx(math.log(7), rel=1e-9)
    assert stdlib.clip_loss()(z, z).item() == pytest.approx(math.log(4), rel=1e-9)


def test_nt_xent_single_pair() -> None:
    """N = 1: each view's only candidate is the other view, so the loss is 0."""
    a = leaves([emb(1)])[0]
    out = stdlib.nt_xent()(a, emb(1))
    assert out.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(torch.autograd.grad(out, a)[0]).all()


@low_precision
@pytest.mark.parametrize("name", ["info_nce", "nt_xent", "clip_loss"])
def test_contrastive_pretraining_extreme_inputs(name: str, dtype: torch.dtype) -> None:
    assert_finite(getattr(stdlib, name)(), extreme_emb(), extreme_emb(), dtype=dtype)


# ---- supcon: the official SupContrast code, one view, base_temperature = temperature
def ref_supcon(z, y, temperature=0.07):
    f = F.normalize(z, dim=1)
    logits = f @ f.t() / temperature
    logits_mask = ~torch.eye(len(y), dtype=torch.bool)
    mask = (y[:, None] == y[None, :]).to(z.dtype) * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    pairs = mask.sum(1)
    pairs = torch.where(pairs < 1e-6, torch.ones_like(pairs), pairs)
    return -((mask * log_prob).sum(1) / pairs).mean()


@pytest.mark.parametrize("labels", [[0, 1, 0, 2, 1, 0], [3, 3, 3, 3, 3, 3], [0, 1, 2, 3, 4, 5]],
                         ids=["mixed", "one-class", "no-positives"])
def test_supcon_matches_official_code(labels: list[int]) -> None:
    y = torch.tensor(labels)
    check(stdlib.supcon_loss(temperature=0.1), lambda a, b: ref_supcon(a, b, 0.1), emb(6, 3), y)


def test_supcon_without_positives_is_zero() -> None:
    assert stdlib.supcon_loss()(emb(4), torch.arange(4)).item() == 0.0


@low_precision
def test_supcon_extreme_inputs(dtype: torch.dtype) -> None:
    assert_finite(stdlib.supcon_loss(), extreme_emb(), torch.tensor([0, 1, 0, 1]), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("name", ["info_nce", "nt_xent", "clip_loss", "supcon_loss", "triplet_cosine"])
def test_cosine_losses_zero_embedding(name: str, dtype: torch.dtype) -> None:
    """A zero row: normalize gives 0 as torch does, and passes the incoming gradient through there (torch
    multiplies it by 1/eps = 1e12: inf once returned in float16)."""
    z = extreme_emb(zero=True)
    if name == "supcon_loss":
        assert_finite(stdlib.supcon_loss(), z, torch.tensor([0, 1, 0, 1]), dtype=dtype)
    elif name == "triplet_cosine":
        assert_finite(stdlib.triplet_loss(cosine=True), z, z.clone(), extreme_emb(), dtype=dtype)
    else:
        assert_finite(getattr(stdlib, name)(), z, extreme_emb(zero=True), dtype=dtype)


# ---- center loss: learnable centres
def test_center_loss_matches_reference_and_trains_the_centres() -> None:
    f, y = emb(6, 3), torch.tensor([0, 2, 1, 2, 0, 3])
    init = torch.randn(4, 3, dtype=torch.float64)
    module = stdlib.center_loss(centers=init, k=4)
    fm, fr = leaves([f, f])
    cr = init.clone().requires_grad_(True)
    out, ref = module(fm, y), 0.5 * ((fr - cr[y]) ** 2).sum(1).mean()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    g_mine = torch.autograd.grad(out, [fm, module.centers])
    g_ref = torch.autograd.grad(ref, [fr, cr])
    for a, b in zip(g_mine, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_center_loss_default_centres_are_zero_parameters() -> None:
    module = stdlib.center_loss(k=3)
    f = emb(4, 2)
    out = module(f, torch.tensor([0, 1, 2, 0]))
    assert module.centers.shape == (3, 2) and not module.centers.any()
    assert out.item() == pytest.approx(0.5 * (f ** 2).sum(1).mean().item(), rel=1e-12)


@low_precision
def test_center_loss_extreme_inputs(dtype: torch.dtype) -> None:
    module = stdlib.center_loss(k=2)
    assert_finite(module, extreme_emb(scale=30.0), torch.tensor([0, 1, 1, 0]), dtype=dtype)
