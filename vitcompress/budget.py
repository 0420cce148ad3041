"""Training for a wall-clock budget instead of a fixed number of epochs (``--time-budget``).

After every epoch the Trainer asks how many whole epochs still fit, from the measured time of the
latest epochs (validation and checkpoint included), and stretches or shrinks its cosine schedule to
end with them (:class:`DecayTimeline`: from the progress already made, so the LR never jumps).
Re-planning every epoch absorbs what a one-off estimate cannot: the first epoch's compile, and steps
that slow down or speed up as a run goes on (a launch-bound GPU step's time moves with the host's load).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

# Epochs the estimate averages: recent enough to follow drift, more than one to damp noise.
RECENT_EPOCHS = 3


def planned_epochs(budget_seconds: float, max_epochs: int, epoch_seconds: list[float]) -> int:
    """The total number of epochs to run, given the wall time of each epoch so far (their sum is the time spent).

    It is the epochs done plus as many as fit in the time left, never fewer than done (equal means
    stop now) nor more than ``max_epochs``. The first epoch pays for compiling and warming up, so it
    is left out of the estimate once a second exists (see :func:`schedule_can_follow`).
    """
    done = len(epoch_seconds)
    if done == 0:
        return max_epochs
    steady = epoch_seconds[1:] or epoch_seconds
    per_epoch = fmean(steady[-RECENT_EPOCHS:])
    fits = int(max(0.0, budget_seconds - sum(epoch_seconds)) // per_epoch) if per_epoch > 0 else max_epochs
    return max(done, min(max_epochs, done + fits))


def schedule_can_follow(epochs_measured: int) -> bool:
    """Whether the LR schedule may be re-planned: not from the first epoch alone, which may hold a compile
    (a schedule planned from it would decay too early); the run can still stop after it if nothing fits."""
    return epochs_measured >= 2


@dataclass
class DecayTimeline:
    """Where each optimizer update falls on the cosine decay, so that moving the decay's end never makes the LR jump.

    The LR scheduler (timm's) keeps one fixed decay length. An update's place on it is its progress through
    the decay: 0 at the end of the warmup, 1 at the planned last update. A re-plan keeps the progress
    reached so far and spreads the rest over the updates left, so the LR is continuous, never rises after
    the warmup, and reaches the minimum at the new last update. Without re-plans it is the identity.
    """

    warmup: int  # warmup updates: the scheduler's own, never moved
    length: int  # the scheduler's decay length, fixed
    anchor: float  # the update where the current plan took over
    anchor_progress: float  # the decay's progress at that update
    end: float  # the planned last update

    @classmethod
    def fixed(cls, warmup: int, length: int) -> DecayTimeline:
        return cls(warmup, length, float(warmup), 0.0, float(warmup + length))

    def progress(self, update: float) -> float:
        if self.end <= self.anchor:  # planned to stop at the anchor: no update comes after it
            return self.anchor_progress
        share = min(1.0, max(0.0, (update - self.anchor) / (self.end - self.anchor)))
        return self.anchor_progress + (1.0 - self.anchor_progress) * share

    def scheduler_time(self, update: int) -> float:
        """What to pass to the scheduler for ``update``: itself in the warmup, then its place on the decay."""
        return float(update) if update < self.warmup else self.warmup + self.length * self.progress(update)

    def replan(self, updates_done: int, end: int) -> None:
        """From ``updates_done`` on, finish the decay at update ``end``."""
        anchor = float(max(updates_done, self.warmup))
        self.anchor, self.anchor_progress, self.end = anchor, self.progress(anchor), float(end)
