"""Each method's loss: values at known points, hand-written reference loops, gradients."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bowflow.losses import embedding_std, perplexity, update_queue
from bowflow.methods.barlow_twins import barlow_twins_loss
from bowflow.methods.byol import byol_loss
from bowflow.methods.dino import dino_loss, teacher_temperature, update_center
from bowflow.methods.moco import infonce_with_queue
from bowflow.methods.obow import kl_to_target, obow_bow_targets, obow_loss, soft_assign
from bowflow.methods.simclr import nt_xent
from bowflow.methods.simsiam import simsiam_loss
from bowflow.methods.swav import sinkhorn, swav_loss


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def hadamard_columns(n_rows: int = 8) -> torch.Tensor:
    """Columns of a Sylvester-Hadamard matrix without the constant one: +-1 entries,
    zero mean, unit variance, exactly uncorrelated. [n_rows, n_rows - 1]."""
    h = torch.ones(1, 1)
    while h.shape[0] < n_rows:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h[:, 1:]


# ---------------------------------------------------------------- BYOL, SimSiam


def test_byol_loss_known_values_and_scale_invariance():
    p = randn(16, 8)
    assert byol_loss(p, p).item() == pytest.approx(0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4, abs=1e-6)
    z = randn(16, 8, seed=1)
    expected = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(1).mean()
    assert torch.allclose(byol_loss(p, z), expected, atol=1e-6)
    assert torch.allclose(byol_loss(3 * p, 0.5 * z), expected, atol=1e-6)


@pytest.mark.parametrize("loss", [byol_loss, simsiam_loss])
def test_no_gradient_reaches_the_target_branch(loss):
    p, z = randn(8, 4).requires_grad_(), randn(8, 4, seed=1).requires_grad_()
    loss(p, z).backward()
    assert z.grad is None
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_simsiam_loss_is_minus_mean_cosine():
    p, z = randn(16, 8), randn(16, 8, seed=1)
    assert simsiam_loss(p, p).item() == pytest.approx(-1, abs=1e-6)
    assert simsiam_loss(p, -p).item() == pytest.approx(1, abs=1e-6)
    # the two forms differ only by an affine map: byol = 2 + 2 * simsiam
    assert torch.allclose(byol_loss(p, z), 2 + 2 * simsiam_loss(p, z), atol=1e-6)


# ---------------------------------------------------------------- Barlow Twins


def test_barlow_twins_cross_correlation_matches_a_hand_loop():
    z1, z2 = randn(6, 3), randn(6, 3, seed=1)
    b, d = z1.shape
    s1 = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    s2 = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    on, off = 0.0, 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(s1[n, i] * s2[n, j] for n in range(b)) / b  # view 1 dim i, view 2 dim j
            if i == j:
                on += (1 - c_ij) ** 2
            else:
                off += c_ij**2
    loss, parts = barlow_twins_loss(z1, z2, lambda_offdiag=0.1)
    assert parts["on_diag"].item() == pytest.approx(float(on), rel=1e-3)
    assert parts["off_diag"].item() == pytest.approx(float(off), rel=1e-3)
    assert loss.item() == pytest.approx(float(on + 0.1 * off), rel=1e-3)


def test_barlow_twins_is_zero_for_correlated_decorrelated_views_and_grows_with_redundancy():
    h = hadamard_columns(8)[:, :4]  # standardised, uncorrelated dims
    loss, parts = barlow_twins_loss(h, h)
    assert loss.item() == pytest.approx(0, abs=1e-6)
    # each dimension may be shifted and scaled independently: standardisation removes it
    loss, _ = barlow_twins_loss(h, h * torch.tensor([1.0, 2.0, 5.0, 0.1]) + 3.0)
    assert loss.item() == pytest.approx(0, abs=1e-6)
    # anti-correlated views: every C_ii = -1
    assert barlow_twins_loss(h, -h)[1]["on_diag"].item() == pytest.approx(16, abs=1e-3)
    # redundancy: dimension 1 increasingly copies dimension 0
    off = []
    for a in [0.0, 0.5, 1.0, 3.0]:
        z = h.clone()
        z[:, 1] = h[:, 1] + a * h[:, 0]
        _, parts = barlow_twins_loss(z, z)
        assert parts["on_diag"].item() == pytest.approx(0, abs=1e-6)
        off.append(parts["off_diag"].item())
    assert off[0] == pytest.approx(0, abs=1e-6)
    assert all(x < y for x, y in zip(off, off[1:])), off


def test_barlow_twins_dead_dimension_is_finite_and_default_lambda():
    z = randn(32, 4)
    z[:, 2] = 1.0  # a collapsed dimension
    loss, parts = barlow_twins_loss(z, z)
    assert torch.isfinite(loss)
    assert parts["on_diag"].item() == pytest.approx(1, abs=1e-3)  # (1 - 0)^2 from that dim
    assert loss.item() == pytest.approx((parts["on_diag"] + 5e-3 * parts["off_diag"]).item())


# ---------------------------------------------------------------- SimCLR


def nt_xent_reference(z1, z2, temperature):
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        positive = (i + b) % n
        denominator = sum(math.exp(float(z[i] @ z[j]) / temperature) for j in range(n) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[positive]) / temperature) / denominator)
    return total / n


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_a_hand_loop(temperature):
    z1, z2 = randn(3, 4), randn(3, 4, seed=1)
    assert nt_xent(z1, z2, temperature).item() == pytest.approx(nt_xent_reference(z1, z2, temperature), rel=1e-5)


def test_nt_xent_is_lower_for_aligned_pairs_and_symmetric():
    z1 = randn(16, 8)
    z2 = z1 + 0.1 * randn(16, 8, seed=1)
    shuffled = z2[torch.randperm(16, generator=torch.Generator().manual_seed(2))]
    assert nt_xent(z1, z2) < nt_xent(z1, shuffled)
    assert torch.allclose(nt_xent(z1, z2), nt_xent(z2, z1), atol=1e-6)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    nt_xent(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0  # both views are trained


# ---------------------------------------------------------------- MoCo v2


def test_infonce_with_queue_matches_a_hand_loop_and_blocks_key_gradients():
    q, k = randn(3, 4), randn(3, 4, seed=1)
    queue = F.normalize(randn(5, 4, seed=2), dim=1)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    expected = 0.0
    for i in range(3):
        logits = [float(qn[i] @ kn[i]) / 0.2] + [float(qn[i] @ w) / 0.2 for w in queue]
        expected += -logits[0] + math.log(sum(math.exp(x) for x in logits))
    q, k, queue = q.requires_grad_(), k.requires_grad_(), queue.requires_grad_()
    loss = infonce_with_queue(q, k, queue)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
    loss.backward()
    assert k.grad is None and queue.grad is None and q.grad.abs().sum() > 0


def test_infonce_is_log_of_candidates_when_nothing_is_similar():
    q = torch.tensor([[1.0, 0.0, 0.0]])
    k = torch.tensor([[0.0, 1.0, 0.0]])
    queue = torch.tensor([[0.0, 0.0, 1.0]] * 7)
    assert infonce_with_queue(q, k, queue).item() == pytest.approx(math.log(8), abs=1e-6)


def test_update_queue_is_a_ring_buffer():
    queue = torch.zeros(5, 2)
    keys = torch.arange(6.0).view(3, 2)
    new, pointer = update_queue(queue, keys, 0)
    assert pointer == 3 and torch.equal(new[:3], keys) and torch.equal(new[3:], torch.zeros(2, 2))
    assert torch.equal(queue, torch.zeros(5, 2)), "the input queue is not modified"
    more = 10 + torch.arange(6.0).view(3, 2)
    new, pointer = update_queue(new, more, pointer)  # rows 3, 4 then 0
    assert pointer == 1
    assert torch.equal(new, torch.stack([more[2], keys[1], keys[2], more[0], more[1]]))
    # after many pushes the queue holds exactly the last K keys
    queue, pointer, pushed = torch.zeros(6, 1), 0, []
    for step in range(7):
        batch = torch.full((4, 1), float(step)) + torch.arange(4.0)[:, None] / 10
        queue, pointer = update_queue(queue, batch, pointer)
        pushed.extend(batch[:, 0].tolist())
    assert sorted(queue[:, 0].tolist()) == pytest.approx(sorted(pushed[-6:]))
    with pytest.raises(ValueError, match="cannot push 7 keys into a queue of 5"):
        update_queue(torch.zeros(5, 2), torch.zeros(7, 2), 0)


# ---------------------------------------------------------------- SwAV


def test_sinkhorn_rows_sum_to_one_and_partition_is_equal():
    scores = F.normalize(randn(32, 8), dim=1) @ F.normalize(randn(8, 8, seed=1), dim=1).T
    codes = sinkhorn(scores)
    assert codes.shape == (32, 8) and (codes >= 0).all()
    assert torch.allclose(codes.sum(1), torch.ones(32), atol=1e-5)
    converged = sinkhorn(scores, iterations=200)
    assert torch.allclose(converged.sum(0), torch.full((8,), 32 / 8), atol=1e-3)
    # imbalance of prototype mass falls with iterations, starting below a plain softmax's
    imbalance = [
        (c.sum(0) - 4).abs().sum() for c in [F.softmax(scores / 0.05, dim=1), codes, sinkhorn(scores, iterations=10)]
    ]
    assert imbalance[0] > imbalance[1] > imbalance[2]


def test_sinkhorn_is_stable_and_ignores_a_constant_shift():
    scores = randn(16, 4)
    assert torch.allclose(sinkhorn(scores), sinkhorn(scores + 5.0), atol=1e-5)
    extreme = sinkhorn(scores * 50, iterations=50)  # exp(scores / eps) overflows
    assert torch.isfinite(extreme).all()
    assert torch.allclose(extreme.sum(1), torch.ones(16), atol=1e-5)
    assert not sinkhorn(scores.requires_grad_()).requires_grad


def test_swav_loss_is_the_swapped_cross_entropy():
    s1, s2 = randn(8, 5).requires_grad_(), randn(8, 5, seed=1)
    c1, c2 = sinkhorn(s1.detach()), sinkhorn(s2)
    c1.requires_grad_()
    loss = swav_loss(s1, s2, c1, c2, temperature=0.1)
    expected = (F.cross_entropy(s1 / 0.1, c2) + F.cross_entropy(s2 / 0.1, c1)) / 2
    assert torch.allclose(loss, expected, atol=1e-5)
    unswapped = (F.cross_entropy(s1 / 0.1, c1) + F.cross_entropy(s2 / 0.1, c2)) / 2
    assert not torch.allclose(loss, unswapped, atol=1e-3)
    loss.backward()
    assert c1.grad is None and s1.grad.abs().sum() > 0


# ---------------------------------------------------------------- DINO


def test_dino_loss_skips_same_view_pairs():
    student = [randn(3, 6, seed=s) for s in range(4)]  # 2 global + 2 local views
    teacher = [randn(3, 6, seed=10 + s) for s in range(2)]
    center, t_temp, s_temp = randn(1, 6, seed=20) * 0.1, 0.05, 0.1
    terms = []
    for g in range(2):
        for v in range(4):
            if v == g:
                continue
            for n in range(3):
                p = F.softmax((teacher[g][n] - center[0]) / t_temp, dim=0)
                log_q = F.log_softmax(student[v][n] / s_temp, dim=0)
                terms.append(-(p * log_q).sum() / 3)
    expected = sum(terms) / 6  # 2 x 3 pairs of different views
    loss = dino_loss(student, teacher, center, teacher_temp=t_temp, student_temp=s_temp)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dino_loss_gradient_reaches_the_student_only():
    student = [randn(4, 5, seed=s).requires_grad_() for s in range(3)]
    teacher = [randn(4, 5, seed=10 + s).requires_grad_() for s in range(2)]
    center = torch.zeros(1, 5, requires_grad=True)
    dino_loss(student, teacher, center, teacher_temp=0.04).backward()
    assert all(t.grad is None for t in teacher) and center.grad is None
    assert all(s.grad.abs().sum() > 0 for s in student)
    with pytest.raises(ValueError):
        dino_loss(student[:1], teacher[:1], center, teacher_temp=0.04)


def test_update_center_is_an_ema_of_the_teacher_batch_mean():
    teacher = [randn(4, 3), randn(4, 3, seed=1)]
    batch_mean = torch.cat(teacher).mean(0, keepdim=True)
    center = torch.ones(1, 3)
    assert torch.allclose(update_center(center, teacher), 0.9 * center + 0.1 * batch_mean)
    assert torch.allclose(update_center(center, teacher, momentum=0.0), batch_mean)
    for _ in range(200):
        center = update_center(center, teacher)
    assert torch.allclose(center, batch_mean, atol=1e-6)


@pytest.mark.parametrize("warmup", [0, 1, 2, 30])
def test_teacher_temperature_is_the_authors_schedule(warmup):
    """facebookresearch/dino DINOLoss: np.concatenate((np.linspace(0.04, 0.07, warmup),
    np.ones(epochs - warmup) * 0.07)), indexed by epoch."""
    epochs = 40
    schedule = np.concatenate((np.linspace(0.04, 0.07, warmup), np.ones(epochs - warmup) * 0.07))
    ours = [teacher_temperature(e, warmup, 0.04, 0.07) for e in range(epochs)]
    assert ours == pytest.approx(schedule.tolist(), abs=1e-12)
    assert teacher_temperature(100, warmup) == pytest.approx(0.07)


# ---------------------------------------------------------------- OBoW


def test_soft_assign_rows_sum_to_one_and_hard_limit_is_the_nearest_word():
    features, words = randn(50, 6), randn(10, 6, seed=1)
    codes, _ = soft_assign(features, words, inv_delta=10, mean_distance=0.5)
    assert codes.shape == (50, 10)
    assert torch.allclose(codes.sum(1), torch.ones(50), atol=1e-5)
    hard, _ = soft_assign(features, words, inv_delta=1e4, mean_distance=0.5)
    nearest = torch.cdist(features, words).argmin(1)
    assert torch.equal(hard.argmax(1), nearest)
    assert torch.allclose(hard, F.one_hot(nearest, 10).float(), atol=1e-4)


def test_soft_assign_running_mean_distance():
    features, words = randn(50, 6), randn(10, 6, seed=1)
    batch_min = torch.cdist(features, words).pow(2).min(1).values.mean()
    _, m = soft_assign(features, words, 10, mean_distance=0.5)
    assert m.item() == pytest.approx(0.99 * 0.5 + 0.01 * batch_min.item(), rel=1e-5)
    _, m = soft_assign(features, words, 10, mean_distance=0.5, decay=0.0)
    assert m.item() == pytest.approx(batch_min.item(), rel=1e-5)
    # the authors update m with this batch before assigning: the codes use the new m
    distances = torch.cdist(features, words).pow(2)
    codes, _ = soft_assign(features, words, 10, mean_distance=0.5, decay=0.0)
    assert torch.allclose(codes, F.softmax(-(10 / batch_min) * distances, dim=1), atol=1e-4)
    codes, m = soft_assign(features, words, 10, mean_distance=torch.tensor(0.7), decay=1.0)
    assert m.item() == pytest.approx(0.7)
    # dividing by m makes codes independent of the feature scale: scale features and words
    # by s, the distances and m by s^2, and the codes stay the same
    scaled, _ = soft_assign(3 * features, 3 * words, 10, mean_distance=9 * 0.7, decay=1.0)
    assert torch.allclose(codes, scaled, atol=1e-5)


def test_obow_targets_drop_the_border_and_max_pool():
    words = torch.eye(2, 3)  # word 0 = e0, word 1 = e1
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0] = 1.0  # every location is word 0 ...
    maps[0, :, 1:3, 1:3] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]  # ... except the centre
    targets, _ = obow_bow_targets(maps, words, inv_delta=100, mean_distance=1.0, decay=1.0)
    assert torch.allclose(targets, torch.tensor([[0.0, 1.0]]), atol=1e-4)
    # without dropping the border both words are present: max pooling gives presence,
    # not counts (12 border cells vs 4 centre cells would give 0.75 / 0.25)
    targets, _ = obow_bow_targets(maps, words, inv_delta=100, mean_distance=1.0, drop_border=0, decay=1.0)
    assert torch.allclose(targets, torch.tensor([[0.5, 0.5]]), atol=1e-4)


def test_obow_targets_shapes_and_normalisation():
    maps, words = randn(4, 8, 6, 6), randn(16, 8, seed=1)
    targets, m = obow_bow_targets(maps, words, inv_delta=10, mean_distance=0.5)
    assert targets.shape == (4, 16) and m.dim() == 0
    assert torch.allclose(targets.sum(1), torch.ones(4), atol=1e-5)
    flat = maps[:, :, 1:-1, 1:-1].flatten(2).transpose(1, 2).reshape(-1, 8)
    _, m_flat = soft_assign(flat, words, 10, 0.5)
    assert m.item() == pytest.approx(m_flat.item(), rel=1e-5)


def test_kl_to_target():
    targets = F.softmax(randn(4, 6), dim=1)
    assert kl_to_target(targets.log(), targets).item() == pytest.approx(0, abs=1e-6)
    logits = randn(4, 6, seed=1).requires_grad_()
    one_hot = F.one_hot(torch.tensor([0, 1, 2, 3]), 6).float()
    kl = kl_to_target(logits, one_hot)
    assert torch.isfinite(kl) and torch.allclose(kl, F.cross_entropy(logits, one_hot))
    kl = kl_to_target(logits, targets)
    entropy = -(targets * targets.log()).sum(1).mean()
    assert torch.allclose(kl, F.cross_entropy(logits, targets) - entropy, atol=1e-6)
    assert kl > 0


def test_perplexity():
    assert perplexity(torch.full((7,), 1 / 7)).item() == pytest.approx(7, rel=1e-5)
    assert perplexity(F.one_hot(torch.tensor(2), 5).float()).item() == pytest.approx(1)
    batch = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    assert torch.allclose(perplexity(batch), torch.tensor([2.0, 4.0]))


# ---------------------------------------------------------------- monitors, precision


def test_embedding_std_detects_collapse():
    assert embedding_std(randn(1, 64).expand(256, 64)).item() == pytest.approx(0, abs=1e-5)
    z = randn(4096, 64)
    assert embedding_std(z).item() == pytest.approx(1, abs=0.03)
    scales = torch.rand(4096, 1, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
    assert embedding_std(z * scales).item() == pytest.approx(embedding_std(z).item(), rel=1e-5)


def test_losses_run_in_float32_under_bf16_autocast():
    z1 = randn(64, 32)
    z2 = z1 + 0.01 * randn(64, 32, seed=1)
    exact, _ = barlow_twins_loss(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = barlow_twins_loss(z1, z2)
        nt = nt_xent(z1, z2, temperature=0.1)
    assert loss.dtype == torch.float32 and nt.dtype == torch.float32
    assert loss.item() == pytest.approx(exact.item(), rel=1e-5)


def obow_authors_loss(predictions, targets):
    """valeoai/obow builder_obow.py restated: `expand_target` repeats each image's target for
    its crops (image-major rows), `_bow_loss` is the level-mean of F.kl_div(log_softmax(p), t,
    reduction="batchmean") for one crop type, and the solver sums the crop types' losses."""

    def expand_target(target, prediction):
        num_crops = prediction.size(0) // target.size(0)
        if num_crops > 1:
            target = target.unsqueeze(1).repeat(1, num_crops, 1).view(-1, target.size(1))
        return target

    def bow_loss(prediction, target):
        return torch.stack(
            [
                F.kl_div(F.log_softmax(p, dim=1), expand_target(t, p), reduction="batchmean")
                for p, t in zip(prediction, target)
            ]
        ).mean()

    return torch.stack([bow_loss(pred, targets) for pred in predictions]).sum()


