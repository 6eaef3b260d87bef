"""bowflow/soft_targets.py: KL(p || q) = sum_k p_k log p_k - p_k log q_k, q = softmax(logits),
against that formula in float64 loops; a changed input moves the value; 0 log 0 = 0; the
target gets no gradient; float32 under bf16 autocast. Its two users (KD, OBoW) are tested
with their methods (tests/test_distill_losses.py, tests/test_losses.py)."""

import math

import pytest
import torch

from bowflow.roles.distiller import kd_loss
from bowflow.soft_targets import kl_to_target


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def kl_reference(logits, targets):
    """mean over rows of sum_k p_k log p_k - p_k log q_k (0 log 0 = 0), q = softmax(logits)."""
    total = 0.0
    for row, p in zip(logits.double().tolist(), targets.double().tolist()):
        log_z = math.log(sum(math.exp(x) for x in row))
        total += sum(pk * math.log(pk) - pk * (x - log_z) for x, pk in zip(row, p) if pk > 0)
    return total / len(logits)


@pytest.mark.parametrize("b,k", [(3, 4), (8, 10), (1, 2)])
def test_kl_to_target_is_the_kl_formula(b, k):
    logits, targets = 3 * randn(b, k), torch.softmax(2 * randn(b, k, seed=1), dim=1)
    expected = kl_reference(logits, targets)
    assert kl_to_target(logits, targets).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # not trivially satisfied: other logits give another value, still the formula's
    moved = logits.clone()
    moved[0, 0] += 1.0
    assert abs(kl_reference(moved, targets) - expected) > 1e-3
    assert kl_to_target(moved, targets).item() == pytest.approx(kl_reference(moved, targets), rel=1e-5)
    assert expected > 0 and kl_to_target(targets.log(), targets).item() == pytest.approx(0, abs=1e-6)


def test_one_hot_targets_are_the_cross_entropy():
    logits, labels = randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    one_hot = torch.nn.functional.one_hot(labels, 4).float()  # 0 log 0 = 0: no nan
    assert kl_to_target(logits, one_hot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6
    )


def test_gradient_reaches_the_logits_only_in_float32_under_autocast():
    logits = randn(4, 6).to(torch.bfloat16).requires_grad_()
    targets = torch.softmax(randn(4, 6, seed=1), dim=1).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = kl_to_target(logits, targets)
    assert value.dtype == torch.float32
    value.backward()
    assert targets.grad is None and logits.grad.abs().sum() > 0


def test_kd_loss_is_t_squared_kl_of_the_softened_distributions():
    student, teacher, t = randn(6, 5), randn(6, 5, seed=1), 4.0
    expected = kl_reference(student / t, torch.softmax(teacher.double() / t, dim=1)) * t**2
    assert kd_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)
