"""Distillation losses (bowflow.distill_losses, bowflow.contrastive_distill): values on tiny
hand-computed cases, zeros and invariances where the maths says so, gradients that reach
the student only, CRD's memory banks and IFACD's SupCon."""

import math

import pytest
import torch
import torch.nn.functional as F

from bowflow.heads import EmbedHead
from bowflow.methods.at import attention_loss
from bowflow.methods.cc import cc_loss
from bowflow.methods.crd import ContrastiveMemory, _bank_scores, nce_loss, sample_negatives
from bowflow.methods.fitnet import HintAdapter, hint_loss
from bowflow.methods.ifacd import RescalerMLP, supcon_loss
from bowflow.methods.nst import nst_loss
from bowflow.methods.pkt import pkt_loss
from bowflow.methods.rkd import rkd_loss
from bowflow.methods.simclr import nt_xent
from bowflow.methods.sp import similarity_loss
from bowflow.methods.vid import VIDRegressor, vid_loss
from bowflow.roles.distiller import kd_loss, match_spatial


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def student_and_teacher(*shape):
    return randn(*shape).requires_grad_(), randn(*shape, seed=1).requires_grad_()


# Every loss whose teacher input is a raw teacher tensor must not send it a gradient.
TEACHER_DETACHED = {
    "kd": (lambda s, t: kd_loss(s, t), (6, 5)),
    "hint": (lambda s, t: hint_loss(s, t), (2, 3, 4, 4)),
    "attention": (lambda s, t: attention_loss([s], [t]), (2, 3, 4, 4)),
    "similarity": (lambda s, t: similarity_loss(s, t), (4, 3, 2, 2)),
    "rkd": (lambda s, t: rkd_loss(s, t), (5, 4)),
    "pkt": (lambda s, t: pkt_loss(s, t), (5, 4)),
    "nst": (lambda s, t: nst_loss(s, t), (2, 3, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(TEACHER_DETACHED))
def test_gradient_reaches_the_student_only_and_loss_is_positive(name):
    loss_fn, shape = TEACHER_DETACHED[name]
    s, t = student_and_teacher(*shape)
    loss = loss_fn(s, t)
    assert loss.dtype == torch.float32 and loss.item() > 1e-6
    loss.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert loss_fn(t.detach(), t.detach()).item() == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------- KD


def test_kd_loss_hand_value_temperature_scaling_and_shift_invariance():
    # p_t = softmax([2 ln 3, 0] / 2) = [3/4, 1/4]; p_s uniform; KL * T^2 with T = 2
    s = torch.zeros(1, 2)
    t = torch.tensor([[2 * math.log(3), 0.0]])
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert kd_loss(s, t, temperature=2).item() == pytest.approx(expected, rel=1e-5)
    logits = randn(4, 10)
    assert kd_loss(logits + 7.0, logits).item() == pytest.approx(0, abs=1e-5)
    # batchmean: repeating the batch does not change the value
    s, t = randn(3, 10), randn(3, 10, seed=1)
    assert torch.allclose(kd_loss(s, t), kd_loss(torch.cat([s, s]), torch.cat([t, t])))


# ---------------------------------------------------------------- FitNets


@pytest.mark.parametrize(
    "ratio, side, conv",
    [(1, 4, torch.nn.Conv2d), (2, 8, torch.nn.Conv2d), (0.5, 2, torch.nn.ConvTranspose2d), (4, 16, torch.nn.Conv2d)],
)  # other ratios: pooled to the teacher's size, 1x1 conv
def test_hint_adapter_is_convreg_shaped(ratio, side, conv):
    adapter = HintAdapter(3, 5, ratio)
    assert type(adapter.conv) is conv and adapter.conv.bias is not None
    kernel = {1: 1, 2: 3, 0.5: 4, 4: 1}[ratio]
    assert adapter.conv.kernel_size == (kernel, kernel)
    out = adapter(randn(2, 3, side, side), size=(4, 4))
    assert out.shape == (2, 5, 4, 4) and out.min() >= 0  # ReLU last, as ConvReg


def test_hint_adapter_learns_a_linear_hint():
    torch.manual_seed(0)
    student = randn(8, 3, 4, 4)
    teacher = torch.einsum("tc,bchw->bthw", randn(5, 3, seed=1), student).relu()  # [8, 5, 4, 4]
    adapter = HintAdapter(3, 5)
    optimiser = torch.optim.Adam(adapter.parameters(), lr=0.1)
    values = []
    for _ in range(10):
        loss = hint_loss(adapter(student, size=(4, 4)), teacher)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        values.append(loss.item())
    assert values[-1] < 0.3 * values[0]
    with pytest.raises(ValueError, match="adapt the student map"):
        hint_loss(randn(8, 3, 8, 8), teacher)


# ---------------------------------------------------------------- AT


def test_attention_loss_hand_value_invariances_and_sum_over_stages():
    s = torch.tensor([[[[1.0, 0.0]]]])  # attention [1, 0]
    t = torch.tensor([[[[1.0, 1.0]]]])  # attention [1, 1] / sqrt 2
    assert attention_loss([s], [t]).item() == pytest.approx((2 - math.sqrt(2)) / 2, rel=1e-5)
    # scale and channel count do not matter: the channel mean of squares is normalised
    f = randn(2, 3, 4, 4)
    assert attention_loss([f], [3 * f.repeat(1, 2, 1, 1)]).item() == pytest.approx(0, abs=1e-7)
    # sign does not matter for |a|^p, with p = 1 as well as p = 2
    assert attention_loss([f], [-f], p=1).item() == pytest.approx(0, abs=1e-7)
    # a student map twice the teacher's size, constant on 2 x 2 blocks, is pooled to it
    g = randn(2, 3, 2, 2, seed=1)
    big = g.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert attention_loss([big], [g]).item() == pytest.approx(0, abs=1e-7)
    assert attention_loss([g], [big]).item() == pytest.approx(0, abs=1e-7)
    a, b, c, d = (randn(2, 3, 4, 4, seed=i) for i in range(4))
    both = attention_loss([a, b], [c, d])
    assert both.item() == pytest.approx((attention_loss([a], [c]) + attention_loss([b], [d])).item(), rel=1e-6)
    with pytest.raises(ValueError, match="as many student as teacher stages"):
        attention_loss([a, b], [c])


# ---------------------------------------------------------------- SP


def test_similarity_loss_hand_value_and_scale_invariance():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G_s = I
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G_t rows [1, 1] / sqrt 2
    assert similarity_loss(s, t).item() == pytest.approx((2 - math.sqrt(2)) / 2, rel=1e-5)
    f = randn(6, 3, 4, 4)
    assert similarity_loss(f, 5 * f).item() == pytest.approx(0, abs=1e-6)
    # shapes may differ between networks: only the B x B Gram is compared
    assert similarity_loss(f, randn(6, 7, 2, 2, seed=1)).item() > 0


# ---------------------------------------------------------------- CC


def test_cc_hand_value_zero_and_gradients_to_both_heads():
    # |s - t| rows: [1, 2], [3, 0], [1, 1]: neighbouring products sum to 3 and 3, mean 3
    s = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert cc_loss(s, t).item() == pytest.approx(3.0)
    a, b = randn(8, 16).requires_grad_(), randn(8, 16, seed=1).requires_grad_()
    assert cc_loss(a, a.detach()).item() == 0
    cc_loss(a, b).backward()  # the teacher side comes from a trainable head
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 2"):
        cc_loss(a[:1], b[:1])


def test_cc_embed_heads_are_unnormalised_linear_maps():
    head = EmbedHead(12, dim=6, normalize=False)
    x = randn(4, 12)
    assert torch.allclose(head(x), head.linear(x)) and not torch.allclose(head(x).norm(dim=1), torch.ones(4))


# ---------------------------------------------------------------- VID


def test_vid_loss_hand_value_and_optimal_variance():
    mean, target = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    assert vid_loss(mean, torch.ones(1, 1, 1, 1), target).item() == pytest.approx(2.0)
    var = torch.full((1, 1, 1, 1), 4.0, requires_grad=True)  # = squared error: optimum
    loss = vid_loss(mean, var, target)
    assert loss.item() == pytest.approx(0.5 * (1 + math.log(4)), rel=1e-6)
    loss.backward()
    assert var.grad.abs().item() < 1e-6


def test_vid_regressor_initial_variance_shapes_and_gradients():
    regressor = VIDRegressor(3, 5, c_mid=4)
    s, t = randn(2, 3, 8, 8).requires_grad_(), randn(2, 5, 4, 4, seed=1).requires_grad_()
    s_pooled, t = match_spatial(s, t)
    mean, var = regressor(s_pooled)
    assert mean.shape == t.shape and var.shape == (1, 5, 1, 1)
    assert torch.allclose(var, torch.full_like(var, 5.0), atol=1e-5)
    vid_loss(mean, var, t).backward()
    assert t.grad is None and s.grad.abs().sum() > 0 and regressor.raw_var.grad.abs().sum() > 0


# ---------------------------------------------------------------- RKD


def test_rkd_hand_value_on_collinear_points():
    # distances t: 1, 2, 1 (mean 4/3), s: 1, 3, 2 (mean 2); normalised differences
    # -1/4, 0, 1/4, each pair twice: smooth-L1 4 * (1/2)(1/16) over 9 entries = 1/72.
    # collinear points in the same order have the same angles: angle loss 0.
    t = torch.tensor([[0.0], [1.0], [2.0]])
    s = torch.tensor([[0.0], [1.0], [3.0]])
    assert rkd_loss(s, t).item() == pytest.approx(25 / 72, rel=1e-4)
    assert rkd_loss(s, t, w_distance=0).item() == pytest.approx(0, abs=1e-6)


def test_rkd_is_invariant_to_rotation_translation_and_scale():
    t = randn(6, 4)
    rotation, _ = torch.linalg.qr(randn(4, 4, seed=1))
    s = 3 * t @ rotation + 2.0
    assert rkd_loss(s, t).item() == pytest.approx(0, abs=1e-4)
    assert rkd_loss(randn(6, 4, seed=2), t).item() > 0.1


# ---------------------------------------------------------------- PKT


def test_pkt_hand_value_and_per_sample_scale_invariance():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # rows of P: [2/3, 1/3], [1/3, 2/3]
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # rows of P: [1/2, 1/2]
    row_kl = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    assert pkt_loss(s, t).item() == pytest.approx(2 * row_kl / 4, rel=1e-4)
    t = randn(8, 5)
    scales = torch.rand(8, 1, generator=torch.Generator().manual_seed(1)) + 0.1
    assert pkt_loss(t * scales, t).item() == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------- NST


def test_nst_hand_values_and_channel_order_invariance():
    one, other = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 1.0]]]])
    assert nst_loss(one, other).item() == pytest.approx(2.0)  # 1 + 1 - 2 * 0
    assert nst_loss(one, torch.tensor([[[[1.0, 1.0]]]])).item() == pytest.approx(1.0)
    f = randn(2, 6, 4, 4)
    assert nst_loss(f[:, torch.randperm(6)], 2 * f).item() == pytest.approx(0, abs=1e-6)
    assert nst_loss(randn(2, 3, 8, 8, seed=1), f).item() > 0  # other C and H x W