def test_obow_loss_matches_the_authors_combination_over_crop_types_and_levels():
    b, k, levels = 4, 12, 2
    targets = [F.softmax(randn(b, k, seed=40 + lv) * 3, dim=1) for lv in range(levels)]
    counts = [2, 5]  # 2 large crops, 5 patches
    ours = [[randn(n * b, k, seed=10 * n + lv) * 4 for lv in range(levels)] for n in counts]
    # ours are view-major (crop j of every image is a block of B rows); theirs image-major
    theirs = [
        [x.view(n, b, k).transpose(0, 1).reshape(n * b, k) for x in per_type] for n, per_type in zip(counts, ours)
    ]
    loss, terms = obow_loss(ours, targets)
    expected = obow_authors_loss(theirs, targets)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms.shape == (2, levels)
    # not a mean over the 7 crops' rows: the 2 crop types weigh the same
    per_row_mean = sum(
        kl_to_target(x, t.repeat(n, 1)) * n for n, per_type in zip(counts, ours) for x, t in zip(per_type, targets)
    ) / (7 * levels)
    assert abs(loss.item() - per_row_mean.item()) > 1e-3


def test_kl_to_target_is_torch_kl_div_batchmean_as_in_obow():
    logits, targets = randn(6, 9, seed=3) * 5, F.softmax(randn(6, 9, seed=4) * 2, dim=1)
    targets[0, :3] = 0  # zero entries: 0 log 0 = 0
    targets = targets / targets.sum(1, keepdim=True)
    expected = F.kl_div(F.log_softmax(logits, dim=1), targets, reduction="batchmean")
    assert kl_to_target(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- the authors' code, restated
# Each test below restates, step by step in plain torch, what the authors' public code
# computes (repository and file named in the docstring), and compares it with our function
# on random tensors. These are restatements of their formulas, not of our derivations.


def test_byol_matches_deepmind_regression_loss():
    """deepmind-research byol/utils/helpers.py: l2_normalize (x * rsqrt(max(sum x^2, 1e-12)))
    then sum((nx - ny)^2, -1); byol_experiment.py adds both directions, then jnp.mean."""

    def l2_normalize(x):
        return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=1e-12))

    def regression_loss(x, y):
        return ((l2_normalize(x) - l2_normalize(y)) ** 2).sum(-1)

    p1, p2, z1, z2 = (randn(16, 8, seed=s) * (s + 1) for s in range(4))
    theirs = (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()
    ours = byol_loss(p1, z2) + byol_loss(p2, z1)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


def test_simsiam_matches_facebookresearch_main_simsiam():
    """facebookresearch/simsiam main_simsiam.py: criterion = nn.CosineSimilarity(dim=1);
    loss = -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5."""
    criterion = torch.nn.CosineSimilarity(dim=1)
    p1, p2, z1, z2 = (randn(16, 8, seed=s) for s in range(4))
    theirs = -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5
    ours = (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


def test_barlow_twins_matches_facebookresearch_main():
    """facebookresearch/barlowtwins main.py: bn = BatchNorm1d(D, affine=False) (train mode:
    batch mean, biased variance, eps 1e-5); c = bn(z1).T @ bn(z2) / batch_size;
    on_diag = (diag(c) - 1)^2 summed; off_diag = off-diagonal c^2 summed;
    loss = on_diag + lambd * off_diag."""
    z1, z2 = randn(32, 16) * 3 + 1, randn(32, 16, seed=1) * 0.5
    bn = torch.nn.BatchNorm1d(16, affine=False).train()
    c = bn(z1).T @ bn(z2)
    c = c / 32
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    n = c.shape[0]
    off_diag = c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten().pow(2).sum()
    loss, parts = barlow_twins_loss(z1, z2, lambda_offdiag=0.0051)
    assert loss.item() == pytest.approx((on_diag + 0.0051 * off_diag).item(), rel=1e-6)
    assert parts["off_diag"].item() == pytest.approx(off_diag.item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_google_research_simclr_objective(temperature):
    """google-research/simclr objective.py add_contrastive_loss (one replica): h normalised;
    logits_aa = h1 h1^T / T - mask * LARGE_NUM, logits_bb likewise, logits_ab = h1 h2^T / T,
    logits_ba = h2 h1^T / T; labels one-hot over 2B at index i;
    loss_a = CE(labels, [logits_ab, logits_aa]), loss_b = CE(labels, [logits_ba, logits_bb]),
    each a batch mean; they return loss_a + loss_b. Ours is the mean over the 2B anchors,
    (loss_a + loss_b) / 2: half their scale (documented in docs/fidelity)."""
    large_num = 1e9
    z1, z2 = randn(8, 6) * 2, randn(8, 6, seed=1)
    h1, h2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    b = h1.shape[0]
    labels = F.one_hot(torch.arange(b), 2 * b).float()
    masks = F.one_hot(torch.arange(b), b).float()
    logits_aa = h1 @ h1.T / temperature - masks * large_num
    logits_bb = h2 @ h2.T / temperature - masks * large_num
    logits_ab = h1 @ h2.T / temperature
    logits_ba = h2 @ h1.T / temperature
    loss_a = -(labels * F.log_softmax(torch.cat([logits_ab, logits_aa], 1), dim=1)).sum(1).mean()
    loss_b = -(labels * F.log_softmax(torch.cat([logits_ba, logits_bb], 1), dim=1)).sum(1).mean()
    assert nt_xent(z1, z2, temperature).item() == pytest.approx(((loss_a + loss_b) / 2).item(), rel=1e-6)


def test_infonce_matches_facebookresearch_moco_builder():
    """facebookresearch/moco moco/builder.py forward: q, k normalised; l_pos = einsum(nc,nc->n)
    [N, 1]; l_neg = einsum(nc,ck->nk) with the queue stored [C, K]; logits = cat / T;
    labels zeros; main_moco.py: nn.CrossEntropyLoss (batch mean)."""
    q, k = randn(8, 16) * 3, randn(8, 16, seed=1)
    queue_ck = F.normalize(randn(16, 40, seed=2), dim=0)  # theirs: [dim, K]
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", qn, kn).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", qn, queue_ck)
    logits = torch.cat([l_pos, l_neg], dim=1) / 0.2
    theirs = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    ours = infonce_with_queue(q, k, queue_ck.T.contiguous(), temperature=0.2)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def swav_authors_sinkhorn(out, epsilon=0.05, iterations=3):
    """facebookresearch/swav main_swav.py distributed_sinkhorn, one process."""
    q = torch.exp(out / epsilon).t()  # K x B
    b, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True)
        q = q / k
        q = q / q.sum(dim=0, keepdim=True)
        q = q / b
    q = q * b
    return q.t()


def test_sinkhorn_matches_facebookresearch_swav():
    scores = F.normalize(randn(32, 8), dim=1) @ F.normalize(randn(10, 8, seed=1), dim=1).T  # [B, K]
    for iterations in (1, 3, 10):
        torch.testing.assert_close(
            sinkhorn(scores, iterations=iterations),
            swav_authors_sinkhorn(scores, iterations=iterations),
            rtol=1e-5,
            atol=1e-7,
        )


def test_swav_loss_matches_facebookresearch_swav_two_crops():
    """main_swav.py with nmb_crops [2], crops_for_assign [0, 1], no queue: for each crop_id,
    q = sinkhorn(output of crop_id); subloss over the other crop v of
    -mean(sum(q * log_softmax(output_v / T))), divided by (crops - 1); loss / len(crops_for_assign)."""
    bs = 16
    output = F.normalize(randn(2 * bs, 8), dim=1) @ F.normalize(randn(12, 8, seed=1), dim=1).T
    loss = 0
    for crop_id in (0, 1):
        q = swav_authors_sinkhorn(output[bs * crop_id : bs * (crop_id + 1)])
        subloss = 0
        for v in np.delete(np.arange(2), crop_id):
            x = output[bs * v : bs * (v + 1)] / 0.1
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (2 - 1)
    loss /= 2
    s1, s2 = output[:bs], output[bs:]
    ours = swav_loss(s1, s2, sinkhorn(s1), sinkhorn(s2), temperature=0.1)
    assert ours.item() == pytest.approx(loss.item(), rel=1e-6)


def test_dino_loss_matches_facebookresearch_dinoloss():
    """facebookresearch/dino main_dino.py DINOLoss.forward: student_out = cat(views) / T_s
    chunked into ncrops; teacher_out = softmax((t - center) / T_t) chunked into 2; for each
    teacher chunk iq and student chunk v != iq: sum(-q * log_softmax(s_v), -1).mean(),
    summed, divided by the number of terms; update_center: EMA with the batch mean."""
    ncrops, b, d = 5, 6, 20
    student = randn(ncrops * b, d) * 3
    teacher = randn(2 * b, d, seed=1) * 3
    center = randn(1, d, seed=2) * 0.3
    temp, student_temp = 0.04, 0.1
    student_out = (student / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher - center) / temp, dim=-1).detach().chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total_loss += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n_loss_terms += 1
    total_loss /= n_loss_terms
    their_center = center * 0.9 + teacher.sum(0, keepdim=True) / len(teacher) * (1 - 0.9)
    ours = dino_loss(list(student.split(b)), list(teacher.split(b)), center, temp, student_temp)
    assert ours.item() == pytest.approx(total_loss.item(), rel=1e-6)
    torch.testing.assert_close(update_center(center, list(teacher.split(b)), 0.9), their_center)


