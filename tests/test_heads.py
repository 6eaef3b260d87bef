"""Shared heads and EMA teachers."""

import pytest
import torch

from bowflow.heads import DINOHead, cosine_momentum, ema_update, frozen_copy, mlp


def test_mlp_shapes_and_last_bn():
    head = mlp(16, 32, 8, layers=3, last_bn=True)
    assert head(torch.randn(5, 16)).shape == (5, 8)
    assert isinstance(head[-1], torch.nn.BatchNorm1d)
    assert len([m for m in head if isinstance(m, torch.nn.Linear)]) == 3


def test_mlp_without_bn_is_the_moco_v2_head():
    """facebookresearch/moco builder.py (mlp=True): fc = Sequential(Linear(dim_mlp, dim_mlp),
    ReLU(), Linear(dim_mlp, dim)), both Linears with a bias, no BatchNorm."""
    head = mlp(16, 16, 8, bn=False)
    assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert head[0].bias is not None and head[2].bias is not None
    x = torch.randn(5, 16)
    expected = torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(x, head[0].weight, head[0].bias)), head[2].weight, head[2].bias
    )
    torch.testing.assert_close(head(x), expected)


def test_dino_head_is_scale_invariant_in_its_last_layer():
    head = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(4, 16)
    before = head(x)
    with torch.no_grad():
        head.last_direction.mul_(7.0)
    assert torch.allclose(before, head(x), atol=1e-6)
    assert before.abs().max() <= 1.0 + 1e-6  # cosine logits


def test_ema_update_moves_the_teacher_towards_the_student_and_copies_buffers():
    student = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    teacher = frozen_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(2.0)
    old = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=0.9)
    for t, o, s in zip(teacher.parameters(), old, student.parameters()):
        assert torch.allclose(t, 0.9 * o + 0.1 * s)
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)


def test_cosine_momentum_runs_from_base_to_one():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert 0.99 < cosine_momentum(50, 100, 0.99) < 1.0