# ---------------------------------------------------------------- CRD


def test_nce_loss_matches_the_probability_form():
    log_scores = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    n_data, k = 4, 2
    noise = k / n_data
    expected = 0.0
    for row in log_scores.exp().tolist():
        expected -= math.log(row[0] / (row[0] + noise))
        expected -= sum(math.log(noise / (p + noise)) for p in row[1:])
    assert nce_loss(log_scores, n_data).item() == pytest.approx(expected / 2, rel=1e-5)
    assert torch.isfinite(nce_loss(torch.full((2, 3), 1 / 0.07 * 50), n_data))


@pytest.mark.parametrize("n_data", [3, 100])  # [B, N] product then pick; gathered rows
def test_bank_scores_pick_the_right_rows(n_data):
    memory, emb = randn(n_data, 4), randn(2, 4, seed=1)
    rows = torch.randint(0, n_data, (2, 3), generator=torch.Generator().manual_seed(2))
    expected = torch.stack([torch.stack([memory[r] @ emb[b] for r in rows[b]]) for b in range(2)])
    assert torch.allclose(_bank_scores(memory, rows, emb), expected, atol=1e-6)


def test_negatives_avoid_the_own_index_and_are_reproducible():
    index = torch.tensor([0, 3, 9])
    draw = sample_negatives(index, 10, 500, torch.Generator().manual_seed(0))
    assert draw.shape == (3, 500) and draw.min() >= 0 and draw.max() <= 9
    assert not (draw == index.unsqueeze(1)).any()
    assert len(draw[1].unique()) == 9  # every other index occurs
    again = sample_negatives(index, 10, 500, torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)
    assert not torch.equal(draw, sample_negatives(index, 10, 500, torch.Generator().manual_seed(1)))
    assert ContrastiveMemory(n_data=5).n_negatives == 4  # 16384 clamped to N - 1


