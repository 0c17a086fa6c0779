"""Losses against hand-written per-sample references (house style §4.9)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from uslib.losses import info_nce, masked_cross_entropy, nt_xent


def _nt_xent_manual(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR Eq. 1, one anchor at a time, in plain Python loops."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for k in range(n2):
        pos = (k + n) % n2
        sims = [float(F.cosine_similarity(z[k], z[m], dim=0)) / tau for m in range(n2)]
        denom = sum(math.exp(sims[m]) for m in range(n2) if m != k)
        total += -math.log(math.exp(sims[pos]) / denom)
    return total / n2


@pytest.mark.parametrize("tau", [0.5, 0.1, 1.0])
def test_nt_xent_matches_manual(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(_nt_xent_manual(z1, z2, tau), rel=1e-5)


def test_nt_xent_symmetric_and_scale_invariant() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(z2, z1))
    torch.testing.assert_close(nt_xent(3.0 * z1, 0.5 * z2), nt_xent(z1, z2))


def test_nt_xent_perfect_pairs_low_loss() -> None:
    z = torch.eye(4) * 10
    perfect = nt_xent(z, z.clone(), 0.1)
    shuffled = nt_xent(z, z.roll(1, dims=0), 0.1)
    assert float(perfect) < 0.01 < float(shuffled)


def test_nt_xent_bad_input() -> None:
    with pytest.raises(ValueError, match="nt_xent"):
        nt_xent(torch.randn(3, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), 0.0)


def test_info_nce_in_batch_and_queue() -> None:
    g = torch.Generator().manual_seed(2)
    q, k, neg = (torch.randn(4, 3, generator=g) for _ in range(3))
    qn, kn, nn_ = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(neg, dim=1)
    tau = 0.2
    manual = 0.0
    for i in range(4):
        logits = torch.tensor([float(qn[i] @ kn[j]) / tau for j in range(4)])
        manual += float(-torch.log_softmax(logits, 0)[i])
    assert float(info_nce(q, k, tau)) == pytest.approx(manual / 4, rel=1e-5)
    manual = 0.0
    for i in range(4):
        logits = torch.tensor([float(qn[i] @ kn[i])] + [float(qn[i] @ nn_[j]) for j in range(4)])
        manual += float(-torch.log_softmax(logits / tau, 0)[0])
    assert float(info_nce(q, k, tau, negatives=neg)) == pytest.approx(manual / 4, rel=1e-5)


def test_masked_ce_only_labelled() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, -1, 2, -1, 1])
    keep = labels >= 0
    torch.testing.assert_close(
        masked_cross_entropy(logits, labels), F.cross_entropy(logits[keep], labels[keep])
    )
    # changing what an unlabelled item's logits are has no effect
    other = logits.detach().clone()
    other[1] += 100.0
    torch.testing.assert_close(
        masked_cross_entropy(other, labels), masked_cross_entropy(logits.detach(), labels)
    )


def test_masked_ce_all_unlabelled_is_zero_with_grad() -> None:
    logits = torch.randn(3, 2, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((3,), -1))
    assert float(loss.detach()) == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_masked_ce_bad_label() -> None:
    with pytest.raises(ValueError, match="labels must be in"):
        masked_cross_entropy(torch.randn(2, 3), torch.tensor([0, 5]))


def test_masked_mse_counts_only_masked_patches_and_normalises_per_patch() -> None:
    from uslib.losses import masked_mse
    from uslib.losses.reconstruction import normalise_patches

    pred = torch.zeros(1, 3, 4)
    target = torch.tensor([[[1.0, 1, 1, 1], [0, 2, 0, 2], [9, 9, 9, 9]]])
    mask = torch.tensor([[1, 1, 0]])  # the third patch is visible: its error of 81 is ignored
    assert masked_mse(pred, target, mask).item() == pytest.approx((1.0 + 2.0) / 2)
    normed = normalise_patches(target[:, 1:2])  # mean 1, unbiased var 4/3
    torch.testing.assert_close(normed, (target[:, 1:2] - 1) / (4 / 3 + 1e-6) ** 0.5)
    # normalised targets of the first patch are 0 (constant patch), of the second +-0.866
    assert masked_mse(pred, target, mask, norm_pix=True).item() == pytest.approx(0.75 / 2, rel=1e-5)
    with pytest.raises(ValueError, match="no patch"):
        masked_mse(pred, target, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="must be"):
        masked_mse(pred, target[:, :2], mask)