def test_obow_soft_assignment_matches_valeoai_bow_extractor():
    """valeoai/obow builder_obow.py BoWExtractor.forward (training): drop the 1-cell border;
    dist = ||f||^2 + conv2d(f, -2 * words, bias=||words||^2) [B, K, h, w]; m <- 0.99 m +
    0.01 mean(min_k dist); codes = softmax(-(inv_delta / m) * dist) over words; bow = max over
    locations, then F.normalize(p=1)."""
    maps, words = randn(3, 8, 6, 6), randn(16, 8, seed=1)
    inv_delta, m = 10.0, torch.tensor(0.5)
    f = maps[:, :, 1:-1, 1:-1].contiguous()
    dist = f.pow(2).sum(1, keepdim=True) + F.conv2d(f, weight=-2 * words[:, :, None, None], bias=words.pow(2).sum(1))
    m_new = m * 0.99 + dist.min(dim=1).values.mean() * 0.01
    codes = F.softmax(-(inv_delta / m_new) * dist, dim=1)
    bow = F.normalize(F.adaptive_max_pool2d(codes, 1).flatten(1), p=1, dim=1)
    ours, ours_m = obow_bow_targets(maps, words, inv_delta, m)
    torch.testing.assert_close(ours, bow, rtol=1e-5, atol=1e-6)
    assert ours_m.item() == pytest.approx(m_new.item(), rel=1e-6)