@pytest.mark.parametrize("n", [20, 200])  # B(1 + K) = 21: [B, N] product path; gather path
def test_contrastive_memory_update_state_dict_and_determinism(n):
    dim = 8
    memory = ContrastiveMemory(n, dim, n_negatives=6)
    assert {"memory_s", "memory_t", "log_z_s", "log_z_t"} <= set(memory.state_dict())
    index = torch.tensor([2, 5, 11])
    s = F.normalize(randn(3, dim), dim=1).requires_grad_()
    t = F.normalize(randn(3, dim, seed=1), dim=1).requires_grad_()
    old_s, old_t = memory.memory_s.clone(), memory.memory_t.clone()
    resumed = ContrastiveMemory(n, dim, n_negatives=6, seed=123)
    resumed.load_state_dict(memory.state_dict())  # a resume before step 1

    loss = memory(s, t, index, generator=torch.Generator().manual_seed(7))
    loss.backward()
    assert torch.isfinite(loss) and s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    expected = F.normalize(0.5 * old_s[index] + 0.5 * s.detach(), dim=1)
    assert torch.allclose(memory.memory_s[index], expected, atol=1e-6)
    assert torch.allclose(memory.memory_t[index], F.normalize(0.5 * old_t[index] + 0.5 * t.detach(), dim=1), atol=1e-6)
    others = torch.ones(n, dtype=torch.bool)
    others[index] = False
    assert torch.equal(memory.memory_s[others], old_s[others])
    assert torch.isfinite(memory.log_z_s) and torch.isfinite(memory.log_z_t)

    again = resumed(s.detach(), t.detach(), index, generator=torch.Generator().manual_seed(7))
    assert again.item() == loss.item()
    for name, value in memory.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    # Z is fixed by the first batch; update=False leaves the banks alone
    log_z, bank = memory.log_z_s.clone(), memory.memory_s.clone()
    memory(s.detach(), t.detach(), index, generator=torch.Generator().manual_seed(8), update=False)
    assert torch.equal(memory.log_z_s, log_z) and torch.equal(memory.memory_s, bank)


