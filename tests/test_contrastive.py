"""bowflow/contrastive.py against its papers' formulas, written as float64 loops: SimCLR's
NT-Xent (Chen et al. 2020, eq. 1) and SupCon's L_out (Khosla et al. 2020, eq. 2); each
check also changes the input and sees the value move, so agreement is not trivial. Then
the explicit `gather`: per-process shares average to the one-process loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from bowflow.contrastive import nt_xent, nt_xent_pairs, supcon_loss


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def cosine(u, v):
    return float(u @ v / (u.norm() * v.norm()))


def nt_xent_reference(z1, z2, t):
    """Chen et al. 2020: the 2N embeddings x_1..x_2N, pairs (2k-1, 2k) two views of image k;
    l(i, j) = -log exp(sim(i, j)/t) / sum_{k != i} exp(sim(i, k)/t),
    L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)], sim the cosine."""
    x = [v for pair in zip(z1.double(), z2.double()) for v in pair]  # interleaved

    def loss(i, j):
        denominator = sum(math.exp(cosine(x[i], x[k]) / t) for k in range(len(x)) if k != i)
        return -math.log(math.exp(cosine(x[i], x[j]) / t) / denominator)

    n = len(z1)
    return sum(loss(2 * k, 2 * k + 1) + loss(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def supcon_reference(views, labels, t):
    """Khosla et al. 2020, L_out: for every anchor i of the 2N (here VN) embeddings,
    -1/|P(i)| sum_{p in P(i)} log exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t), A(i)
    every embedding but i, P(i) those of A(i) with i's label; summed over i. Divided here
    by the number of anchors (the batch mean)."""
    b, v, _ = views.shape
    z = F.normalize(views.double(), dim=2).reshape(b * v, -1)
    label = [int(labels[i // v]) if labels is not None else i // v for i in range(b * v)]
    total = 0.0
    for i in range(b * v):
        others = [a for a in range(b * v) if a != i]
        log_denominator = math.log(sum(math.exp(float(z[i] @ z[a]) / t) for a in others))
        positives = [p for p in others if label[p] == label[i]]
        total += -sum(float(z[i] @ z[p]) / t - log_denominator for p in positives) / len(positives)
    return total / (b * v)


@pytest.mark.parametrize("b,d,t", [(4, 3, 0.5), (7, 8, 0.1), (2, 5, 1.0)])
def test_nt_xent_is_simclrs_formula(b, d, t):
    z1, z2 = randn(b, d, seed=b), randn(b, d, seed=b + 1)
    assert nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-5)
    # not trivially satisfied: other partners, or another temperature, give another value
    moved = z2.roll(1, dims=0)
    assert abs(nt_xent_reference(z1, moved, t) - nt_xent_reference(z1, z2, t)) > 1e-3
    assert nt_xent(z1, moved, t).item() == pytest.approx(nt_xent_reference(z1, moved, t), rel=1e-5)
    assert nt_xent(z1, z2, 2 * t).item() != pytest.approx(nt_xent(z1, z2, t).item(), rel=1e-3)


@pytest.mark.parametrize("v", [2, 3, 4])
@pytest.mark.parametrize("labelled", [False, True])
def test_supcon_is_khosla_et_als_l_out(v, labelled):
    views = randn(6, v, 5, seed=v)
    labels = torch.tensor([0, 1, 0, 2, 1, 3]) if labelled else None
    expected = supcon_reference(views, labels, 0.5)
    assert supcon_loss(views, labels, 0.5).item() == pytest.approx(expected, rel=1e-5)
    # not trivially satisfied: moving one view, or merging two classes, changes the value
    moved = views.clone()
    moved[0, 1] = -moved[0, 1]
    assert abs(supcon_reference(moved, labels, 0.5) - expected) > 1e-3
    assert supcon_loss(moved, labels, 0.5).item() == pytest.approx(supcon_reference(moved, labels, 0.5), rel=1e-5)
    merged = torch.tensor([0, 0, 0, 2, 1, 3])
    assert supcon_loss(views, merged, 0.5).item() == pytest.approx(supcon_reference(views, merged, 0.5), rel=1e-5)
    assert abs(supcon_reference(views, merged, 0.5) - expected) > 1e-3


def test_supcon_with_two_views_and_no_labels_is_nt_xent():
    z1, z2 = randn(6, 8), randn(6, 8, seed=1)
    assert supcon_loss(torch.stack([z1, z2], 1), None, 0.3).item() == pytest.approx(
        nt_xent(z1, z2, 0.3).item(), rel=1e-5
    )


def test_supcon_needs_two_views_and_no_labels_with_gather():
    with pytest.raises(ValueError, match="at least 2 views"):
        supcon_loss(randn(4, 1, 3))
    with pytest.raises(ValueError, match="labels only with gather=None"):
        supcon_loss(randn(4, 2, 3), torch.arange(4), gather=lambda x: x)


def two_processes(full: torch.Tensor, rank: int, b: int):
    """`gather` of rank `rank` of 2: every row of `full`, its own b rows replaced by the
    (differentiable) argument, as distributed.gather puts them."""

    def gather(x):
        out = full.clone()
        out[rank * b : (rank + 1) * b] = x
        return out

    return gather


def test_nt_xent_shares_of_two_processes_average_to_the_global_loss():
    z1, z2 = randn(8, 5), randn(8, 5, seed=1)
    whole = nt_xent(z1, z2, 0.5)
    shares = []
    for rank in range(2):
        rows = slice(4 * rank, 4 * rank + 4)
        gathered = iter([F.normalize(z1, dim=1), F.normalize(z2, dim=1)])  # view 1, then 2
        gather = lambda x, rank=rank, gathered=gathered: two_processes(next(gathered), rank, 4)(x)  # noqa: E731
        shares.append(nt_xent(z1[rows], z2[rows], 0.5, gather=gather, rank=rank))
    torch.testing.assert_close((shares[0] + shares[1]) / 2, whole)
    assert not torch.allclose(shares[0], whole)  # each share alone is not the loss
    # the pairs: rank 1's anchor 0 is global image 4; its partner is image 4's other view
    _, candidates, own, partner = nt_xent_pairs(z1[4:], z2[4:], two_processes(F.normalize(z1, dim=1), 1, 4), 1)
    assert own.tolist() == [4, 5, 6, 7, 12, 13, 14, 15] and partner.tolist() == [12, 13, 14, 15, 4, 5, 6, 7]


@pytest.mark.parametrize("v", [2, 3])
def test_supcon_shares_of_two_processes_average_to_the_global_loss(v):
    views = randn(8, v, 6, seed=v)
    whole = supcon_loss(views, None, 0.5)
    normalised = F.normalize(views, dim=2)
    shares = [
        supcon_loss(views[4 * r : 4 * r + 4], None, 0.5, gather=two_processes(normalised, r, 4), rank=r)
        for r in range(2)
    ]
    torch.testing.assert_close((shares[0] + shares[1]) / 2, whole)
    assert not torch.allclose(shares[1], whole)
    # in one process gather=None and the identity gather are the same loss, bit for bit
    assert torch.equal(supcon_loss(views, None, 0.5, gather=lambda x: x), whole)


@pytest.mark.parametrize("loss", [lambda z: nt_xent(z[:, 0], z[:, 1]), lambda z: supcon_loss(z)])
def test_float32_under_bf16_autocast_and_every_view_gets_a_gradient(loss):
    z = randn(6, 2, 8).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(z)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert (z.grad.float().abs().sum(dim=(0, 2)) > 0).all()
