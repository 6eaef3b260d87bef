"""OBoW-specific checks: EMA teacher, queue vocabularies, views, targets, export."""

import pytest
import torch

from bowflow.heads import cosine_momentum
from bowflow.methods.obow import grid_cells
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import get_method


def build(size=16, batch=8, **overrides):
    cls = get_method("obow")
    params = cls.Params(method="obow", width=4, batch_size=batch, num_words=4 * batch, **overrides)
    params.validate()
    torch.manual_seed(0)
    images = torch.randint(
        0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    method = cls(
        params, build_backbone("convnet", 4), cls.inputs(**{"normalizer": Normalizer.fit(images), "image_size": size})
    )
    return method, images


def step(method, images, seed=0):
    loss, stats = method.training_step(images, torch.arange(len(images)), torch.Generator().manual_seed(seed))
    loss.backward()
    return loss, stats


def test_teacher_gets_no_gradient_and_follows_the_momentum_schedule():
    method, images = build()
    assert all(not p.requires_grad for p in method.teacher.parameters())
    step(method, images)
    assert all(p.grad is None for p in method.teacher.parameters())
    with torch.no_grad():  # move the student away from the teacher
        for p in method.backbone.parameters():
            p.add_(1.0)
    before = [t.clone() for t in method.teacher.parameters()]
    method.after_step(3, 10)
    m = cosine_momentum(3, 10, 0.99)
    assert float(method.momentum) == pytest.approx(m)
    for old, new, s in zip(before, method.teacher.parameters(), method.backbone.parameters()):
        torch.testing.assert_close(new, m * old + (1 - m) * s)
    assert cosine_momentum(0, 10, 0.99) == pytest.approx(0.99) and cosine_momentum(10, 10, 0.99) == 1.0


def test_queues_start_from_teacher_features_then_push_one_word_per_image_and_wrap():
    method, images = build(batch=8)
    assert not bool(method.initialized) and float(method.words0.abs().sum()) == 0
    step(method, images)
    assert bool(method.initialized) and int(method.pointer) == 8
    assert float(method.words1.abs().sum(1).min()) >= 0 and method.words0.abs().sum(1).gt(0).any()
    snapshot = method.words0.clone()
    step(method, images, seed=1)
    assert int(method.pointer) == 16
    changed = (method.words0 != snapshot).any(1)
    assert not changed[:8].any() and not changed[16:].any()  # only rows 8..15 were written
    step(method, images, seed=2), step(method, images, seed=3)
    assert int(method.pointer) == 0  # 4 pushes of 8 into 32 wrap


def test_stats_targets_and_generated_weights():
    method, images = build()
    loss, stats = step(method, images)
    assert torch.isfinite(loss)
    for key in (
        "loss",
        "embedding_std",
        "momentum",
        "loss0",
        "loss1",
        "mean_distance0",
        "mean_distance1",
        "perplexity_batch0",
        "perplexity_image1",
    ):
        assert key in stats and torch.isfinite(torch.as_tensor(stats[key]))
    assert 1.0 <= float(stats["perplexity_batch0"]) <= method.params.num_words
    assert float(method.mean_distance0) != 0.5  # running mean updated
    w = method.generators[0](method.words0)
    assert w.shape == (method.params.num_words, method.backbone.out_channels)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(len(w)))
    assert any(p.grad is not None for p in method.generators.parameters())


def test_grid_cells_are_distinct_cells_of_the_declared_size():
    images = torch.arange(4 * 3 * 12 * 12, dtype=torch.float32).view(4, 3, 12, 12).to(torch.uint8)
    cells = grid_cells(images, 5, torch.Generator().manual_seed(0))
    assert cells.shape == (20, 3, 4, 4)
    per_image = cells.view(5, 4, -1).transpose(0, 1)
    for i in range(4):
        assert len({tuple(c.tolist()) for c in per_image[i]}) == 5
    assert grid_cells(images[:, :, :8, :8], 3, torch.Generator()).shape == (12, 3, 4, 4)  # 8 px: >= 4 px


def test_tiny_images_train_and_the_student_is_exported():
    method, images = build(size=8)
    assert method._border(2) == 0 and method._border(4) == 1  # no border left on 2x2 maps
    loss, _ = step(method, images)
    assert torch.isfinite(loss)
    assert method.export_backbone() is method.backbone


def test_validation_names_the_field():
    cls = get_method("obow")
    with pytest.raises(ValueError, match="num_words"):
        cls.Params(method="obow", batch_size=48, num_words=100).validate()
    with pytest.raises(ValueError, match="num_patches"):
        cls.Params(method="obow", num_patches=10).validate()
    with pytest.raises(ValueError, match="crop_scale_min"):
        cls.Params(method="obow", crop_scale_min=0.8, crop_scale_max=0.5).validate()


def _last_bn(backbone):
    return [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]


@pytest.mark.parametrize("normalize", [False, True])
def test_student_head_scores_the_raw_pooled_feature_by_default(normalize):
    """The authors' BoWPredictor multiplies the un-normalised pooled feature by kappa: doubling
    the student's last BN (features x 2, ReLU is positively homogeneous) changes the logits,
    and so the loss. With normalize_features the head is a cosine classifier and ignores it."""
    assert get_method("obow").Params().normalize_features is False
    results = []
    for factor in (1.0, 2.0):
        method, images = build(normalize_features=normalize)
        with torch.no_grad():
            bn = _last_bn(method.backbone)  # the student only: the teacher is a copy
            bn.weight.mul_(factor), bn.bias.mul_(factor)
        results.append(step(method, images)[0].item())
    if normalize:
        assert results[1] == pytest.approx(results[0], rel=1e-4)
    else:
        assert abs(results[1] - results[0]) > 1e-3 * abs(results[0])


def test_loss_sums_the_crop_types_each_averaged_over_its_rows_and_levels():
    method, images = build()
    loss, stats = step(method, images)
    # authors: loss_total = sum over crop types (2 large crops, 5 patches) of the level-mean KL
    assert loss.item() == pytest.approx(float(stats["loss_crops"]) + float(stats["loss_patches"]), rel=1e-5)
    assert loss.item() == pytest.approx((float(stats["loss0"]) + float(stats["loss1"])) / 2, rel=1e-5)
    only_crops, crop_stats = step(*build(num_patches=0))
    assert "loss_patches" not in crop_stats
    assert only_crops.item() == pytest.approx(float(crop_stats["loss_crops"]), rel=1e-5)