def test_crd_loss_is_lower_when_the_student_matches_its_teacher_row():
    memory = ContrastiveMemory(50, 16, n_negatives=20)
    index = torch.arange(8)
    t = memory.memory_s[index].clone()  # teacher agrees with bank
    generator = torch.Generator().manual_seed(0)
    memory(F.normalize(randn(8, 16), dim=1), t, index, update=False, generator=generator)
    matched = memory(memory.memory_t[index].clone(), t, index, update=False, generator=torch.Generator().manual_seed(1))
    unmatched = memory(
        F.normalize(randn(8, 16, seed=2), dim=1), t, index, update=False, generator=torch.Generator().manual_seed(1)
    )
    assert matched < unmatched


def test_embed_head_and_rescaler_shapes_and_unit_norm():
    head = EmbedHead(12, dim=6)
    assert torch.allclose(head(randn(4, 12)).norm(dim=1), torch.ones(4), atol=1e-6)
    for norm, act in [("bn", "relu"), ("ln", "gelu")]:
        rescaler = RescalerMLP(12, dim=6, hidden=10, norm=norm, act=act)
        for x in (randn(4, 12, 3, 3), randn(4, 5, 12), randn(4, 12)):  # map, tokens, pooled
            z = rescaler(x)
            assert z.shape == (4, 6) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-6)
    types = [type(m) for m in RescalerMLP(12, norm="ln", act="gelu").mlp]
    assert types == [torch.nn.Linear, torch.nn.LayerNorm, torch.nn.GELU, torch.nn.Linear]
    with pytest.raises(ValueError, match="norm must be one of"):
        RescalerMLP(12, norm="gn")