def test_rotnet_step_matches_gidariss_feature_learning_rotnet():
    """gidariss/FeatureLearningRotNet dataloader.py: each (augmented) image is followed by its
    rotations rotate_img(img, 90) = flipud(transpose(img)), 180 = fliplr(flipud(img)),
    270 = transpose(flipud(img)) (HWC numpy), labels [0, 1, 2, 3], image-major [B*4];
    ClassificationModel: nn.CrossEntropyLoss on the 4-way head. Our step must give the same
    loss from the same crop-and-flip (BN over the same 4B inputs, in another order)."""
    from bowflow import augment
    from bowflow.models import Normalizer
    from bowflow.networks import build_backbone
    from bowflow.roles.base import get_method

    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cls = get_method("rotnet")
    params = cls.Params(method="rotnet", width=4, batch_size=6)
    torch.manual_seed(0)
    method = cls(
        params, build_backbone("convnet", 4), cls.inputs(**{"normalizer": Normalizer.fit(images), "image_size": 12})
    )
    ours, _ = method.training_step(images, torch.arange(6), torch.Generator().manual_seed(1))

    x = augment.pad_crop_flip(
        augment.to_float(images), padding=params.padding, generator=torch.Generator().manual_seed(1)
    )  # the same crops
    h, w = -2, -1  # CHW: rows, columns

    def rotate_img(img, rot):
        if rot == 0:
            return img
        if rot == 90:
            return img.transpose(h, w).flip(h)
        if rot == 180:
            return img.flip(h).flip(w)
        return img.flip(h).transpose(h, w)

    batch = torch.stack([torch.stack([rotate_img(im, r) for r in (0, 90, 180, 270)]) for im in x])
    labels = torch.tensor([0, 1, 2, 3]).repeat(6)
    logits = method.head(method.backbone(method.normalizer.normalize(batch.view(24, 3, 12, 12))))
    assert ours.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_bownet_loss_is_the_papers_normalised_linear_soft_cross_entropy():
    """BoWNet (no public code; the paper's eq.): logits_k = gamma <w_k / ||w_k||, f> with f not
    normalised, loss = -sum_k y_k log softmax(logits)_k, batch mean."""
    from bowflow.bow import soft_cross_entropy
    from bowflow.methods.bownet import NormalizedLinear

    head = NormalizedLinear(8, 12, scale=10.0)
    f = randn(5, 8)
    y = F.softmax(randn(5, 12, seed=1) * 2, dim=1)
    w = head.weight / head.weight.norm(dim=1, keepdim=True)
    logits = (10.0 * (f @ w.T)).double()  # float64: exp of ~40 is fine
    theirs = -(y.double() * torch.log(torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True))).sum(1).mean()
    assert soft_cross_entropy(head(f), y).item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("chunk_rows", [1, 50, 2048])
def test_obow_targets_equal_soft_assign_on_every_location_chunk_by_chunk(monkeypatch, chunk_rows):
    """The chunked targets (never holding the [N, K] distances) against the formula: soft_assign
    on all B * h' * w' locations, max over each image's locations, L1-normalised."""
    import bowflow.methods.obow as obow

    monkeypatch.setattr(obow, "TARGET_CHUNK_ROWS", chunk_rows)  # 1 image, 3 images (a partial last chunk), all
    maps, words = randn(7, 8, 6, 6).relu(), randn(32, 8, seed=1).relu()
    targets, m = obow_bow_targets(maps, words, inv_delta=10, mean_distance=0.5, decay=0.9)
    flat = maps[:, :, 1:-1, 1:-1].flatten(2).transpose(1, 2).reshape(-1, 8)  # [7 * 16, 8]
    codes, m_ref = soft_assign(flat, words, 10, 0.5, decay=0.9)
    bow = codes.view(7, 16, 32).amax(1)
    assert m.item() == pytest.approx(m_ref.item(), rel=1e-6)
    assert torch.allclose(targets, bow / bow.sum(1, keepdim=True), atol=1e-6)
