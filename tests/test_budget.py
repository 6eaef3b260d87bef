"""The training budget in measured seconds (bowflow/budget.py), the rule both sides of the
peer benchmark train by, driven with simulated epoch seconds: exact assertions, no clock."""

from __future__ import annotations

import random

import pytest

from bowflow.budget import PROVISIONAL_EPOCHS, EpochBudget


def run_budget(seconds: float, steps_per_epoch: int, epoch_seconds) -> EpochBudget:
    """Drive an EpochBudget with epoch_seconds(k, budget) for epochs k = 0, 1, ...; checks
    on the way that the schedules' total is always the plan, and never below the epochs done."""
    budget = EpochBudget(seconds, steps_per_epoch)
    assert budget.total_steps() == PROVISIONAL_EPOCHS * steps_per_epoch
    k = 0
    while budget.end_epoch(epoch_seconds(k, budget)):
        k += 1
        assert budget.planned > budget.epochs and budget.total_steps() == budget.planned * steps_per_epoch
    assert budget.stopped and budget.planned == budget.epochs == k + 1
    return budget


def within_an_epoch(budget: EpochBudget) -> None:
    assert abs(budget.elapsed - budget.seconds) < max(budget.epoch_seconds)


def test_budget_two_speeds_equal_seconds_not_equal_epochs():
    """The issue's case: one side has a DataLoader start-up in every epoch (lightly, 1 worker)
    and a one-off slow first epoch; the other is 2.4x faster per epoch. Both end within an
    epoch of 900 s (so within an epoch of each other), with very different epoch counts."""
    noise = random.Random(0)

    def lightly(k, _):  # 9 s of steps + 0.8 s worker start-up, first epoch +8 s
        return (9.0 + 0.8 + (8.0 if k == 0 else 0.0)) * noise.uniform(0.9, 1.1)

    def ours(k, _):
        return (4.1 + (1.0 if k == 0 else 0.0)) * noise.uniform(0.9, 1.1)

    slow, fast = run_budget(900, 39, lightly), run_budget(900, 39, ours)
    for side in (slow, fast):
        within_an_epoch(side)
    assert abs(slow.elapsed - fast.elapsed) < max(max(slow.epoch_seconds), max(fast.epoch_seconds))
    assert 85 <= slow.epochs <= 95 and 200 <= fast.epochs <= 225


def test_budget_follows_a_change_of_load():
    """The machine slows down 2x half way through (another job starts): the plan follows."""
    budget = run_budget(600, 10, lambda k, b: 5.0 if b.elapsed < 300 else 10.0)
    within_an_epoch(budget)
    assert budget.epochs == 60 + 30 and budget.schedule_epochs == budget.epochs
    assert budget.plans[0] == 1 + 119 and budget.plans[-1] == 90  # first plan from 5 s epochs


def test_budget_rule_cases():
    # steady 3 s epochs, 10 s budget: plans 1 + ceil(7/3) = 4, 4, 4 -> 4 epochs, 12 s (the
    # first boundary at or past 10 s), the schedules laid out over exactly those 4 epochs
    b = run_budget(10, 4, lambda k, _: 3.0)
    assert (b.epochs, b.elapsed, b.plans, b.schedule_epochs) == (4, 12.0, [4, 4, 4, 4], 4)
    assert b.record() == {
        "budget_seconds": 10.0,
        "training_seconds": 12.0,
        "epochs": 4,
        "schedule_epochs": 4,
        "epoch_seconds": [3.0] * 4,
        "plans": [4, 4, 4, 4],
    }
    # an epoch slower than planned passes the budget one epoch early: stop there (schedule
    # laid out over 4 epochs, cut at 3)
    b = run_budget(10, 1, lambda k, _: [3.0, 3.0, 5.0][k])
    assert (b.epochs, b.elapsed, b.schedule_epochs) == (3, 11.0, 4)
    # the planned last epoch runs faster than its estimate: the plan ends short of the budget
    # (by less than the estimate), and the side stops with its schedules complete
    b = run_budget(10, 1, lambda k, _: [4.0, 4.0, 1.0][k])
    assert (b.epochs, b.elapsed, b.schedule_epochs, b.plans) == (3, 9.0, 3, [3, 3, 3])
    within_an_epoch(b)
    # a budget under one epoch: one epoch
    assert run_budget(1, 5, lambda k, _: 2.0).epochs == 1
    # the estimate is the mean of the last 3 epochs
    b = EpochBudget(100, 1)
    for s in (10.0, 2.0, 2.0, 2.0):
        b.end_epoch(s)
    assert b.estimate() == 2.0 and b.planned == 4 + 42
    with pytest.raises(ValueError):
        EpochBudget(0, 1)
    with pytest.raises(ValueError):
        EpochBudget(1, 0)
    with pytest.raises(ValueError):
        EpochBudget(10, 1).end_epoch(-1.0)
    stopped = run_budget(1, 1, lambda k, _: 2.0)
    with pytest.raises(RuntimeError):
        stopped.end_epoch(1.0)