# ---------------------------------------------------------------- IFACD / SupCon


def supcon_by_hand(vectors, groups, temperature):
    z = [(x / math.hypot(x, y), y / math.hypot(x, y)) for x, y in vectors]
    total = 0.0
    for i in range(len(z)):
        dots = {a: (z[i][0] * z[a][0] + z[i][1] * z[a][1]) / temperature for a in range(len(z)) if a != i}
        log_denominator = math.log(sum(math.exp(x) for x in dots.values()))
        positives = [p for p in dots if groups[p] == groups[i]]
        total += -sum(dots[p] - log_denominator for p in positives) / len(positives)
    return total / len(z)


def test_supcon_two_images_two_views_by_hand():
    # image 0: student view, teacher view; image 1: the same. Row order image-major.
    vectors = [(1.0, 0.0), (0.8, 0.6), (0.0, 1.0), (-0.6, 0.8)]
    views = torch.tensor(vectors).view(2, 2, 2)

    # dots / T (T = 0.5): z0.z1 = z2.z3 = 0.8 -> 1.6 (the positive pairs), z1.z2 = 0.6 ->
    # 1.2, z0.z3 = -0.6 -> -1.2, z0.z2 = z1.z3 = 0. Anchors 0 and 3 see {1.6, 0, -1.2},
    # anchors 1 and 2 see {1.6, 1.2, 0}; each has one positive, at 1.6.
    def lse(*x):
        return math.log(sum(math.exp(v) for v in x))

    by_hand = (lse(1.6, 0, -1.2) + lse(1.6, 1.2, 0)) / 2 - 1.6
    assert supcon_loss(views, temperature=0.5).item() == pytest.approx(by_hand, rel=1e-5)
    assert supcon_by_hand(vectors, [0, 0, 1, 1], 0.5) == pytest.approx(by_hand)
    # labels: both images in one class -> the three other views are all positives
    same = supcon_by_hand(vectors, [0, 0, 0, 0], 0.5)
    assert supcon_loss(views, torch.tensor([4, 4]), 0.5).item() == pytest.approx(same, rel=1e-5)
    # distinct labels are the unlabelled loss; the default temperature is 0.07
    assert supcon_loss(views, torch.tensor([1, 2])).item() == pytest.approx(
        supcon_by_hand(vectors, [0, 0, 1, 1], 0.07), rel=1e-5
    )


def test_supcon_with_two_views_is_nt_xent_and_trains_every_view():
    student, teacher = randn(6, 8), randn(6, 8, seed=1)
    views = torch.stack([student, teacher], dim=1)
    assert supcon_loss(views, temperature=0.2).item() == pytest.approx(
        nt_xent(student, teacher, temperature=0.2).item(), rel=1e-5
    )
    three = torch.stack([student, teacher, randn(6, 8, seed=2)], dim=1).requires_grad_()
    supcon_loss(three).backward()
    assert (three.grad.abs().sum(dim=(0, 2)) > 0).all()
    # aligned views of each image give a lower loss than shuffled ones
    aligned = torch.stack([student, student + 0.1 * teacher], dim=1)
    shuffled = torch.stack([student, (student + 0.1 * teacher)[torch.arange(6).roll(1)]], dim=1)
    assert supcon_loss(aligned) < supcon_loss(shuffled)
    with pytest.raises(ValueError, match="at least 2 views"):
        supcon_loss(views[:, :1])


