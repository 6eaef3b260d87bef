"""A training budget in measured seconds: train until the measured training time reaches it.

A rule for comparing trainers at equal time rather than equal epochs. Used by both sides of
`benchmarks/bench_peer.py` (bowflow's trainer and the lightly runner
`benchmarks/peer_lightly_byol.py`, which imports this module from its throw-away env; hence
standard library only, and `bowflow/__init__.py` imports nothing). Nothing is calibrated
beforehand: each side measures its own epochs as it trains and plans the rest of its run from them.

- Training seconds: the sum of the epochs' seconds, each epoch timed from asking for its
  first batch to the end of its last optimizer step (EMA update included). So a DataLoader's
  worker start-up, which happens when an epoch's iterator is made, is counted in every epoch
  it occurs (lightly with workers: each epoch, as its example runs); ours has none. Not
  counted, on either side: process start, imports, building the model, and the bookkeeping
  between epochs (ours: the trainer's checkpoint save and, when the plan changes, its resume;
  lightly: the workers' shut-down). Both sides report their wall seconds too.
- After every epoch the clock is checked (never within an epoch): the side stops at the first
  epoch boundary at or past the budget, or when it has trained the epochs of its current
  plan. Otherwise the plan becomes: epochs done + ceil(seconds left / estimate), at least one
  more, with the estimate the mean of the last `window` epochs (so a change of machine load
  is followed within a few epochs; the first epoch's one-off costs leave the mean after
  `window` epochs).
- The lr and EMA schedules are laid out over the planned steps; when the plan changes they
  continue from the current step over the new total (a small kink, largest early in the run).
  Before the first epoch nothing is measured: the plan is `provisional_epochs`, a large count.
  The first epoch is the lr warm-up (1 epoch in bench_peer), which does not depend on the
  total; only the EMA momentum over that epoch does, by at most (1 - tau0) (1 - cos(pi / E)) / 2
  against a run planned for E epochs from the start (0.99 -> 1: 2.8e-6 at E = 94, 4.8e-4 at
  E = 7).

Where the run ends: when the plan is kept, the planned last epoch is the first one expected to
end at or past the budget, so a side ends in [budget, budget + one epoch). If an epoch runs
faster than its estimate, the planned last one can end short of the budget, by less than the
estimate; if slower, the budget is passed one epoch before the plan (the schedule is then
cut before its end: `schedule_epochs` in the record is then above `epochs`; the lr there is
the cosine's value one epoch before its end, about peak (pi / (E - 1))^2 / 4 with a 1-epoch
warm-up: 3e-4 x peak at E = 94, but 0.1 x peak at E = 6, so short budgets are rough). Either
way |training seconds - budget| < the longest epoch.
"""

from __future__ import annotations

import math

PROVISIONAL_EPOCHS = 10_000


class EpochBudget:
    """Plan the epochs of one side from its measured epoch seconds.

    Use: lay the schedules out over `total_steps()`; after each epoch call
    `end_epoch(seconds)`: False -> stop; True -> train another epoch, with the schedules over
    the (possibly new) `total_steps()`.
    """

    def __init__(
        self, seconds: float, steps_per_epoch: int, window: int = 3, provisional_epochs: int = PROVISIONAL_EPOCHS
    ):
        if seconds <= 0 or steps_per_epoch < 1 or window < 1 or provisional_epochs < 1:
            raise ValueError(
                f"need seconds > 0, steps_per_epoch, window and provisional_epochs >= 1; "
                f"got {seconds}, {steps_per_epoch}, {window}, {provisional_epochs}"
            )
        self.seconds, self.steps_per_epoch, self.window = float(seconds), steps_per_epoch, window
        self.planned = provisional_epochs
        self.epoch_seconds: list[float] = []
        self.plans: list[int] = []  # the plan made after each epoch (== epochs at a stop)
        self.stopped = False
        self.schedule_epochs = 0  # at a stop: the plan the last epoch ran under

    @property
    def epochs(self) -> int:
        return len(self.epoch_seconds)

    @property
    def elapsed(self) -> float:
        """Training seconds so far (the sum of the epochs' seconds)."""
        return math.fsum(self.epoch_seconds)

    def total_steps(self) -> int:
        """The steps the schedules are laid out over now."""
        return self.planned * self.steps_per_epoch

    def estimate(self) -> float:
        """Seconds of the next epoch: the mean of the last `window` epochs."""
        recent = self.epoch_seconds[-self.window :]
        return math.fsum(recent) / len(recent)

    def end_epoch(self, seconds: float) -> bool:
        """Record one epoch's training seconds; True to train another epoch."""
        if self.stopped:
            raise RuntimeError("end_epoch after the budget said stop")
        if seconds < 0:
            raise ValueError(f"epoch seconds must be >= 0, got {seconds}")
        self.epoch_seconds.append(float(seconds))
        left = self.seconds - self.elapsed
        if left <= 0 or self.epochs >= self.planned:
            self.schedule_epochs = self.planned
            self.planned, self.stopped = self.epochs, True
        else:
            estimate = max(self.estimate(), 1e-9)
            self.planned = self.epochs + max(1, math.ceil(left / estimate))
        self.plans.append(self.planned)
        return not self.stopped

    def record(self) -> dict:
        """What a result keeps: seconds, epochs, the epochs the schedules were laid out over
        when it stopped (> epochs: cut before their end), the per-epoch seconds and plans."""
        return {
            "budget_seconds": self.seconds,
            "training_seconds": round(self.elapsed, 3),
            "epochs": self.epochs,
            "schedule_epochs": self.schedule_epochs,
            "epoch_seconds": [round(s, 4) for s in self.epoch_seconds],
            "plans": list(self.plans),
        }