def test_crd_negatives_come_from_other_classes_uniformly_and_reproducibly():
    from bowflow.methods.crd import OtherClassSampler

    labels = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 0, 1])
    sampler = OtherClassSampler(labels)
    index = torch.tensor([0, 1, 2, 9])
    draw = sampler(index, 3000, torch.Generator().manual_seed(0))
    assert draw.shape == (4, 3000)
    assert not (labels[draw] == labels[index].unsqueeze(1)).any()  # never the own class
    for row, i in zip(draw, index):  # every other-class image,
        others = (labels != labels[i]).nonzero().flatten()  # about equally often
        counts = torch.bincount(row, minlength=len(labels))[others].float()
        assert set(row.unique().tolist()) == set(others.tolist())
        assert counts.min() > 0.7 * counts.mean()
    assert torch.equal(draw, sampler(index, 3000, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="same label"):
        OtherClassSampler(torch.zeros(5, dtype=torch.long))


def test_crd_views_draw_the_crops_then_each_images_negatives():
    """CRD's only random draws, in `views` for the whole (global) batch: the crops, then
    [B, K] other-class negatives from the same generator, so that processes keep their rows
    of both and one process draws what it drew before views and step were split."""
    from bowflow import augment
    from tests.test_method_contract import build, data

    images, labels = data()
    method, _ = build("crd", images, labels, epochs=1)
    index = torch.tensor([5, 0, 17, 42, 8, 3])
    views = method.views(images[index], index, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    crops = augment.pad_crop_flip(augment.to_float(images[index]), padding=method.params.padding, generator=generator)
    negatives = method.sample_negatives(index, method.memory.n_negatives, generator)
    assert set(views) == {"crops", "negatives"}
    assert torch.equal(views["crops"], crops) and torch.equal(views["negatives"], negatives)
    assert views["negatives"].shape == (len(index), min(method.params.negatives, len(images) - 1))
    assert not (labels[views["negatives"]] == labels[index].unsqueeze(1)).any()


# ---------------------------------------------------------------- against the reference code
# Each `ref_*` restates, step by step in plain torch (float64), what the benchmark's code
# computes: RepDistiller's distiller_zoo/<X>.py, crd/{criterion,memory}.py, and
# SupContrast's losses.py (SupConLoss, which the IFACD authors' code calls). Our float32
# functions must agree on random tensors to ~1e-6 (relative).


def close(ours, reference, rtol=2e-6, atol=1e-8):
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), reference.double(), rtol=rtol, atol=atol)


def d64(*tensors):
    return [t.double() for t in tensors]


def ref_pool_larger(f_s, f_t):
    """RepDistiller's AT / NST / VID size rule: compare heights, pool the larger."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


def ref_kd(y_s, y_t, temperature):  # DistillKL
    log_p_s = F.log_softmax(y_s / temperature, dim=1)
    p_t = F.softmax(y_t / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / y_s.shape[0]


def test_kd_matches_the_reference():
    s, t = randn(16, 100) * 3, randn(16, 100, seed=1) * 3
    for temperature in (1.0, 4.0):
        close(kd_loss(s, t, temperature), ref_kd(*d64(s, t), temperature))


def test_hint_matches_the_reference():  # HintLoss: nn.MSELoss()
    s, t = randn(4, 8, 5, 5), randn(4, 8, 5, 5, seed=1)
    s64, t64 = d64(s, t)
    close(hint_loss(s, t), ((s64 - t64) ** 2).sum() / s64.numel())


def ref_at(g_s, g_t, p=2):  # Attention, summed as loops.py
    total = 0
    for f_s, f_t in zip(g_s, g_t):
        f_s, f_t = ref_pool_larger(f_s, f_t)
        a_s = F.normalize(f_s.pow(p).mean(1).view(f_s.size(0), -1))
        a_t = F.normalize(f_t.pow(p).mean(1).view(f_t.size(0), -1))
        total = total + (a_s - a_t).pow(2).mean()
    return total


def test_attention_matches_the_reference():
    g_s = [randn(4, 3, 8, 8), randn(4, 6, 4, 4, seed=2), randn(4, 6, 4, 4, seed=4)]
    g_t = [randn(4, 5, 8, 8, seed=1), randn(4, 7, 8, 8, seed=3), randn(4, 9, 2, 2, seed=5)]
    close(attention_loss(g_s, g_t), ref_at(d64(*g_s), d64(*g_t)))


def ref_sp(f_s, f_t):  # Similarity
    bsz = f_s.shape[0]
    f_s, f_t = f_s.view(bsz, -1), f_t.view(bsz, -1)
    g_s = F.normalize(torch.mm(f_s, f_s.t()))
    g_t = F.normalize(torch.mm(f_t, f_t.t()))
    diff = g_t - g_s
    return (diff * diff).view(-1, 1).sum(0)[0] / (bsz * bsz)


def test_similarity_matches_the_reference():
    s, t = randn(8, 4, 3, 3), randn(8, 6, 2, 2, seed=1)
    close(similarity_loss(s, t), ref_sp(*d64(s, t)))


def ref_cc(f_s, f_t):  # Correlation
    delta = torch.abs(f_s - f_t)
    return torch.mean((delta[:-1] * delta[1:]).sum(1))


def test_cc_matches_the_reference():
    s, t = randn(16, 128) * 5, randn(16, 128, seed=1) * 5
    close(cc_loss(s, t), ref_cc(*d64(s, t)))


@pytest.mark.parametrize("s_side, t_side", [(4, 4), (8, 4), (4, 8)])
def test_vid_matches_the_reference(s_side, t_side):  # VIDLoss(s, t, t)
    regressor = VIDRegressor(3, 5)
    with torch.no_grad():
        regressor.raw_var.copy_(randn(5, seed=3))  # not the constant init
    s, t = randn(2, 3, s_side, s_side), randn(2, 5, t_side, t_side, seed=1)
    s_pooled, t_pooled = match_spatial(s, t)
    ours = vid_loss(*regressor(s_pooled), t_pooled)
    s64, t64 = ref_pool_larger(*d64(s, t))
    regressor64 = regressor.double()
    pred_mean = regressor64.mean(s64)
    pred_var = (torch.log(1.0 + torch.exp(regressor64.raw_var)) + regressor64.eps).view(1, -1, 1, 1)
    neg_log_prob = 0.5 * ((pred_mean - t64) ** 2 / pred_var + torch.log(pred_var))
    close(ours, torch.mean(neg_log_prob))


def ref_rkd(f_s, f_t, w_d=25, w_a=50):  # RKDLoss
    def pdist(e, eps=1e-12):
        e_square = e.pow(2).sum(dim=1)
        res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
        res = res.sqrt().clone()
        res[range(len(e)), range(len(e))] = 0
        return res

    student, teacher = f_s.view(f_s.shape[0], -1), f_t.view(f_t.shape[0], -1)
    t_d = pdist(teacher)
    t_d = t_d / t_d[t_d > 0].mean()
    d = pdist(student)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)

    def angles(x):
        diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).view(-1)

    loss_a = F.smooth_l1_loss(angles(student), angles(teacher))
    return w_d * loss_d + w_a * loss_a


def test_rkd_matches_the_reference():
    s, t = randn(12, 6), randn(12, 10, seed=1) * 4
    close(rkd_loss(s, t), ref_rkd(*d64(s, t)))


def ref_pkt(output_net, target_net, eps=1e-7):  # PKT.cosine_similarity_loss
    output_net = output_net / (torch.sqrt(torch.sum(output_net**2, dim=1, keepdim=True)) + eps)
    target_net = target_net / (torch.sqrt(torch.sum(target_net**2, dim=1, keepdim=True)) + eps)
    model_similarity = (torch.mm(output_net, output_net.t()) + 1.0) / 2.0
    target_similarity = (torch.mm(target_net, target_net.t()) + 1.0) / 2.0
    model_similarity = model_similarity / model_similarity.sum(dim=1, keepdim=True)
    target_similarity = target_similarity / target_similarity.sum(dim=1, keepdim=True)
    return torch.mean(target_similarity * torch.log((target_similarity + eps) / (model_similarity + eps)))


def test_pkt_matches_the_reference():
    s, t = randn(16, 32), randn(16, 64, seed=1)
    close(pkt_loss(s, t), ref_pkt(*d64(s, t)))


def ref_nst(f_s, f_t):  # NSTLoss.nst_loss, full_loss
    f_s, f_t = ref_pool_larger(f_s, f_t)
    f_s = F.normalize(f_s.view(f_s.shape[0], f_s.shape[1], -1), dim=2)
    f_t = F.normalize(f_t.view(f_t.shape[0], f_t.shape[1], -1), dim=2)

    def poly_kernel(a, b):
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

    return poly_kernel(f_t, f_t).mean() + poly_kernel(f_s, f_s).mean() - 2 * poly_kernel(f_s, f_t).mean()


def test_nst_matches_the_reference():
    for s, t in [
        (randn(3, 4, 8, 8), randn(3, 6, 4, 4, seed=1)),
        (randn(3, 5, 4, 4, seed=2), randn(3, 5, 4, 4, seed=3)),
    ]:
        close(nst_loss(s, t), ref_nst(*d64(s, t)))


def ref_contrast_loss(x, n_data, eps=1e-7):  # crd ContrastLoss
    bsz, m = x.shape[0], x.size(1) - 1
    pn = 1 / float(n_data)
    p_pos = x.select(1, 0)
    log_d1 = torch.div(p_pos, p_pos.add(m * pn + eps)).log()
    p_neg = x.narrow(1, 1, m)
    log_d0 = torch.div(p_neg.clone().fill_(m * pn), p_neg.add(m * pn + eps)).log()
    return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0))[0] / bsz


def test_crd_nce_matches_the_reference():
    n_data, k = 256, 128  # K / N = 0.5: the reference's eps negligible
    x = torch.rand(8, 1 + k, generator=torch.Generator().manual_seed(0)) * 2
    close(nce_loss(x.log(), n_data), ref_contrast_loss(x.double(), n_data))


def test_crd_memory_matches_the_reference_memory_and_loss():
    """crd/memory.py ContrastMemory.forward (the first batch, which fixes Z) + CRDLoss's two
    ContrastLoss terms, given the same banks, embeddings and indices."""
    n_data, dim, k, temperature, momentum = 64, 8, 40, 0.07, 0.5
    memory = ContrastiveMemory(n_data, dim, n_negatives=k, temperature=temperature, momentum=momentum)
    v1 = F.normalize(randn(6, dim, seed=1), dim=1)  # student embedding
    v2 = F.normalize(randn(6, dim, seed=2), dim=1)  # teacher embedding
    y = torch.tensor([3, 10, 17, 20, 41, 63])
    negatives = torch.randint(0, n_data, (6, k), generator=torch.Generator().manual_seed(3))
    memory_v1, memory_v2 = memory.memory_s.double().clone(), memory.memory_t.double().clone()

    ours = memory(v1, v2, y, negatives=negatives)

    v1_64, v2_64 = d64(v1, v2)
    idx = torch.cat([y.unsqueeze(1), negatives], dim=1)
    weight_v1 = torch.index_select(memory_v1, 0, idx.view(-1)).view(6, k + 1, dim)
    out_v2 = torch.exp(torch.bmm(weight_v1, v2_64.view(6, dim, 1)) / temperature)
    weight_v2 = torch.index_select(memory_v2, 0, idx.view(-1)).view(6, k + 1, dim)
    out_v1 = torch.exp(torch.bmm(weight_v2, v1_64.view(6, dim, 1)) / temperature)
    z_v1, z_v2 = out_v1.mean() * n_data, out_v2.mean() * n_data
    out_v1, out_v2 = (out_v1 / z_v1).squeeze(2), (out_v2 / z_v2).squeeze(2)
    reference = ref_contrast_loss(out_v1, n_data) + ref_contrast_loss(out_v2, n_data)
    close(ours, reference)
    for bank, old, v in ((memory.memory_s, memory_v1, v1_64), (memory.memory_t, memory_v2, v2_64)):
        l_pos = old[y] * momentum + v * (1 - momentum)
        expected = l_pos / l_pos.pow(2).sum(1, keepdim=True).pow(0.5)
        torch.testing.assert_close(bank[y].double(), expected, rtol=1e-6, atol=1e-7)


def ref_supcon(features, labels=None, temperature=0.07, base_temperature=0.07):
    """SupContrast losses.py SupConLoss, contrast_mode 'all' (the IFACD authors' call)."""
    batch_size, contrast_count = features.shape[0], features.shape[1]
    if labels is None:
        mask = torch.eye(batch_size, dtype=features.dtype)
    else:
        labels = labels.contiguous().view(-1, 1)
        mask = torch.eq(labels, labels.T).to(features.dtype)
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature, anchor_count = contrast_feature, contrast_count
    anchor_dot_contrast = torch.matmul(anchor_feature, contrast_feature.T) / temperature
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(batch_size * anchor_count).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()


@pytest.mark.parametrize("views", [2, 3])
def test_supcon_matches_the_reference(views):
    # the IFACD authors normalise the stacked views before SupConLoss
    z = F.normalize(randn(10, views, 16), dim=2)
    close(supcon_loss(z, None, 0.07), ref_supcon(z.double()))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 0, 4])
    close(supcon_loss(z, labels, 0.07), ref_supcon(z.double(), labels))
